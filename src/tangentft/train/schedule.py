"""Learning-rate schedule: linear warmup over a fraction of the steps, then linear decay to zero."""

from __future__ import annotations

import torch

from ..errors import TangentError


def warmup_linear_factor(step: int, total_steps: int, warmup_ratio: float = 0.06) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total_steps``.

    Rises linearly over ``ceil(warmup_ratio·total)`` steps (the first step already gets a small positive
    rate), then falls linearly to 0 at ``total_steps``.
    """
    warmup = int(-(-warmup_ratio * total_steps // 1))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.06):
    """A ``LambdaLR`` applying :func:`warmup_linear_factor`; its state is just the step counter."""
    if total_steps <= 0:
        raise TangentError(f"training needs at least one optimizer step, got {total_steps}")
    if not 0 <= warmup_ratio < 1:
        raise TangentError(f"warmup ratio must be in [0, 1), got {warmup_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_linear_factor(s, total_steps, warmup_ratio)
    )
