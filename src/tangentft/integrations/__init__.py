"""tangentft inside the Hugging Face stack: the pull toward θ0 for any torch optimizer, a
``transformers.TrainerCallback`` that logs ‖θt − θ0‖ and the linearization gap and stops at the kernel
rule's step, and a thin wrapper that lets a ``transformers.Trainer`` train a tangentft task model.

These are the pieces ``tangentft train`` uses (``train.regularization.PullToInit``,
``train.measures.LinearizationProbe``, ``analysis.kernel_rule``), packaged for someone else's training loop.
For someone else's Optuna search, :mod:`tangentft.integrations.optuna` holds the pruner ``tangentft sweep`` uses
(``ForecastPruner``: prune a trial when its forecast cannot beat the best finished one); it is imported from
there, so a plain ``import tangentft.integrations`` does not load Optuna.
"""

from __future__ import annotations

from .callback import TangentCallback, kernel_rule_step
from .pull import SelectivePull
from .trainer_model import TaskModelForTrainer, task_collator

__all__ = ["SelectivePull", "TangentCallback", "TaskModelForTrainer", "kernel_rule_step", "task_collator"]
