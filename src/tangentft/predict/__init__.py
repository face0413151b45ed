"""Prediction: a run's learning curve before it is paid for, checked against the run, and the run an analysis
recommends.

curve (the predicted curve from the kernel at θ0 of the run's own parameters, replayed over its own steps), against
(predicted vs real: rows, errors, overlay figure), recommend (an ``analyze`` report's recommendation as runs to
launch), launch (a training run with its prediction first and the comparison after), refresh (the kernel re-taken
at θ_t during the run and the rest re-forecast from f_t), forecast (a run's final and best metric from its first
part and a predicted curve, with an 80% interval; the curve-extrapolation baselines). This floor sits above
``train/`` and ``analysis/``: it reads a run's :class:`~tangentft.train.config.TrainConfig` and replays it through
:mod:`tangentft.analysis.dynamics`; training itself never predicts.
"""
