"""``ForecastPruner``: an Optuna pruner that stops a trial when its forecast cannot beat the best finished trial.

ASHA and Hyperband must train every candidate for a while before they can compare it with the others. A trial
that carries its predicted learning curve (``tangentft train --predict``'s ``prediction.json``, or
:func:`tangentft.predict.curve.predict_with`) can be judged from its first evaluations by the in-run forecast
(:func:`tangentft.predict.forecast.forecast`): the predicted curve anchored on the values reported so far, with an
interval that adds the prediction's spread, its shape error on the observed part and the eval set's noise. When
even the upper end of that interval for the run's best value falls below the best finished trial, the rest of
the run is not worth paying for.

Any Optuna objective can use it: put the prediction into the trial's user attributes under
:data:`PREDICTION_ATTR` (``steps``, ``eval_metric``, ``best_metric``, ``metric_interval``; optionally
``metric_name`` and ``n_eval``) and report the eval metric with ``trial.report(value, step)`` at the steps the run
evaluates. A trial without a prediction is never pruned by it.
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from ..errors import TangentError
from ..predict.forecast import LEVEL, forecast

PREDICTION_ATTR = "tangentft_prediction"
PREDICTION_KEYS = ("steps", "eval_metric", "best_metric", "metric_interval")
OPTIONAL_KEYS = ("metric_name", "n_eval")


def compact_prediction(prediction: dict) -> dict:
    """The part of a ``prediction.json`` dict the pruner reads (small enough for a trial's user attributes)."""
    missing = [k for k in PREDICTION_KEYS if prediction.get(k) is None]
    if missing:
        raise TangentError(f"prediction lacks {', '.join(missing)}: the forecast needs the predicted curve and interval")
    return {k: prediction[k] for k in PREDICTION_KEYS + OPTIONAL_KEYS if prediction.get(k) is not None}


def forecast_bound(prediction: dict, reported: dict[int, float], *, maximize: bool = True,
                   level: float = LEVEL) -> float:
    """The most (``maximize``; the least otherwise) a run's best value can still reach, at ``level``: the upper end
    of :func:`tangentft.predict.forecast.forecast`'s interval for the best metric, from the ``reported``
    {step: value} so far and the predicted curve. A minimized objective is forecast as its mirror image."""
    if not reported:
        return math.inf if maximize else -math.inf
    sign = 1.0 if maximize else -1.0
    pred = {"steps": list(prediction["steps"]), "eval_metric": [sign * v for v in prediction["eval_metric"]],
            "metric_interval": sorted(sign * v for v in prediction["metric_interval"]),
            "metric_name": prediction.get("metric_name", "") if maximize else "", "n_eval": prediction.get("n_eval")}
    rows = [{"step": s, "eval_metric": sign * v} for s, v in sorted(reported.items())]
    return sign * forecast(rows, pred, level=level)["best_interval"][1]


class ForecastPruner(optuna.pruners.BasePruner):
    """Prune a trial when its :func:`forecast_bound` falls below the best finished (COMPLETE) trial's value.

    ``n_warmup_steps``: never prune before a trial has reported a step past this one. ``n_finished``: how many
    trials must have finished before any is pruned (there is nothing to compare with before). ``level``: the
    forecast interval's level (0.8: the issue's calibrated interval; higher prunes less). ``attr``: the user
    attribute holding the trial's prediction (:data:`PREDICTION_ATTR`)."""

    def __init__(self, *, n_warmup_steps: int = 0, n_finished: int = 1, level: float = LEVEL,
                 attr: str = PREDICTION_ATTR):
        if n_warmup_steps < 0:
            raise TangentError(f"ForecastPruner.n_warmup_steps must be ≥ 0, got {n_warmup_steps}")
        if n_finished < 1:
            raise TangentError(f"ForecastPruner.n_finished must be ≥ 1, got {n_finished}")
        if not 0 < level < 1:
            raise TangentError(f"ForecastPruner.level must be in (0, 1), got {level}")
        self.n_warmup_steps, self.n_finished, self.level, self.attr = n_warmup_steps, n_finished, level, attr

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
        bound = forecast_bound(prediction, reported, maximize=maximize, level=self.level)
        return bound < max(finished) if maximize else bound > min(finished)
