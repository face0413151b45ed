"""Linearized full fine-tuning with a nuclear-norm penalty, solved by proximal gradient.

LoRA-NTK paper, Appendix D: the low-rank baseline for LoRA is min_θ̄ L(f̄_θ̄) + μ Σ_W ‖W̄ − W0‖_* over the
linearized model f̄. Each optimizer step is the gradient step on L followed by the prox of the nuclear
norm, singular-value soft-thresholding of every trained matrix's update:
Δ = U diag(s) Vᵀ  ↦  U diag(max(s − η μ, 0)) Vᵀ, with η the step's learning rate. Vectors (biases, norms)
get no penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import TangentError
from ..models.spec import Spec
from .base import register_method
from .linearized import LinearizedConfig, LinearizedMethod, _key


def svt(delta: torch.Tensor, threshold: float) -> torch.Tensor:
    """Singular-value soft-thresholding: the prox of ``threshold``·‖·‖_* at ``delta`` (a matrix)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return ((u * (s - threshold).clamp_min(0.0)) @ vh).to(delta.dtype)


@dataclass
class NuclearProxConfig(LinearizedConfig):
    """Linearized training of projection matrices with a nuclear-norm prox; ``params`` default ``all@all``."""

    nuclear_lam: float = field(default=1e-3, metadata={"help": "Nuclear-norm weight μ (prox threshold = lr·μ)."})

    def __post_init__(self):
        super().__post_init__()
        if self.factor_rank is not None:
            raise TangentError("nuclear-prox thresholds ΔW itself and has no factor_rank: for the factored model use "
                               "method 'linearized' with factor_rank and weight_decay (the factors' weight decay is "
                               "the nuclear-norm penalty)")
        if self.nuclear_lam < 0:
            raise TangentError(f"nuclear_lam must be ≥ 0, got {self.nuclear_lam}")
        if self.params is None:
            self.params = Spec.parse("all@all")


@register_method
class NuclearProxMethod(LinearizedMethod):
    """``linearized`` + singular-value soft-thresholding of every trained matrix update after each step."""

    name = "nuclear-prox"
    config_class = NuclearProxConfig

    def after_step(self, model: nn.Module, lr: float) -> None:
        threshold = lr * self.config.nuclear_lam
        if threshold <= 0:
            return
        deltas = model.delta()
        with torch.no_grad():
            for n in model.names:
                if deltas[n].dim() == 2:
                    theta0 = model.theta0[n].detach()
                    model.theta_bar[_key(n)].copy_(theta0 + svt(deltas[n].detach(), threshold))
