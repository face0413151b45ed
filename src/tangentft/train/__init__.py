"""Training: the loop, regularization toward θ0, schedules, metrics, checkpoints, plots and reports."""
