"""The predicted learning curve of a training run, from the kernel at θ0 of exactly the parameters it trains.

:func:`predict_run` takes a :class:`TrainConfig` (the run the user will launch), draws the run's own training
and eval examples (``data.sampling.run_examples``), parameterizes a fresh copy of the model the way the method
will (a LoRA candidate gets the LoRA kernel; an S2FT run the kernel of its weight slices,
``FineTuneMethod.kernel_selection``), computes the eNTK (SGD) or the SignGD kernel (AdamW) on a sample
of the training examples and the eval×train cross-kernel, and replays the run's steps — same batches, learning
rate schedule, loss, weight decay and pull — in function space (:mod:`tangentft.analysis.dynamics`). The result
(``prediction.json``) has the curve on the same steps as the run's eval rows in metrics.jsonl — when the kernel
sample is smaller than the training set, the sample's replay extrapolated to the run's n_train
(:func:`sample_size_extrapolation`; the sample's own replay is kept in ``sample_size``) —, an interval from the
bootstrap over the kernel sample, the n that would shrink it below 2 points, and the baselines beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..analysis import baselines
from ..analysis.dynamics import Curve, StepPlan, simulate
from ..data.sampling import epoch_order, sample_n
from ..data.scoring import metric_range
from ..errors import TangentError
from ..io import write_json
from ..train.config import TrainConfig
from ..train.schedule import warmup_linear_factor

FILE = "prediction.json"
# /2: the curve is the sample's replay extrapolated to n_train when the kernel sample is smaller (/1: the replay).
FORMAT = "tangentft-prediction/2"
DEFAULT_N = 256  # kernel examples; a larger training set is represented by this sample (or a Nyström sketch)
TARGET_WIDTH = 0.02  # the interval width (2 points) the report says how to reach
# The harness's "left the linear regime" line (lin_gap > 0.3 × output shift), applied before the run: the term the
# kernel at θ0 leaves out, relative to the one it keeps.
NONLINEAR_RATIO = 0.3


def step_plan(cfg: TrainConfig, n: int) -> StepPlan:
    """The trainer's schedule for ``n`` training examples: per-step lr (warmup + linear decay), the batch of each
    optimizer step in the trainer's seeded epoch order, and its eval steps (0, every eval_every, the last)."""
    micro_per_epoch = math.ceil(n / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or max(1, total // 5)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        perm = epoch_order(n, cfg.seed, epoch)
        micro = [perm[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        for g in range(0, len(micro), cfg.grad_accum):
            if len(batches) == total:
                break
            batches.append([i for mb in micro[g : g + cfg.grad_accum] for i in mb])
        epoch += 1
    lrs = [cfg.lr * warmup_linear_factor(s, total, cfg.warmup_ratio) for s in range(total)]
    evals = sorted({0, total, *range(eval_every, total + 1, eval_every)})
    return StepPlan(lrs, batches, evals)


def j_theta0(task_model, selection, examples, batch_size: int = 16) -> np.ndarray:
    """J(X; θ0)·θ0 restricted to the selection (one JVP along θ0): what weight decay toward 0 moves f by."""
    import torch

    from ..methods.full import selection_masks
    from ..methods.linearized import linearized_outputs

    masks = selection_masks(task_model, selection)
    named = dict(task_model.named_parameters())
    theta0 = {k: named[k].detach() for k in masks}
    if all(float(t.abs().max()) == 0 for t in theta0.values()):
        return np.zeros((len(examples), task_model.num_outputs))
    delta = {k: t * masks[k].to(t.dtype) if masks[k] is not None else t for k, t in theta0.items()}
    out = []
    was_training = task_model.training
    task_model.eval()  # dropout off: f is the deterministic function the kernel describes
    try:
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                enc = task_model.encode(examples[i : i + batch_size])
                out.append(linearized_outputs(task_model, theta0, delta, enc["input_ids"], enc["attention_mask"])[1])
    finally:
        task_model.train(was_training)
    return torch.cat(out).double().cpu().numpy()


def lora_a_rms(model) -> float | None:
    """Smallest root-mean-square at θ0 over the model's LoRA A factors when every B factor starts at 0 (PEFT's
    standard init); None otherwise.

    With B = 0 the kernel at θ0 has ∂f/∂A = 0 and keeps only ΔB·A0; the dropped term B·ΔA is of the relative size
    |ΔA|/|A0|, which :func:`predict_with` bounds for AdamW (≈ lr per coordinate per step)."""
    named = dict(model.named_parameters())
    a = [p for name, p in named.items() if "lora_A" in name]
    if not a or any(bool(p.detach().any()) for name, p in named.items() if "lora_B" in name):
        return None
    return min(float(p.detach().double().pow(2).mean().sqrt()) for p in a)


def lora_a_travel(cfg: TrainConfig, plan: StepPlan, a_rms: float | None) -> float | None:
    """How far AdamW can move the LoRA A factors over the run, relative to their start: Σ lr over ``plan`` ÷
    ``a_rms`` (:func:`lora_a_rms`). Adam moves every coordinate by about lr per step whatever its gradient, so this
    bounds |ΔA|/|A0|, the size of the term B·ΔA that the kernel at θ0 (B = 0) leaves out. None for SGD (A moves
    with its gradient, which starts at 0) or without zero-started LoRA factors."""
    if cfg.optimizer != "adamw" or not a_rms:
        return None
    return float(sum(plan.lrs)) / a_rms


def replay(rk: RunKernels, cfg: TrainConfig, plan: StepPlan, loss: str, *, probe: bool = False):
    """The replay of ``plan`` (:func:`tangentft.analysis.dynamics.simulate`) on the kernels and outputs of ``rk``
    under the run's optimizer, weight decay and pull; ``probe`` replays the linear probe's kernels instead."""
    k_train, k_eval = (rk.kp_train, rk.kp_cross) if probe else (rk.k_train, rk.k_cross)
    return simulate(k_train, k_eval, rk.f0, rk.f0_eval, rk.y, rk.y_eval, plan, loss=loss, optimizer=cfg.optimizer,
                    task_kind=rk.kind, weight_decay=cfg.weight_decay, pull=cfg.reg, lam=cfg.lam, j_theta0=rk.j_theta0)


def bootstrap(rk: RunKernels, cfg: TrainConfig, loss: str, draws: int, seed: int,
              plan: StepPlan | None = None) -> np.ndarray:
    """(best, final) eval metric of ``draws`` replays of ``plan`` (default: the run's whole plan), each on a
    resample (with replacement) of the kernel sample; shape (draws, 2)."""
    n = rk.f0.shape[0]
    plan = plan or step_plan(cfg, n)
    rng = np.random.default_rng(seed)
    core = rk.without_probe()
    out = []
    for _ in range(draws):
        c = replay(core.subset(np.sort(rng.integers(0, n, n))), cfg, plan, loss)
        out.append((c.best_metric, c.eval_metric[-1]))
    return np.asarray(out, dtype=np.float64)


SAMPLE_FRACTIONS = (0.25, 0.5)  # the nested sub-samples the sample-size extrapolation replays on
SAMPLE_DRAWS = 8  # sub-samples drawn per fraction
MIN_SUBSAMPLE = 16


def _power_law_to(by_n: np.ndarray, sizes: list[int], n_train: int, ceiling: float) -> np.ndarray:
    """Per column (eval step) of ``by_n`` (one row per sample size in ``sizes``, the last the kernel sample's): a
    power law in n of the distance to ``ceiling``, fitted by least squares in log–log and read at ``n_train``. A
    curve does not get worse with more data: where the fit says so, the kernel sample's value stands; the result
    stays between the sample's value and the ceiling."""
    gap = np.maximum(ceiling - by_n, 1e-6)
    slope, icpt = np.polyfit(np.log(sizes), np.log(gap), 1)  # one fit per column
    at = np.where(slope < 0, ceiling - np.exp(icpt + slope * math.log(n_train)), by_n[-1])
    return np.clip(at, by_n[-1], ceiling)


def sample_size_extrapolation(rk: RunKernels, cfg: TrainConfig, loss: str, curve: Curve, seed: int, *,
                              start: int = 0) -> dict | None:
    """The replay ``curve`` on the kernel sample of n examples, extrapolated to the run's ``rk.n_train`` examples:
    replays of the same steps (``start`` on, as a refresh replays them) on sub-samples of n/4 and n/2 (without
    replacement, ``SAMPLE_DRAWS`` each), then at every eval step a power law in n of the eval metric's distance to
    its ceiling (1 − accuracy, 1 − r) — the form kernel regression's learning curves take (Bordelon, Canatar &
    Pehlevan, "Spectrum Dependence of Learning Curves in Kernel Regression and Wide Neural Networks", ICML 2020,
    arXiv:2002.02561) — fitted in log–log over n/4, n/2 and n and read at n_train. Returns the sizes, the mean
    metric curve per size (``eval_metric_by_n``; the last is ``curve``'s), each size's best, and the metric curve at
    n_train (``eval_metric``); None when the sample is the whole training set, too small to halve twice, or the
    metric has no ceiling. The eval loss is not extrapolated: its floor is the task's noise, not a known bound (a
    power law toward 0 overshoots it), so a prediction's loss curve stays the sample's."""
    n, n_train = rk.f0.shape[0], rk.n_train
    ceiling = metric_range(curve.metric_name)[1]
    if n >= n_train or int(n * SAMPLE_FRACTIONS[0]) < MIN_SUBSAMPLE or not math.isfinite(ceiling):
        return None
    rng = np.random.default_rng(seed)
    core = rk.without_probe()
    sizes, metrics = [], []
    for frac in SAMPLE_FRACTIONS:
        m = int(n * frac)
        plan = remaining_plan(step_plan(cfg, m), start)
        draws = [replay(core.subset(np.sort(rng.choice(n, m, replace=False))), cfg, plan, loss).eval_metric
                 for _ in range(SAMPLE_DRAWS)]
        sizes.append(m)
        metrics.append(np.nanmean(np.asarray(draws, dtype=np.float64), axis=0))
    sizes.append(n)
    metrics.append(np.asarray(curve.eval_metric, dtype=np.float64))
    by_n = np.asarray(metrics)
    return {"n": sizes, "n_train": n_train, "eval_metric_by_n": by_n.tolist(), "best_metric": by_n.max(axis=1).tolist(),
            "eval_metric": _power_law_to(by_n, sizes, n_train, ceiling).tolist()}


def at_n_train(curve: Curve, extrapolation: dict | None) -> Curve:
    """``curve`` (a replay on the kernel sample) with its eval metric at the run's n_train examples from
    :func:`sample_size_extrapolation` and its best re-read from it; ``curve`` itself without an extrapolation."""
    return curve if extrapolation is None else curve.with_eval(curve.eval_loss, extrapolation["eval_metric"])


def interval_to_n_train(interval: Sequence[float], point: float, extrapolated: float | None,
                        metric_name: str) -> list[float]:
    """A bootstrap ``interval`` of a value replayed on the kernel sample (``point``), widened to hold that value
    at the run's n_train examples too (``extrapolated``, from :func:`sample_size_extrapolation`): from the sample's
    lower bound to as far above the extrapolation as the interval reached above the sample's value. The sample's
    replay learns from fewer examples than the run and runs low, the power-law extrapolation can overshoot: the
    run's value is bracketed by the two, not centered on either."""
    lo, hi = float(interval[0]), float(interval[1])
    if extrapolated is None:
        return [lo, hi]
    top = metric_range(metric_name)[1]
    return [lo, float(min(max(hi, extrapolated + max(hi - point, 0.0)), top))]


@dataclass
class Replayed:
    """A replay of a run's steps on its kernels (:func:`replay_to_n_train`): the curve at the run's n_train
    examples, the kernel sample's own, the extrapolation between them, and intervals of the best and final metric."""

    curve: Curve
    sampled: Curve
    extrapolation: dict | None
    best_interval: list[float]
    final_interval: list[float]
    bootstrap_width: float  # of the sample's best metric: what a larger kernel sample would shrink


def replay_to_n_train(rk: RunKernels, cfg: TrainConfig, loss: str, draws: int, *, start: int = 0) -> Replayed:
    """The run's steps from ``start`` on (0: the whole run; a refresh's step otherwise) replayed on the kernel
    sample (:func:`replay`), extrapolated to the run's n_train (:func:`sample_size_extrapolation`, :func:`at_n_train`),
    with intervals of its best and final metric: ``draws`` bootstrap resamples of the sample
    (:func:`centered_interval`) reaching up to the extrapolation (:func:`interval_to_n_train`)."""
    plan = remaining_plan(step_plan(cfg, rk.f0.shape[0]), start)
    sampled = replay(rk, cfg, plan, loss)
    boot = bootstrap(rk, cfg, loss, draws, cfg.seed, plan=plan)
    extrapolation = sample_size_extrapolation(rk, cfg, loss, sampled, cfg.seed, start=start)
    curve = at_n_train(sampled, extrapolation)
    name = curve.metric_name
    own = [centered_interval(boot[:, col], v, name)
           for col, v in ((0, sampled.best_metric), (1, sampled.eval_metric[-1]))]
    best, final = (interval_to_n_train(iv, v, extrapolation and at, name) for iv, v, at in
                   ((own[0], sampled.best_metric, curve.best_metric),
                    (own[1], sampled.eval_metric[-1], curve.eval_metric[-1])))
    return Replayed(curve, sampled, extrapolation, best, final, own[0][1] - own[0][0])


def centered_interval(draws: np.ndarray, point: float, metric_name: str) -> list[float]:
    """The 2.5–97.5 percentile interval of bootstrap ``draws`` of a metric, moved by the bootstrap's bias estimate
    (``point`` − the draws' median) and kept in the metric's range. A resample with replacement holds about 63%
    distinct examples, so its replay learns less than the full sample's: the plain percentile interval sits below
    the point estimate and can exclude it (bias-corrected percentile interval, Efron & Tibshirani 1993, §10.6)."""
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    shift = float(point) - float(np.nanmedian(draws))
    low, high = metric_range(metric_name)
    return [float(min(max(lo + shift, low), high)), float(min(max(hi + shift, low), high))]


def remaining_plan(plan: StepPlan, step: int) -> StepPlan | None:
    """The steps of ``plan`` after ``step``, renumbered from 0 (its eval steps too); None when none is left."""
    if step >= len(plan.lrs):
        return None
    return StepPlan(plan.lrs[step:], plan.batches[step:], [s - step for s in plan.eval_steps if s >= step])


@dataclass
class RunKernels:
    """Everything a prediction needs from the model, computed once: kernels of the run's parameters (train and
    eval×train; SignGD for AdamW, eNTK for SGD), the probe's kernels, outputs at θ0, targets, J θ0."""

    k_train: np.ndarray
    k_cross: np.ndarray
    kp_train: np.ndarray | None
    kp_cross: np.ndarray | None
    f0: np.ndarray
    f0_eval: np.ndarray
    y: np.ndarray
    y_eval: np.ndarray
    j_theta0: tuple[np.ndarray, np.ndarray] | None
    kind: str
    signgd: bool
    n_train: int
    selection: dict
    seeded_head: bool
    timings: dict
    lora_a_rms: float | None = None

    def subset(self, idx: np.ndarray) -> RunKernels:
        """The kernels of the training examples ``idx`` (positions in this sample) only: what :func:`run_kernels`
        returns for that sub-sample, without a model pass."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = (idx[:, None] * self.f0.shape[1] + np.arange(self.f0.shape[1])).ravel()
        probe = ((None, None) if self.kp_train is None
                 else (self.kp_train[np.ix_(rows, rows)], self.kp_cross[:, rows]))
        jt = None if self.j_theta0 is None else (self.j_theta0[0][idx], self.j_theta0[1])
        return replace(self, k_train=self.k_train[np.ix_(rows, rows)], k_cross=self.k_cross[:, rows],
                       kp_train=probe[0], kp_cross=probe[1], f0=self.f0[idx], y=self.y[idx], j_theta0=jt)

    def without_probe(self) -> RunKernels:
        """The same kernels without the probe's (what a resample replays: no copies of the probe's blocks)."""
        return replace(self, kp_train=None, kp_cross=None)


def parameterized_model(cfg: TrainConfig, spec, train: list):
    """(method, task model, selection): a fresh model of ``cfg`` parameterized the way its method trains it on
    ``train``, and the selection of exactly the parameters it trains (``FineTuneMethod.kernel_selection``)."""
    from ..methods.base import get_method
    from ..models.task_model import build_task_model

    method = get_method(cfg.method)(cfg.method_config())
    tm = build_task_model(cfg.model, spec, seed=cfg.seed)
    method.bind_data(train)
    return method, tm, method.kernel_selection(tm)


def check_refreshable(cfg: TrainConfig) -> None:
    """Refuse, before any run starts, a method for which a kernel refresh is not meaningful
    (``FineTuneMethod.refresh_why_not`` says why)."""
    from ..methods.base import get_method

    why = get_method(cfg.method).refresh_why_not
    if why:
        raise TangentError(f"method '{cfg.method}': its kernel cannot be re-taken at a trained step (kernel refresh): "
                           f"{why}")


def load_trained_state(cfg: TrainConfig, method, task_model, state: dict) -> None:
    """Put a run's trained tensors (a checkpoint's ``model_state``) into the model :func:`parameterized_model`
    built, so its kernel and outputs are the ones at θ_t (``FineTuneMethod.load_kernel_state``; S2FT merges its
    deltas into the un-adapted model its kernel is taken on)."""
    check_refreshable(cfg)
    method.load_kernel_state(task_model, state)


def run_kernels(cfg: TrainConfig, *, n: int | None = None,
                progress: Callable[[str, int, int], None] | None = None, state: dict | None = None) -> RunKernels:
    """Draw the run's own examples, parameterize a fresh model the way its method will, and compute the kernels
    (see :class:`RunKernels`). ``n`` caps the kernel sample (default: all training examples up to 256).

    ``state`` (a checkpoint's ``model_state``, the trained tensors at step t) re-takes every kernel and output at
    θ_t instead of θ0 — a kernel refresh; the probe, a θ0 baseline, is then not recomputed (its kernels are None)."""
    from ..ntk import empirical_ntk_pair
    from ..train.loop import split_data

    t0 = time.perf_counter()
    task = cfg.load_task()
    data = split_data(task, cfg)
    if not data.eval:
        raise TangentError(f"task {task.spec.name}: no dev/test examples to predict an eval curve on")
    n = min(n or DEFAULT_N, len(data.train))
    if n < 2:
        raise TangentError(f"prediction needs at least 2 training examples, got n={n}")
    x = data.train if n == len(data.train) else sample_n(data.train, n, cfg.seed)
    method, tm, selection = parameterized_model(cfg, task.spec, data.train)
    if state is not None:
        load_trained_state(cfg, method, tm, state)
    signgd = cfg.optimizer == "adamw"
    t_load = time.perf_counter() - t0
    t = time.perf_counter()
    kprog = (lambda d, tot: progress("kernel", d, tot)) if progress else None
    k_train, k_cross = empirical_ntk_pair(tm, selection, x, data.eval, kind="full", signgd=signgd, progress=kprog)
    t_kernel = time.perf_counter() - t
    t = time.perf_counter()
    (f0, phi), (f0e, phie) = tm.predict_and_features(x), tm.predict_and_features(data.eval)
    f0, f0e = f0.double().numpy(), f0e.double().numpy()
    y, ye = tm.targets(x).double().numpy(), tm.targets(data.eval).double().numpy()
    decayed = method.decay_selection(selection)
    jt = (j_theta0(tm, decayed, x), j_theta0(tm, decayed, data.eval)) if cfg.weight_decay and decayed else None
    kp_train, kp_cross = ((None, None) if state is not None
                          else baselines.probe_kernels_of(tm, phi.numpy(), phie.numpy(), signgd=signgd))
    return RunKernels(k_train.matrix, k_cross.matrix, kp_train, kp_cross, f0, f0e, y, ye, jt, task.spec.kind, signgd,
                      len(data.train), selection.to_json(), tm.head is not None,
                      {"load_s": t_load, "kernel_s": t_kernel, "outputs_s": time.perf_counter() - t}, lora_a_rms(tm))


def predict_with(rk: RunKernels, cfg: TrainConfig, *, draws: int = 100) -> dict:
    """The ``prediction.json`` dict of run ``cfg`` from kernels computed by :func:`run_kernels` (for the same model,
    parameters, examples and optimizer family; lr, steps, batch size, schedule, loss and pull may differ)."""
    if (cfg.optimizer == "adamw") != rk.signgd:
        raise TangentError(f"kernels were computed for {'AdamW' if rk.signgd else 'SGD'}, the run uses {cfg.optimizer}")
    t = time.perf_counter()
    n = rk.f0.shape[0]
    kind = rk.kind
    loss = cfg.loss or ("mse" if kind == "regression" else "ce")
    plan = step_plan(cfg, n)
    run = replay_to_n_train(rk, cfg, loss, draws)
    curve, sampled, extrapolation, width = run.curve, run.sampled, run.extrapolation, run.bootstrap_width
    n_needed = int(math.ceil(n * (width / TARGET_WIDTH) ** 2)) if width > TARGET_WIDTH else n
    probe = replay(rk, cfg, plan, loss, probe=True)
    zs = baselines.zero_shot_metric(rk.f0_eval, rk.y_eval, kind)[1]
    maj = baselines.majority_metric(rk.y, rk.y_eval, kind)[1]
    t_sim = time.perf_counter() - t

    warnings_: list[str] = []
    if rk.seeded_head:
        warnings_.append(
            "encoder with a seeded random head: zero-shot is meaningless (it changes with the seed), and the kernel "
            "view is known to be weak when a fresh head is learned (Malladi et al. 2023); this checkpoint has no "
            "LM head, so the prompt-based (label-word) formulation is not available for it")
    if n < rk.n_train:
        how = (f"the curve is the replay on n/4, n/2 and n examples extrapolated to {rk.n_train} (the sample's own "
               f"best {sampled.best_metric:.4g}: `sample_size`)" if extrapolation else
               "its eval metric runs low (too small a sample to extrapolate from)")
        warnings_.append(f"the kernel sample (n={n}) stands in for the {rk.n_train} training examples, and a replay "
                         f"on fewer examples than the run learns less: {how}; a kernel on every training example "
                         "(a larger n) replaces the extrapolation, at (n + n_eval)·n kernel cost")
    if cfg.early_stop or cfg.stop_at:
        warnings_.append("early stopping / --stop-at are not replayed: the curve runs to the planned last step")
    a_travel = lora_a_travel(cfg, plan, rk.lora_a_rms)
    if a_travel is not None and a_travel > NONLINEAR_RATIO:
        warnings_.append(
            f"LoRA under AdamW: each entry of the A factors can move by Σ lr = {sum(plan.lrs):.3g}, {a_travel:.2g}× "
            f"their initial RMS {rk.lora_a_rms:.3g}; the term B·ΔA, absent from the kernel at θ0 (B = 0 there), then "
            "grows comparable to the one it keeps — expect the run to leave the linear regime and the prediction to "
            "fall short of it (a smaller lr, fewer steps or a pull toward θ0 keep it linear; a kernel refresh during "
            "the run re-takes the kernel once B ≠ 0)")
    if rk.signgd:
        warnings_.append("AdamW is replayed through the SignGD kernel with Adam's moments in function space (an "
                         "approximation; SGD replays are exact for the linearized model)")
    timings = dict(rk.timings, simulate_s=t_sim)
    timings["total_s"] = sum(timings.values())
    return {
        "format": FORMAT,
        "steps": curve.steps,
        "eval_loss": curve.eval_loss,
        "eval_metric": curve.eval_metric,
        "train_loss": curve.train_loss,
        "output_shift": curve.output_shift,
        "metric_name": curve.metric_name,
        "best_step": curve.best_step,
        "best_metric": curve.best_metric,
        "metric_interval": run.best_interval,
        "interval": f"2.5–97.5 percentiles of the kernel sample's best metric over {draws} bootstrap resamples, "
                    "moved by the bootstrap's bias (centered on the sample's replay)"
                    + ("; its upper bound raised by as much above the value extrapolated to n_train" if extrapolation
                       else ""),
        "n_for_2_points": n_needed,
        "sample_size": extrapolation,
        "kernel": "signgd" if rk.signgd else "entk",
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "n": n,
        "n_train": rk.n_train,
        "n_eval": len(rk.f0_eval),
        "selection": rk.selection,
        "baselines": {
            "zero_shot": zs,
            "majority": maj,
            "linear_probe": probe.best_metric,
            "linear_probe_curve": probe.eval_metric,
        },
        "lora_a_travel": a_travel,
        "warnings": warnings_,
        "timings": timings,
    }


def predict_run(cfg: TrainConfig, *, n: int | None = None, draws: int = 100,
                progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Predict the learning curve of the run ``cfg`` describes (module docstring): :func:`run_kernels` then
    :func:`predict_with`. Returns the ``prediction.json`` dict; ``n`` caps the kernel sample (default 256)."""
    return predict_with(run_kernels(cfg, n=n, progress=progress), cfg, draws=draws)


def write_prediction(out_dir: Path, prediction: dict) -> Path:
    """Write ``prediction.json`` atomically into a run folder."""
    path = Path(out_dir) / FILE
    write_json(path, prediction)
    return path
