"""Prescreen: every configuration of a space predicted from one kernel per trained-parameter set, and ranked.

The kernels of a run (:class:`tangentft.predict.curve.RunKernels`) depend on the model, the task's examples, the
method and its options (parameter set, LoRA rank), the optimizer family and the sampling settings — not on the
learning rate, steps, batch size or pull, which :func:`predict_with` replays in milliseconds. So a space of
hundreds of configurations costs as many kernel passes as it has distinct parameter sets. Those kernels are
cached on disk (safetensors, keyed by :func:`kernel_key`: model, the task's data fingerprint, the
kernel-relevant config fields) and reused by every later sweep of the same model and task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from ..analysis.report import compare_ranking
from ..data import data_fingerprint
from ..errors import TangentError
from ..io import fingerprint, load_safetensors, safetensors_metadata, save_safetensors
from ..models.gguf_cache import cache_root
from ..predict.curve import RunKernels, predict_with, run_kernels
from ..train.config import TrainConfig
from .space import Space

ARRAYS = ("k_train", "k_cross", "kp_train", "kp_cross", "f0", "f0_eval", "y", "y_eval")
# Fields predict_with replays from the config; every other field shapes the kernels.
REPLAYED = ("lr", "max_steps", "epochs", "batch_size", "grad_accum", "reg", "lam", "reg_per_element", "warmup_ratio",
            "eval_every", "loss", "early_stop", "stop_at", "eval_batch_size", "device", "grad_checkpointing")


def default_cache() -> Path:
    """Where kernels are kept across sweeps: ``$TANGENTFT_CACHE/kernels`` (default ``~/.cache/tangentft``)."""
    return cache_root() / "kernels"


def kernel_key(cfg: TrainConfig, n: int | None) -> str:
    """The cache key of ``cfg``'s kernels: the model, the task's data (fingerprint of every split), the config
    with the replayed fields (:data:`REPLAYED`) at their defaults, the optimizer family and the sample cap."""
    return fingerprint("tangentft-sweep-kernels/1", kernel_fields(cfg), task_fingerprint(cfg), n)


def task_fingerprint(cfg: TrainConfig) -> dict:
    """The data fingerprint of every split of ``cfg``'s task, as the run loads it (the same data under another
    path is the same task)."""
    return {name: data_fingerprint(split) for name, split in sorted(cfg.load_task().splits.items())}


def kernel_fields(cfg: TrainConfig) -> dict:
    """``cfg`` with the fields :func:`predict_with` replays (:data:`REPLAYED`) at their defaults: what its kernels
    depend on, besides the task's data."""
    return replace(cfg, **{f.name: TrainConfig.default(f.name) for f in fields(TrainConfig)
                           if f.name in REPLAYED}).to_json()


def save_kernels(path: Path, rk: RunKernels) -> None:
    """Write ``rk`` as one safetensors file (float64 arrays; the rest as JSON metadata), atomically."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(rk, k))) for k in ARRAYS}
    if rk.j_theta0 is not None:
        tensors["j_theta0_train"], tensors["j_theta0_eval"] = (torch.from_numpy(np.ascontiguousarray(a))
                                                               for a in rk.j_theta0)
    meta = {f.name: getattr(rk, f.name) for f in fields(RunKernels) if f.name not in (*ARRAYS, "j_theta0")}
    save_safetensors(path, tensors, {"run_kernels": json.dumps(meta)})


def load_kernels(path: Path) -> RunKernels:
    """The :class:`RunKernels` :func:`save_kernels` wrote (a damaged file is one TangentError naming it)."""
    t = {k: v.numpy() for k, v in load_safetensors(path).items()}
    try:
        meta = json.loads(safetensors_metadata(path)["run_kernels"])
    except (KeyError, json.JSONDecodeError):
        raise TangentError(f"{path}: not a tangentft kernel cache file") from None
    jt = (t["j_theta0_train"], t["j_theta0_eval"]) if "j_theta0_train" in t else None
    return RunKernels(**{k: t[k] for k in ARRAYS}, j_theta0=jt, **meta)


def cached_kernels(cfg: TrainConfig, n: int | None, cache: Path,
                   progress: Callable[[str, int, int], None] | None = None) -> tuple[RunKernels, str, bool]:
    """(kernels, key, hit): ``cfg``'s kernels from ``cache`` or, on a miss, computed and stored there."""
    key = kernel_key(cfg, n)
    path = Path(cache) / f"{key}.safetensors"
    if path.is_file():
        return load_kernels(path), key, True
    rk = run_kernels(cfg, n=n, progress=progress)
    os.makedirs(path.parent, exist_ok=True)
    save_kernels(path, rk)
    return rk, key, False


def prescreen(space: Space, model: str, task: str, *, cache: Path | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Predict every configuration of ``space`` (:meth:`Space.grid`) and rank them by predicted best metric.

    Returns ``rows`` (best first: the configuration's parameters, predicted best metric, its interval and best
    step, the kernel key), ``ranking`` (:func:`tangentft.analysis.report.compare_ranking`: whether the leader's
    interval lies above the runner-up's, the "no clear winner" rule), ``kernels`` (key → computed or cached,
    seconds) and ``grid_compute`` (examples the whole grid would train on: Σ steps × batch)."""
    cache = Path(cache) if cache is not None else default_cache()
    grid = space.grid()
    rows, kernels, loaded, keys = [], {}, {}, {}
    for i, params in enumerate(grid):
        cfg = space.config(params, model, task)
        fields_ = fingerprint(kernel_fields(cfg))
        key = keys[fields_] = keys.get(fields_) or kernel_key(cfg, space.predict_n)
        if key not in loaded:
            rk, _, hit = cached_kernels(cfg, space.predict_n, cache, progress)
            loaded[key] = rk
            kernels[key] = {"set": params["set"], "rank": params.get("rank"), "cached": hit,
                            "kernel_s": 0.0 if hit else round(sum(rk.timings.values()), 3)}
        pred = predict_with(loaded[key], cfg, draws=space.draws)
        rows.append({"params": params, "predicted": pred["best_metric"], "interval": pred["metric_interval"],
                     "best_step": pred["best_step"], "metric": pred["metric_name"], "kernel": key,
                     "compute": cfg.max_steps * cfg.batch_size * cfg.grad_accum,
                     "predict_ms": round(1000 * pred["timings"]["simulate_s"], 2)})
        if progress:
            progress("prescreen", i + 1, len(grid))
    rows.sort(key=lambda r: -r["predicted"])
    ranking = compare_ranking([{"run": label(r["params"]), "metric": r["metric"], "run_metric": r["predicted"],
                                "run_interval": r["interval"]} for r in rows])
    return {"rows": rows, "ranking": {k: ranking[k] for k in ("clear_winner", "verdict")}, "kernels": kernels,
            "grid_compute": sum(r["compute"] for r in rows)}


def label(params: dict) -> str:
    """A configuration in one line: ``lora q,v@0 r=4 lr=0.001 steps=16 batch=4 pull=none``."""
    rank = f" r={params['rank']}" if params.get("rank") is not None else ""
    return (f"{params['set']}{rank} lr={params['lr']:.3g} steps={params['steps']} batch={params['batch_size']} "
            f"pull={params['pull']}")
