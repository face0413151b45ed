"""Head-only training (linear probing): only the encoder's task head trains, the encoder stays at θ0.

For an encoder task model f(x) = W φ(x; θ0) + b is linear in the trained parameters, so this is exactly
kernel regression with the feature kernel φ φᵀ — the cheapest point of comparison for the eNTK analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import TangentError
from ..models.selection import ParamSelection, select
from .base import MethodConfig, register_method
from .full import FullMethod


@dataclass
class HeadConfig(MethodConfig):
    """Linear probing; ``params`` must be unset or ``head``."""


@register_method
class HeadMethod(FullMethod):
    """Train the encoder head ``head.weight``/``head.bias`` only."""

    name = "head"
    config_class = HeadConfig

    def selection(self, task_model: nn.Module) -> ParamSelection:
        if getattr(task_model, "head", None) is None:
            raise TangentError(
                f"method 'head' trains an encoder's task head; {task_model.model_name} is a causal LM "
                "(use method 'full' with a params selection, or 'lora')"
            )
        if self.config.params is not None and str(self.config.params) != "head":
            raise TangentError(f"method 'head' trains only the head; got params={self.config.params!r}")
        return select(task_model, "head", seed=self.config.seed)
