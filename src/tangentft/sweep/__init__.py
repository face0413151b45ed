"""``tangentft sweep``: pick the configuration to fine-tune at a fraction of a grid's cost, on Optuna.

A space (:mod:`.space`) is prescreened from one kernel per trained-parameter set (:mod:`.prescreen`), then
searched in an Optuna study whose trials are real training runs pruned by their forecast (:mod:`.search`);
:mod:`.report` writes the choice, predicted vs real per trial and the compute spent against the grid's.
"""

from __future__ import annotations

from .search import run_sweep
from .space import Budget, Space, load_space

__all__ = ["Budget", "Space", "load_space", "run_sweep"]
