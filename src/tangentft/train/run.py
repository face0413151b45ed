"""One training run from a :class:`TrainConfig`: load model and data, train, write every artifact.

Artifacts in the output folder: config.json, metrics.jsonl, checkpoint.safetensors, the method's trained
weights (PEFT ``adapter/`` for LoRA, ``trained.safetensors`` otherwise), summary.json, summary.md and
figures/.

The output folder is never overwritten silently: a folder that already holds a run is refused unless the
run is resumed or ``overwrite`` replaces it as a whole. A run refused before it starts, or stopped by an
error such as divergence, leaves nothing behind (a resumed run keeps its last checkpoint); a run that is
killed keeps its folder, which ``resume`` continues.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path

from .. import distributed
from ..adapters.card import write_card
from ..data import data_fingerprint
from ..errors import TangentError
from ..io import LOCK, check_out_dir, ensure_dir, folder_lock, put_back, remove_dir, set_aside, write_json
from ..methods.base import get_method
from ..models.fingerprint import base_weights_fingerprint
from ..schemas import MetricsRow, RunConfig, read_json, read_jsonl
from .checkpoint import CHECKPOINT, checkpoint_step
from .config import CONFIG, TrainConfig, load_config, load_run_config, options_text
from .loop import Trainer, split_data
from .plots import plot_run, read_metrics
from .summary import write_summary

# Fields a resumed run may change: more steps or epochs continue the same run further (from the resumed step on it
# follows the schedule of a run planned for the new total: the linear decay reaches 0 at the new last step, so
# every new step trains; see Trainer._continue_schedule); where it runs and whether it recomputes
# activations change time and memory, not what is computed.
RESUMABLE = ("max_steps", "epochs", "device", "grad_checkpointing")


def resume_config(out_dir: Path, changes: dict | None = None) -> TrainConfig:
    """The stored config of the run in ``out_dir`` with ``changes`` applied: only :data:`RESUMABLE` fields
    may differ from what the run started with, and only to go further than the steps already done."""
    stored = load_config(out_dir)
    known = {f.name for f in fields(TrainConfig)}
    changed = {}
    for name, value in (changes or {}).items():
        if name not in known:
            raise TangentError(f"resume: unknown config field '{name}'")
        if name == "method_options":  # compared as the config stores them, typed ('lora_r=8' is the int 8)
            value = get_method(stored.method).config_class.coerce_options(stored.method, value)
        if value == getattr(stored, name):
            continue
        if name not in RESUMABLE:
            was, got = (options_text(v) if name == "method_options" else v for v in (getattr(stored, name), value))
            raise TangentError(
                f"resume: {name} was {was!r} when the run in {out_dir} started, got {got!r}; "
                f"a resumed run can only change {', '.join(RESUMABLE[:-1])} or {RESUMABLE[-1]} (start a new run for anything else)"
            )
        changed[name] = value
    cfg = replace(stored, **changed)  # validated again as it is built
    done = checkpoint_step(Path(out_dir))
    if changed and done is not None and cfg.max_steps is not None and cfg.max_steps < done:
        raise TangentError(f"resume: max_steps {cfg.max_steps} is below the {done} steps the run in {out_dir} has done")
    return cfg


def check_fresh_out(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds files (a run unless ``overwrite``; anything else always), or
    that is a file or cannot be created. Its lock file alone does not count: it outlives the runs that held it."""
    out = Path(out_dir)
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        if not (out / CONFIG).is_file():
            raise TangentError(f"{out} already exists and holds files that are not a tangentft run; choose a new folder")
        if not overwrite:
            raise TangentError(f"{out} already holds a training run: resume it, overwrite it, or choose a new folder")
    check_out_dir(out)


def check_continuable(out_dir: Path) -> None:
    """Refuse to resume a run that has trained but lost its checkpoint: starting it again from step 0 would
    replace its weights and metrics without a word. A run killed before its first checkpoint has done nothing
    and starts again."""
    out = Path(out_dir)
    if (out / CHECKPOINT).is_file():
        return
    steps = [r.step for r in read_jsonl(out / "metrics.jsonl", MetricsRow)] if (out / "metrics.jsonl").is_file() else []
    finished = (out / "summary.json").is_file()
    if finished or any(step > 0 for step in steps):
        done = f"finished after {max(steps, default=0)} steps" if finished else f"recorded {max(steps)} steps"
        raise TangentError(f"resume: {out / CHECKPOINT} is missing but the run in {out} {done}; starting again from "
                           "step 0 would replace its results: restore the checkpoint, or overwrite the run with a new one")


@contextlib.contextmanager
def _held(out: Path, *, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold the run folder's lock (:func:`tangentft.io.folder_lock`) for the run's whole life, on rank 0, the only
    rank that writes: a second process writing the same folder is refused in one line naming this one's pid.

    A fresh run's folder is created to hold the lock and checked again under it (another process may have
    finished a run there since the first check); it is removed again if the run is refused before it starts.
    """
    if not distributed.is_main():
        yield
        return
    made = not resume and not out.exists()
    if not resume:
        ensure_dir(out)
    with folder_lock(out):
        try:
            if resume:
                check_continuable(out)
            else:
                check_fresh_out(out, overwrite)
            yield
        except Exception:
            if made and out.is_dir() and all(p.name == LOCK for p in out.iterdir()):
                remove_dir(out)
            raise


@contextlib.contextmanager
def _run_folder(out: Path, *, fresh: bool, overwrite: bool) -> Iterator[None]:
    """Empty the folder of a fresh run and remove what it wrote when it stops before it can be resumed (refused,
    or stopped before its first checkpoint); a resumed run's folder is left as its checkpoint has it.

    With ``overwrite`` the old run is set aside (:func:`tangentft.io.set_aside`), not deleted: it is put back when
    the new run stops before it can be resumed, and deleted once the new run ends or leaves a checkpoint behind.
    A replacement that fails never costs the run it was to replace (a process killed outright leaves the old run
    in the hidden ``.NAME.replaced.*`` folder beside it)."""
    if not fresh:
        yield
        return
    aside = set_aside(out) if overwrite else None
    try:
        yield
    except BaseException as exc:
        # A crash before the first checkpoint leaves nothing to resume; a config.json alone would only make the
        # next attempt refuse the folder as holding a run.
        if isinstance(exc, TangentError) or not (out / CHECKPOINT).is_file():
            if aside is not None:
                put_back(aside, out)
            else:
                remove_dir(out)
        elif aside is not None:
            remove_dir(aside)
        raise
    if aside is not None:
        remove_dir(aside)


def _made(cfg: TrainConfig, summary: dict) -> list[str]:
    last = summary.get("last") or {}
    lines = [f"`tangentft train --method {cfg.method}` on task `{Path(cfg.task).name}` "
             f"({summary['steps']} steps, {summary['trainable_params']:,} trained parameters, seed {cfg.seed})",
             f"options: {options_text(cfg.method_options) or 'defaults'}; optimizer {cfg.optimizer}, lr {cfg.lr:g}, "
             f"batch {cfg.batch_size}×{cfg.grad_accum}, warmup {cfg.warmup_ratio:g}"]
    if cfg.reg != "none":
        lines.append(f"pull toward θ0: {cfg.reg}, λ = {cfg.lam:g} (linearization paper eq. 8)")
    if last.get("eval_metric") is not None:
        lines.append(f"final {last.get('eval_metric_name', 'metric')} on {cfg.n_eval} held-out examples: "
                     f"{last['eval_metric']:.4f}")
    return lines


def run_training(cfg: TrainConfig, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
                 callback: Callable[[int, int, dict], None] | None = None,
                 finish: Callable[[dict], dict] | None = None) -> dict:
    """Run (or, with ``resume``, continue) one training run and write its artifacts; returns summary.json's dict.

    ``overwrite`` replaces a finished or killed run already in ``out_dir``; without it such a folder is
    refused. ``resume`` expects ``cfg`` from :func:`resume_config`. ``callback(step, total, info)`` is called after
    every optimizer step. ``finish(summary)`` runs on rank 0 after the run, while it still holds the folder's lock
    (a caller's last writes into the folder: no other process can slip in between), and returns the summary to
    give back. (A run with its predicted curve: :func:`tangentft.predict.launch.train_with_prediction`.)
    """
    out = Path(out_dir)
    if resume:
        load_run_config(out)
    elif distributed.is_main():
        check_fresh_out(out, overwrite)  # before the folder is made to hold the lock
    with _held(out, resume=resume, overwrite=overwrite):
        summary = _train(cfg, out, resume=resume, overwrite=overwrite, callback=callback)
        return finish(summary) if finish is not None and distributed.is_main() else summary


def _train(cfg: TrainConfig, out: Path, *, resume: bool, overwrite: bool,
           callback: Callable[[int, int, dict], None] | None) -> dict:
    from ..models.task_model import build_task_model

    method_cfg = cfg.method_config()
    task = cfg.load_task()
    data = split_data(task, cfg)
    task_model = build_task_model(cfg.model, task.spec, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype)
    main = distributed.is_main()  # only rank 0 creates, writes or removes files
    # A run killed before its first checkpoint has nothing to continue from: it starts again.
    continuing = resume and (out / CHECKPOINT).is_file()
    with _run_folder(out, fresh=not resume and main, overwrite=overwrite):
        if not resume and main:
            write_json(out / CONFIG, {
                "train": cfg.to_json(),
                # Task vectors and adapters built from this run refuse any other base.
                "base_fingerprint": base_weights_fingerprint(task_model.hf),
                "method_config": method_cfg.to_json(),
                "task_spec": {"name": task.spec.name, "kind": task.spec.kind, "template": task.spec.template,
                              "label_words": task.spec.label_words},
                "data": {k: {"n": len(v), "fingerprint": data_fingerprint(v)}
                         for k, v in (("train", data.train), ("val", data.val), ("eval", data.eval), ("probe", data.probe))},
            })
        elif resume and main and cfg != load_config(out):  # record the extended max_steps/epochs it goes on to
            record = read_json(out / CONFIG, RunConfig).model_dump()
            write_json(out / CONFIG, {**record, "train": cfg.to_json()})
        summary = Trainer(task_model, get_method(cfg.method)(method_cfg), data, cfg, out, callback).fit(resume=continuing)
        if main:
            if (out / "adapter" / "adapter_config.json").is_file():
                fingerprint = read_json(out / CONFIG, RunConfig).base_fingerprint
                write_card(out / "adapter", title=f"tangentft {cfg.method} adapter: {task.spec.name}", task_model=task_model,
                           base_fingerprint=fingerprint, made=_made(cfg, summary))
            plot_run(out / "metrics.jsonl", out / "figures")
            write_summary(out, cfg.to_json(), summary, read_metrics(out / "metrics.jsonl"))
    return summary
