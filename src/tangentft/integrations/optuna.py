"""``ForecastPruner``: an Optuna pruner that stops a trial when its forecast cannot beat the best finished trial.

ASHA and Hyperband must train every candidate for a while before they can compare it with the others. A trial
that carries its predicted learning curve (``tangentft train --predict``'s ``prediction.json``, or
:func:`tangentft.predict.curve.predict_with`) can be judged from its first evaluations: its forecast is the
real value last reported, moved along the predicted curve's remaining gain, with the prediction's interval on
top (:func:`forecast_bound`). When even that upper bound falls below the best finished trial, the rest of the
run is not worth paying for.

Any Optuna objective can use it: put the prediction into the trial's user attributes under
:data:`PREDICTION_ATTR` (``steps``, ``eval_metric``, ``best_metric``, ``metric_interval``) and report the eval
metric with ``trial.report(value, step)`` at the steps the run evaluates. A trial without a prediction is never
pruned by it.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from ..errors import TangentError

PREDICTION_ATTR = "tangentft_prediction"
PREDICTION_KEYS = ("steps", "eval_metric", "best_metric", "metric_interval")


def compact_prediction(prediction: dict) -> dict:
    """The part of a ``prediction.json`` dict the pruner reads (small enough for a trial's user attributes)."""
    missing = [k for k in PREDICTION_KEYS if prediction.get(k) is None]
    if missing:
        raise TangentError(f"prediction lacks {', '.join(missing)}: the forecast needs the predicted curve and interval")
    return {k: prediction[k] for k in PREDICTION_KEYS}


def forecast_bound(prediction: dict, reported: dict[int, float], *, maximize: bool = True) -> float:
    """The most (``maximize``; the least otherwise) a run can still reach, from its ``reported`` {step: value}
    and its predicted curve: the best value reported so far, or the last reported value plus the largest gain
    the prediction still expects after that step (the predicted curve, interpolated at the step, to its best
    later point), widened by the prediction interval's outer half (``metric_interval`` beyond ``best_metric``).
    Past the predicted curve's last step, the run has nothing left to gain: the bound is the best reported."""
    if not reported:
        return math.inf if maximize else -math.inf
    sign = 1.0 if maximize else -1.0
    steps = np.asarray(prediction["steps"], dtype=float)
    curve = sign * np.asarray(prediction["eval_metric"], dtype=float)
    lo, hi = prediction["metric_interval"]
    width = max(0.0, (hi - prediction["best_metric"]) if maximize else (prediction["best_metric"] - lo))
    last = max(reported)
    seen = max(sign * v for v in reported.values())
    later = curve[steps > last]
    if later.size == 0:
        return sign * seen
    gain = float(later.max() - np.interp(last, steps, curve))
    return sign * max(seen, sign * reported[last] + gain + width)


class ForecastPruner(optuna.pruners.BasePruner):
    """Prune a trial when its :func:`forecast_bound` falls below the best finished (COMPLETE) trial's value.

    ``n_warmup_steps``: never prune before a trial has reported a step past this one. ``n_finished``: how many
    trials must have finished before any is pruned (there is nothing to compare with before). ``attr``: the
    user attribute holding the trial's prediction (:data:`PREDICTION_ATTR`)."""

    def __init__(self, *, n_warmup_steps: int = 0, n_finished: int = 1, attr: str = PREDICTION_ATTR):
        if n_warmup_steps < 0:
            raise TangentError(f"ForecastPruner.n_warmup_steps must be ≥ 0, got {n_warmup_steps}")
        if n_finished < 1:
            raise TangentError(f"ForecastPruner.n_finished must be ≥ 1, got {n_finished}")
        self.n_warmup_steps, self.n_finished, self.attr = n_warmup_steps, n_finished, attr

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """True when the trial's forecast upper bound lies below the best finished trial (Optuna's pruner API)."""
        reported = trial.intermediate_values
        prediction = trial.user_attrs.get(self.attr)
        if not reported or prediction is None or max(reported) <= self.n_warmup_steps:
            return False
        finished = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None]
        if len(finished) < self.n_finished:
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        bound = forecast_bound(prediction, reported, maximize=maximize)
        return bound < max(finished) if maximize else bound > min(finished)
