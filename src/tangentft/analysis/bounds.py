"""Training-risk bounds of Theorem 5 (linearization paper).

Regularized fine-tuning in the linear regime converges to kernel ridge regression with ridge σ = λ, whose
training residual is σ(K+σI)⁻¹(Y − f0(X)). Its squared norm R therefore lies between the values it would
take if every eigen-direction of K had eigenvalue λmax or λmin:

    (σ‖Y − f0‖ / (σ + λmax))² ≤ R ≤ (σ‖Y − f0‖ / (σ + λmin))².
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ._linalg import check_sigma
from .spectrum import Spectrum


@dataclass
class RiskBounds:
    """Theorem 5 interval for the training risk R = ‖Y − f_σ(X)‖² (sum of squares over examples and outputs)."""

    lower: float
    upper: float
    sigma: float
    residual_norm: float  # ‖Y − f0(X)‖ (Frobenius)

    def to_json(self) -> dict:
        return asdict(self)


def residual_targets(y, f0) -> np.ndarray:
    """Y − f0(X): what the kernel must fit on top of the pretrained model's outputs (eq. 14 of the linearization paper)."""
    return np.asarray(y, dtype=np.float64) - np.asarray(f0, dtype=np.float64)


def risk_bounds(spec: Spectrum | tuple[float, float], residual, sigma: float) -> RiskBounds:
    """Theorem 5 (linearization paper): (σ‖r‖/(σ+λmax))² ≤ R ≤ (σ‖r‖/(σ+λmin))², r = Y − f0(X).

    ``spec`` is a :class:`Spectrum` or a (λmax, λmin) pair; ``residual`` the residual targets (any shape).
    """
    sigma = check_sigma(sigma)
    lmax, lmin = (spec.lambda_max, spec.lambda_min) if isinstance(spec, Spectrum) else map(float, spec)
    rn = float(np.linalg.norm(np.asarray(residual, dtype=np.float64)))
    return RiskBounds((sigma * rn / (sigma + lmax)) ** 2, (sigma * rn / (sigma + max(lmin, 0.0))) ** 2, sigma, rn)
