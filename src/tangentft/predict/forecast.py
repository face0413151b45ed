"""Forecast the rest of a run from its first part: final and best metric with an 80% interval.

:func:`forecast` is what an in-run pruner calls: the partial metrics rows (metrics.jsonl so far) and a predicted
curve — the prediction before the run (``prediction.json``) or a kernel refresh at the last observed step
(:mod:`tangentft.predict.refresh`) — give the final and best metric of the whole run. The predicted curve is
anchored on the observed one (its offset over the last observed evals is carried forward: a θ0 prediction that
runs low stays low by about as much), so a forecast at the last step is the real curve's tail.

The interval combines three spreads, as independent normal terms: the prediction's bootstrap interval (kernel
sample), the scatter of the observed curve around the anchored prediction (the prediction's shape error), and
the eval set's sampling noise at the forecast value (binomial for accuracy). Whether it holds 80% is measured, not
assumed (``experiments/predict_vs_real.py`` reports the coverage).

:func:`extrapolate` is the learning-curve extrapolation baseline that sees only the partial curve: a power law
m(s) = a − b·(s+1)^(−c) or an exponential m(s) = a − b·e^(−c·s/t) fitted by least squares (two of the parametric
families of Domhan et al. 2015).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from ..data.scoring import metric_range
from ..errors import TangentError

LEVEL = 0.8
PREDICTION_LEVEL = 0.95  # prediction.json's intervals are 2.5–97.5 percentiles
ANCHOR_EVALS = 3  # observed evals whose mean offset anchors the predicted curve
FAMILIES = ("power", "exp")


def _z(level: float) -> float:
    """The two-sided normal quantile of a central interval at ``level``."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def _observed(rows: Sequence[dict]) -> list[tuple[int, float]]:
    obs = [(int(r["step"]), float(r["eval_metric"])) for r in rows if r.get("eval_metric") is not None]
    if not obs:
        raise TangentError("forecast needs at least one evaluated row (step, eval_metric)")
    return sorted(obs)


def forecast(rows: Sequence[dict], prediction: dict, *, n_eval: int | None = None, level: float = LEVEL) -> dict:
    """Final and best eval metric of the whole run from its rows so far and a predicted curve (module docstring).

    ``rows``: metrics rows with ``step`` and ``eval_metric`` up to the current step; ``prediction``: a dict with
    ``steps``, ``eval_metric`` and ``metric_interval`` (``final_interval`` when it has one) over the run's eval
    steps — prediction.json or one of its ``refreshes``. ``n_eval`` (default: the prediction's) sets the eval
    noise. Returns ``at_step``, ``final``/``final_interval``, ``best``/``best_step``/``best_interval``, ``level``."""
    obs = _observed(rows)
    t = obs[-1][0]
    steps, values = list(prediction["steps"]), [float(v) for v in prediction["eval_metric"]]
    if not steps:
        raise TangentError("forecast needs a predicted curve (prediction 'steps' is empty)")
    pred = dict(zip(steps, values, strict=True))
    name = prediction.get("metric_name", "accuracy")
    lo_b, hi_b = metric_range(name)
    residuals = [m - pred[s] for s, m in obs if s in pred]
    offset = float(np.mean(residuals[-ANCHOR_EVALS:])) if residuals else 0.0
    future = [(s, pred[s] + offset) for s in steps if s > t]
    last_step, last_value = obs[-1]
    final_step, final = future[-1] if future else (last_step, last_value)
    obs_best_step, obs_best = max(obs, key=lambda o: (o[1], -o[0]))
    f_best_step, f_best = max(future, key=lambda o: (o[1], -o[0])) if future else (obs_best_step, obs_best)
    best, best_step = (f_best, f_best_step) if f_best > obs_best else (obs_best, obs_best_step)

    if not 0 < level < 1:
        raise TangentError(f"interval level must be in (0, 1), got {level}")
    z = _z(level)
    if not future:  # nothing left to forecast: the observed values themselves
        return {"at_step": t, "final": last_value, "final_interval": [last_value, last_value], "best": obs_best,
                "best_step": obs_best_step, "best_interval": [obs_best, obs_best], "level": level, "offset": offset}
    # The prediction's own spread, its shape error on the observed part, and the eval set's sampling noise.
    pi = prediction.get("final_interval") or prediction.get("metric_interval") or [final, final]
    s_pred = (float(pi[1]) - float(pi[0])) / (2 * _z(PREDICTION_LEVEL)) if None not in pi else 0.0
    s_shape = float(np.std(residuals, ddof=1)) if len(residuals) >= 3 else 0.0
    m = n_eval or prediction.get("n_eval")
    s_eval = math.sqrt(max(final * (1 - final), 0.0) / m) if name == "accuracy" and m else 0.0
    half = z * math.sqrt(s_pred**2 + s_shape**2 + s_eval**2)

    def clip(v: float) -> float:
        return float(min(max(v, lo_b), hi_b))

    best_lo = max(obs_best, best - half)  # the run's best is at least what it has already reached
    return {"at_step": t, "final": clip(final), "final_interval": [clip(final - half), clip(final + half)],
            "final_step": final_step, "best": clip(best), "best_step": best_step,
            "best_interval": [clip(best_lo), clip(max(best + half, best_lo))], "level": level, "offset": offset}


def _family(name: str, t_scale: float):
    if name == "power":
        return lambda s, a, b, c: a - b * np.power(s + 1.0, -c)
    if name == "exp":
        return lambda s, a, b, c: a - b * np.exp(-c * s / t_scale)
    raise TangentError(f"unknown curve family '{name}': choose from {', '.join(FAMILIES)}")


def extrapolate(rows: Sequence[dict], eval_steps: Sequence[int], family: str, *,
                metric_name: str = "accuracy") -> dict:
    """Learning-curve extrapolation from the partial curve alone: fit ``family`` (power or exp, module
    docstring) to the observed (step, eval_metric) and read it at the remaining ``eval_steps``. Fewer than 3
    observed evals, or a fit that fails, forecast the last observed value flat. Returns ``final``, ``best``,
    ``best_step`` and ``fitted`` (whether the fit was used)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    obs = _observed(rows)
    t = obs[-1][0]
    s = np.array([o[0] for o in obs], dtype=np.float64)
    v = np.array([o[1] for o in obs], dtype=np.float64)
    future = np.array([x for x in eval_steps if x > t], dtype=np.float64)
    lo_b, hi_b = metric_range(metric_name)
    fitted, pred = False, np.full(len(future), v[-1])
    if len(obs) >= 3 and len(future):
        f = _family(family, max(t, 1.0))
        try:
            p0 = (v[-1], v[-1] - v[0], 0.5 if family == "power" else 1.0)
            with warnings.catch_warnings():  # three points fit three parameters exactly: no covariance, no matter
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(f, s, v, p0=p0, bounds=([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, 10.0]),
                                      maxfev=5000)
            pred = f(future, *params)
            fitted = bool(np.isfinite(pred).all())
            if not fitted:
                pred = np.full(len(future), v[-1])
        except (RuntimeError, ValueError):
            pass
    pred = np.clip(pred, lo_b, hi_b)
    final = float(pred[-1]) if len(future) else float(v[-1])
    i_obs = int(np.argmax(v))
    if len(future) and pred.max() > v[i_obs]:
        j = int(np.argmax(pred))
        best, best_step = float(pred[j]), int(future[j])
    else:
        best, best_step = float(v[i_obs]), int(s[i_obs])
    return {"at_step": t, "final": final, "best": best, "best_step": best_step, "fitted": fitted, "family": family}
