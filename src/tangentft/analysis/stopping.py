"""Data-dependent early stopping from the kernel spectrum (early-stopping paper §3.5, eq. 10–11, App. B.1).

Following Raskutti, Wainwright & Yu (2014), gradient descent with step size α on the mean squared loss
(1/2n)‖Y − f‖² of the linearized model moves f by α(K/n)(Y − f) per step. With λ̂_1 ≥ … ≥ λ̂_n the
eigenvalues of the normalized kernel K/n and noise level s:

* local empirical Rademacher complexity (eq. 10):  R̂_K(ε) = sqrt( (1/n) Σ_i min(λ̂_i, ε²) );
* critical radius: the smallest ε > 0 with R̂_K(ε) ≤ ε² / (2e·s);
* stopping step (eq. 11):  T̂ = min{ t : R̂_K(1/sqrt(η_t)) > 1/(2e·s·η_t) } − 1, η_t = α·t.

Because R̂_K(ε)/ε is non-increasing, the condition in T̂ holds exactly when 1/sqrt(η_t) is below the critical
radius, so T̂ = ⌊1/(α·ε̂²)⌋; :func:`stopping_step` uses this closed form and the tests check it against the
step-by-step definition. Early stopping at η_T̂ = α·T̂ acts like ridge regression with penalty
λ = 1/(α·T̂) on the mean loss (eq. 27; the paper writes the equivalence through the "time" α·T̂), which is
σ = n/(α·T̂) in the (K + σI)⁻¹ convention of :mod:`tangentft.analysis.krr`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import TangentError


def _normalized(eigs) -> np.ndarray:
    lam = np.clip(np.asarray(eigs, dtype=np.float64), 0, None)
    return lam / lam.size


def rademacher(eigs, eps) -> np.ndarray | float:
    """R̂_K(ε) = sqrt((1/n) Σ min(λ̂_i, ε²)) with λ̂ the eigenvalues of K/n (early-stopping paper, eq. 10).

    ``eigs`` are the eigenvalues of the *unnormalized* kernel K; ``eps`` a scalar or array.
    """
    lam = _normalized(eigs)
    e = np.asarray(eps, dtype=np.float64)
    out = np.sqrt(np.minimum(lam[None, :], (e.reshape(-1, 1)) ** 2).mean(axis=1))
    return float(out[0]) if e.ndim == 0 else out.reshape(e.shape)


def critical_radius(eigs, noise: float) -> float:
    """Smallest ε > 0 with R̂_K(ε) ≤ ε²/(2e·noise) (Raskutti et al. 2014; early-stopping paper App. B.1)."""
    if not noise > 0:
        raise TangentError(f"noise level must be > 0, got {noise}")
    lam = _normalized(eigs)
    if lam.max() <= 0:
        raise TangentError("kernel is zero: no critical radius")
    c = 2 * math.e * noise

    def ok(e):
        return rademacher(eigs, e) <= e * e / c

    hi = max(math.sqrt(c * math.sqrt(lam.mean())), math.sqrt(lam.max())) * 2
    lo = hi
    while ok(lo):  # the condition fails for ε small enough whenever some λ̂ > 0
        lo /= 2
        if lo < 1e-300:
            return 0.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-13:
            break
    return hi


def stopping_step_by_definition(eigs, step_size: float, noise: float, t_max: int = 10**6) -> int:
    """T̂ evaluated literally from eq. 11 by scanning t = 1, 2, … (slow; for checking the closed form)."""
    c = 2 * math.e * noise
    for t in range(1, t_max + 1):
        eta_t = step_size * t
        if rademacher(eigs, 1 / math.sqrt(eta_t)) > 1 / (c * eta_t):
            return t - 1
    return t_max


@dataclass
class StoppingRule:
    """Early-stopping recommendation for step size α and noise level s."""

    critical_radius: float
    T_hat: int
    step_size: float
    noise: float
    noise_estimated: bool
    effective_time: float  # η_T̂ = α·T̂
    ridge_equivalent: float | None  # λ = 1/(α·T̂), penalty on the mean loss (None when T̂ = 0)
    ridge_sigma: float | None  # σ = n/(α·T̂), same in the (K+σI)⁻¹ convention

    def to_json(self) -> dict:
        return asdict(self)


def stopping_rule(eigs, step_size: float, noise: float, *, noise_estimated: bool = False) -> StoppingRule:
    """Critical radius, stopping step T̂ (eq. 11) and its ridge equivalent (eq. 27) for a kernel spectrum.

    ``step_size`` α must satisfy α ≤ 1/λ̂max for gradient descent on the linearized model to be stable
    (Raskutti et al. assume α ≤ min(1, 1/λ̂max)); a larger α is accepted with a warning.
    """
    if not step_size > 0:
        raise TangentError(f"step size must be > 0, got {step_size}")
    lam = _normalized(eigs)
    if step_size * lam.max() > 1:
        warnings.warn(
            f"step size {step_size:.3g} exceeds 1/λ̂max = {1 / lam.max():.3g}: gradient descent on the linearized "
            "model would diverge",
            RuntimeWarning,
            stacklevel=2,
        )
    eps = critical_radius(eigs, noise)
    t_hat = int(math.floor(1.0 / (step_size * eps * eps) * (1 + 1e-12))) if eps > 0 else 0
    eta = step_size * t_hat
    # T̂ = 0 (noise swamps every direction of K) means "do not train": no finite ridge matches it
    lam_ridge = 1.0 / eta if eta > 0 else None
    sig = lam.size * lam_ridge if lam_ridge is not None else None
    return StoppingRule(eps, t_hat, float(step_size), float(noise), noise_estimated, eta, lam_ridge, sig)
