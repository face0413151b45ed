"""How a task is scored — the one implementation that training, the analysis and task vectors all use.

Classification: accuracy of the argmax over the K outputs. Regression: Pearson r of the first output
against the scores. NaN, the same way everywhere: when any output is not finite (a diverged model has no
score), and for a correlation with fewer than two examples or a constant side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRIC_NAMES = {"classification": "accuracy", "regression": "pearson"}


def metric_range(metric_name: str) -> tuple[float, float]:
    """The range a metric can take (accuracy [0, 1], Pearson r [-1, 1]; any other metric is unbounded)."""
    return {"accuracy": (0.0, 1.0), "pearson": (-1.0, 1.0)}.get(metric_name, (-math.inf, math.inf))


def task_metric(outputs, labels: Sequence, kind: str) -> tuple[str, float]:
    """(name, value) of ``outputs`` (N×K, a tensor or array) against ``labels`` (class ids or scores)."""
    if hasattr(outputs, "detach"):
        outputs = outputs.detach().double().cpu().numpy()
    f = np.atleast_2d(np.asarray(outputs, dtype=np.float64))
    name = METRIC_NAMES["regression" if kind == "regression" else "classification"]
    if not np.isfinite(f).all():
        return name, float("nan")
    if kind == "regression":
        return name, pearson(f[:, 0], [float(v) for v in labels])
    return name, float(np.mean(f.argmax(axis=1) == np.asarray([int(v) for v in labels])))


def pearson(pred, target) -> float:
    """Pearson r of two score vectors; NaN with fewer than two values, a constant side or a non-finite value."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if p.size < 2 or not (np.isfinite(p).all() and np.isfinite(t).all()) or np.ptp(p) == 0 or np.ptp(t) == 0:
        return float("nan")
    return float(np.corrcoef(p, t)[0, 1])
