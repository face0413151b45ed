"""compare / add / negate over training runs: the computations behind ``tangentft taskvec``.

Each returns a plain dict (written as result.json by :mod:`.report`). Per evaluated task it gives the
metric of the base model, of the task's own fine-tune, and of the merged or negated model, plus the
normalized metric merged / own fine-tune (early-stopping paper, Figure 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import Example, load_task, sample_n
from ..errors import TangentError
from ..models.registry import LoadedModel
from ..models.task_model import TaskModel
from .merging import Merger, check_method
from .runs import Run, applied, evaluate, load_runs, task_model_for
from .vector import TaskVector, cosine_matrix

ALPHA_GRID = (0.2, 0.4, 0.6, 0.8, 1.0)
Progress = Callable[[int, int, str], None] | None  # (evaluations done, total, last α and objective)


@dataclass
class EvalTask:
    """A task to evaluate on: its model view, validation and test examples, and its own run if any."""

    path: str
    tm: TaskModel
    val: list[Example]
    test: list[Example]
    own: Run | None


def _same_task(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve() if Path(a).exists() and Path(b).exists() else a == b


def _eval_tasks(runs: list[Run], base: LoadedModel, tasks: Sequence[str] | None, n_eval: int, n_val: int, seed: int) -> list[EvalTask]:
    from ..train.loop import split_data

    out = []
    for path in tasks or [r.task for r in runs]:
        own = next((r for r in runs if _same_task(r.task, path)), None)
        task = own.config.load_task() if own else load_task(path)
        test_pool = next((task.splits[s] for s in ("test", "dev") if s in task.splits), None)
        if not test_pool:
            raise TangentError(f"{path}: no test or dev split to evaluate on")
        test = sample_n(test_pool, min(n_eval, len(test_pool)), seed)
        # Validation for choosing α: the run's own hold-out if it had one, else unseen training examples.
        used: set[str] = set()
        val: list[Example] = []
        if own is not None:
            data = split_data(task, own.config)
            used = {e.uid for e in data.train}
            val = list(data.val)
        if len(val) < n_val:
            unused = [e for e in task.split("train") if e.uid not in used and e not in val]
            val += sample_n(unused, min(n_val - len(val), len(unused)), seed + 1)
        tm = task_model_for(own, base) if own else TaskModel(base, task.spec, head_seed=seed)
        out.append(EvalTask(path, tm, val[:n_val], test, own))
    return out


def _scores(tasks: list[EvalTask], base: LoadedModel, vector: TaskVector | None, alpha: float, split: str) -> list[float]:
    with applied(base.model, vector, alpha):
        return [evaluate(t.tm, getattr(t, split))[1] for t in tasks]


def _own_scores(tasks: list[EvalTask], base: LoadedModel, split: str) -> list[float | None]:
    out: list[float | None] = []
    for t in tasks:
        out.append(_scores([t], base, t.own.vector, 1.0, split)[0] if t.own else None)
    return out


def _normalized(values: list[float], own: list[float | None]) -> list[float | None]:
    return [v / o if o not in (None, 0) else None for v, o in zip(values, own, strict=True)]


def _objective(values: list[float], own: list[float | None]) -> float:
    norm = [x for x in _normalized(values, own) if x is not None]
    return float(np.mean(norm)) if norm else float(np.mean(values))


def search_alphas(runs: list[Run], tasks: list[EvalTask], base: LoadedModel, grid: Sequence[float] = ALPHA_GRID,
                  progress: Progress = None, merger: Merger | None = None) -> tuple[list[float], list[dict]]:
    """Per-task coefficients α by grid search on the validation splits: a shared α first, then one pass of
    coordinate ascent per task; the objective is the mean normalized validation metric (merged / own).
    ``merger`` says how the vectors are merged for each α (default: linear, Σ α_i τ_i)."""
    own_val = _own_scores(tasks, base, "val")
    merger = merger or Merger(runs, base)
    trace = []
    total = len(grid) + (len(grid) - 1) * len(runs)

    def score(alphas):
        vals = _scores(tasks, base, merger.vector(alphas), 1.0, "val")
        s = _objective(vals, own_val)
        trace.append({"alphas": list(alphas), "objective": s})
        if progress:
            progress(len(trace), total, f"α={list(alphas)} → {s:.3f}")
        return s

    best_a = max(grid, key=lambda a: score([a] * len(runs)))
    alphas = [best_a] * len(runs)
    best = max(t["objective"] for t in trace)
    for i in range(len(runs)):
        for a in grid:
            if a == alphas[i]:
                continue
            trial = alphas[:i] + [a] + alphas[i + 1:]
            s = score(trial)
            if s > best:
                best, alphas = s, trial
    return alphas, trace


def _task_rows(tasks: list[EvalTask], base_m, own_m, merged_m, label: str) -> list[dict]:
    return [
        {"task": t.path, "own_run": t.own.name if t.own else None, "metric": "pearson" if t.tm.spec.kind == "regression" else "accuracy",
         "base": b, "own_finetune": o, label: m, "normalized": (m / o if o else None)}
        for t, b, o, m in zip(tasks, base_m, own_m, merged_m, strict=True)
    ]


def compare(paths: Sequence[str], *, n_kernel: int = 16, seed: int = 0, max_memory: str = "2GB", progress=None,
            device: str = "auto", dtype: str | None = None) -> dict:
    """Cosine similarity of the runs' task vectors and the normalized kernel alignment of their tasks
    (base on ``device`` in ``dtype``, default the runs' own dtype)."""
    from .alignment import kernel_alignment

    runs, base = load_runs(list(paths), device=device, dtype=dtype)
    vectors = [r.vector for r in runs]
    cos = cosine_matrix(vectors)
    touched = sorted(set().union(*(v.touched for v in vectors)))
    tasks = []
    for r in runs:
        pool = r.config.load_task().split("train")
        tasks.append((r.spec, sample_n(pool, min(n_kernel, len(pool)), seed), r.head or None))
    align = kernel_alignment(base, tasks, touched, max_memory=max_memory, progress=progress)
    return {
        "runs": [str(r.path) for r in runs],
        "names": [r.name for r in runs],
        "tasks": [r.task for r in runs],
        "norms": [v.norm() for v in vectors],
        "cosine": cos,
        "kernel_alignment": align.tolist(),
        "n_kernel": n_kernel,
        "touched_tensors": len(touched),
    }


def add(paths: Sequence[str], *, alphas: Sequence[float] | None = None, eval_tasks: Sequence[str] | None = None,
        n_eval: int = 128, n_val: int = 64, seed: int = 0, out: Path, progress: Progress = None,
        method: str = "linear", density: float | None = None, device: str = "auto", dtype: str | None = None) -> dict:
    """Task addition θ_PT + merge(α_1 τ_1, …) with α given or grid-searched on validation; evaluated per task.
    ``method``/``density``: how the task vectors are merged (:mod:`.merging`; linear is Σ α_i τ_i)."""
    check_method(method, density)
    runs, base = load_runs(list(paths), device=device, dtype=dtype)
    merger = Merger(runs, base, method, density, seed)
    if alphas is not None and len(alphas) not in (1, len(runs)):
        raise TangentError(f"--alpha needs 1 or {len(runs)} values, got {len(alphas)}")
    if alphas is not None and not all(math.isfinite(a) for a in alphas):
        raise TangentError(f"alphas must be finite numbers, got {list(alphas)}")
    tasks = _eval_tasks(runs, base, eval_tasks, n_eval, n_val, seed)
    trace: list[dict] = []
    if alphas is None:
        alphas, trace = search_alphas(runs, tasks, base, progress=progress, merger=merger)
    elif len(alphas) == 1:
        alphas = list(alphas) * len(runs)
    vector = merger.vector(alphas)
    base_m = _scores(tasks, base, None, 0.0, "test")
    own_m = _own_scores(tasks, base, "test")
    merged_m = _scores(tasks, base, vector, 1.0, "test")
    artifact = merger.save(alphas, vector, out)
    return {"op": "add", "method": method, "density": merger.density, "runs": [str(r.path) for r in runs],
            "alphas": list(alphas), "alpha_search": trace,
            "n_eval": n_eval, "artifact": artifact, "tasks": _task_rows(tasks, base_m, own_m, merged_m, "merged")}


def negate(path: str, *, alpha: float = 1.0, eval_tasks: Sequence[str] | None = None, n_eval: int = 128,
           seed: int = 0, out: Path, device: str = "auto", dtype: str | None = None) -> dict:
    """Task negation θ_PT − α τ (early-stopping paper §5.2): the task's metric should fall toward or below base."""
    if not (math.isfinite(alpha) and alpha > 0):
        raise TangentError(f"alpha must be a positive finite number for negation, got {alpha}")
    runs, base = load_runs([path], device=device, dtype=dtype)
    tasks = _eval_tasks(runs, base, eval_tasks, n_eval, 0, seed)
    vector = runs[0].vector.scaled(-alpha)
    base_m = _scores(tasks, base, None, 0.0, "test")
    own_m = _own_scores(tasks, base, "test")
    neg_m = _scores(tasks, base, vector, 1.0, "test")
    artifact = Merger(runs, base).save([-alpha], vector, out, prefix="negated")
    return {"op": "negate", "runs": [str(runs[0].path)], "alpha": alpha, "n_eval": n_eval, "artifact": artifact,
            "tasks": _task_rows(tasks, base_m, own_m, neg_m, "negated")}
