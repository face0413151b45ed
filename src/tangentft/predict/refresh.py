"""Kernel refresh during a run: the kernel re-taken at θ_t and the rest of the run re-forecast from f_t.

The kernel at θ0 describes the run only while it stays near θ0; a LoRA run under AdamW leaves that regime as soon
as its B factors move (at θ0 B = 0, so the kernel holds ΔB·A0 but not B·ΔA). At a refresh step t the trained
tensors are read from the run's checkpoint (the trainer writes one at every eval step), put into a fresh copy of
the model the kernel is taken on (``FineTuneMethod.load_kernel_state``: S2FT merges its deltas into the un-adapted
model), and the kernels and outputs are re-taken there on the same kernel sample (the landmarks); the steps
left in the run's own plan are replayed from f_t (:mod:`tangentft.analysis.dynamics`). Adam's moments restart at
0 in function space (their trained values live in parameter space) — an approximation, stated as such. A refresh
at step 0 is the plain prediction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..analysis.dynamics import loss_and_grad, metric
from ..errors import TangentError
from ..train.config import TrainConfig
from .curve import RunKernels, remaining_plan, replay_to_n_train, run_kernels, step_plan


def refresh_steps(cfg: TrainConfig, n_train: int, every: int) -> list[int]:
    """The steps of run ``cfg`` (``n_train`` training examples) at which a refresh every ``every`` steps happens:
    every positive multiple of ``every`` before the last step."""
    if every < 1:
        raise TangentError(f"refresh interval must be a positive number of steps, got {every}")
    total = len(step_plan(cfg, n_train).lrs)
    return list(range(every, total, every))


def forecast_from(rk: RunKernels, cfg: TrainConfig, step: int, *, draws: int = 100) -> dict:
    """The rest of run ``cfg`` replayed from the kernels and outputs ``rk`` taken at ``step`` (θ_t, f_t): the curve
    on the run's eval steps from ``step`` on — the kernel sample's replay extrapolated to the run's n_train examples
    when the sample is smaller, as for the prediction (``sample_size`` keeps the sample's own) —, its best and final
    metric, and intervals of both from ``draws`` bootstrap resamples of the kernel sample
    (:func:`~tangentft.predict.curve.interval_to_n_train`)."""
    n = rk.f0.shape[0]
    loss = cfg.loss or ("mse" if rk.kind == "regression" else "ce")
    plan = remaining_plan(step_plan(cfg, n), step)
    if plan is None:  # the run's last step: nothing left to replay, the forecast is f_t itself
        labels = rk.y_eval.argmax(axis=1) if rk.kind == "classification" else None
        name, value = metric(rk.f0_eval, rk.y_eval, labels, rk.kind)
        ell = float(loss_and_grad(rk.f0_eval, rk.y_eval, labels, loss)[0].mean())
        return {"step": step, "steps": [step], "eval_loss": [ell], "eval_metric": [value], "metric_name": name,
                "best_metric": value, "best_step": step, "final_metric": value,
                "metric_interval": [value, value], "final_interval": [value, value], "n": n}
    run = replay_to_n_train(rk, cfg, loss, draws, start=step)
    curve = run.curve
    return {"step": step, "steps": [step + s for s in curve.steps], "eval_loss": curve.eval_loss,
            "eval_metric": curve.eval_metric, "metric_name": curve.metric_name, "best_metric": curve.best_metric,
            "best_step": step + curve.best_step, "final_metric": curve.eval_metric[-1],
            "metric_interval": run.best_interval, "final_interval": run.final_interval,
            "sample_size": run.extrapolation, "n": n}


def refresh(cfg: TrainConfig, run_dir: Path, *, n: int | None = None, draws: int = 100) -> dict:
    """One refresh of the run in ``run_dir`` at its latest checkpoint (:func:`forecast_from` on kernels re-taken at
    θ_t, ``n`` the kernel sample as for the prediction); adds ``kernel_s``, the refresh's wall time."""
    from ..train.checkpoint import load_checkpoint

    t = time.perf_counter()
    ck = load_checkpoint(Path(run_dir))
    rk = run_kernels(cfg, n=n, state=ck.model_state)
    out = forecast_from(rk, cfg, ck.state.step, draws=draws)
    out["kernel_s"] = time.perf_counter() - t
    return out


class RefreshSchedule:
    """Which trainer callbacks refresh: the first eval step at or after each requested step (the checkpoint a
    refresh reads is written at eval steps)."""

    def __init__(self, cfg: TrainConfig, n_train: int, steps: Sequence[int]):
        self.pending = sorted(set(int(s) for s in steps))
        self.evals = set(step_plan(cfg, n_train).eval_steps)

    def due(self, step: int) -> bool:
        """True (once per requested step) when ``step`` is an eval step at or past the next requested step."""
        if not self.pending or step not in self.evals or step < self.pending[0]:
            return False
        self.pending = [s for s in self.pending if s > step]
        return True
