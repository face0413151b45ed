"""Spectrum of an empirical NTK: eigenvalues, condition numbers, effective rank, eigenvalue decay rate.

The regularized condition number κ(K+σI) = (λmax+σ)/(λmin+σ) is the quantity the linearization paper
(§4, Table 2) finds predictive of fine-tuning loss and accuracy, with σ = 1e-4. The decay rate β fits the
power law λk/λ1 ≈ k^(−2β) of the early-stopping paper (eq. 29–32), whose stopping time and rates depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import TangentError
from ._linalg import as_kernel, check_sigma

DEFAULT_SIGMA = 1e-4


@dataclass
class Spectrum:
    """Eigen-summary of a PSD kernel. ``eigenvalues`` are descending and clamped at 0."""

    eigenvalues: np.ndarray
    lambda_max: float
    lambda_min: float
    trace: float
    effective_rank: float
    clamped_count: int  # how many eigenvalues were negative round-off, clamped to 0
    most_negative: float  # the most negative raw eigenvalue (0.0 when none)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["eigenvalues"] = self.eigenvalues.tolist()
        return d


def eigenvalues(k) -> tuple[np.ndarray, np.ndarray]:
    """Raw eigenvalues (descending) and eigenvectors of a symmetric kernel, by float64 ``numpy.linalg.eigh``."""
    k = as_kernel(k)
    w, v = np.linalg.eigh(k)
    return w[::-1].copy(), v[:, ::-1].copy()


def spectrum(k, *, psd_tol: float = 1e-8) -> Spectrum:
    """Eigenvalues, λmax, λmin, trace and effective rank of a kernel (linearization paper §4).

    Negative eigenvalues of a Gram matrix are round-off: they are clamped to 0 and *reported* (count and most
    negative value). One below −``psd_tol``·λmax means the matrix is not PSD: that is a TangentError.
    The effective rank is the entropy rank exp(−Σ p_i log p_i), p = λ/Σλ (Roy & Vetterli 2007): it equals
    r for r equal nonzero eigenvalues and is insensitive to the overall scale of K.
    """
    raw, _ = eigenvalues(k)
    lmax = max(float(raw[0]), 0.0)
    most_neg = float(min(raw[-1], 0.0))
    if most_neg < -psd_tol * max(lmax, 1e-300):
        raise TangentError(f"kernel is not positive semi-definite: eigenvalue {most_neg:.3g} vs λmax {lmax:.3g}")
    notes = []
    clamped = int(np.sum(raw < 0))
    if clamped:
        notes.append(f"{clamped} negative round-off eigenvalue(s) clamped to 0 (most negative {most_neg:.3g})")
    lam = np.clip(raw, 0.0, None)
    total = float(lam.sum())
    if total > 0:
        p = lam[lam > 0] / total
        erank = float(np.exp(-(p * np.log(p)).sum()))
    else:
        erank = 0.0
        notes.append("kernel is identically zero")
    return Spectrum(lam, lmax, float(lam[-1]), float(np.trace(as_kernel(k))), erank, clamped, most_neg, notes)


def condition_number(spec: Spectrum | np.ndarray, sigma: float | np.ndarray = DEFAULT_SIGMA):
    """κ(K+σI) = (λmax+σ)/(λmin+σ) (linearization paper §4, Table 2); ``sigma`` may be a grid (array).

    Accepts a :class:`Spectrum` or an eigenvalue array. Returns a float for scalar σ, an array for a grid.
    """
    lam = spec.eigenvalues if isinstance(spec, Spectrum) else np.clip(np.asarray(spec, dtype=np.float64), 0, None)
    sig = np.asarray(sigma, dtype=np.float64)
    for s in np.atleast_1d(sig):
        check_sigma(s)
    kappa = (lam.max() + sig) / (lam.min() + sig)
    return float(kappa) if kappa.ndim == 0 else kappa


@dataclass
class Decay:
    """Power-law fit λk/λ1 ≈ k^(−2β) over indices ``window`` (1-based, inclusive)."""

    beta: float
    stderr: float
    window: tuple[int, int]
    r2: float

    def to_json(self) -> dict:
        return asdict(self)


def decay_rate(eigs, window: tuple[int, int] | None = None, *, rel_floor: float = 1e-10) -> Decay:
    """Eigenvalue decay rate β from least squares of log(λk/λ1) = −2β log k (early-stopping paper, eq. 29–32).

    The model has no intercept (at k = 1 both sides are 0), so the slope is b = Σ xy / Σ x² with
    x = log k, y = log(λk/λ1), β = −b/2, and the standard error of β is ½·sqrt(s²/Σx²) with
    s² = Σ(y − bx)²/(m − 1) over the m indices in the window. The default window runs from k = 1 to the
    last eigenvalue above ``rel_floor``·λ1 (numerically zero eigenvalues carry no power-law information).
    """
    lam = np.sort(np.clip(np.asarray(eigs, dtype=np.float64), 0, None))[::-1]
    if lam.size < 3 or lam[0] <= 0:
        raise TangentError(f"decay rate needs at least 3 eigenvalues with λ1 > 0, got {lam.size}")
    if window is None:
        last = int(np.sum(lam > rel_floor * lam[0]))
        window = (1, last)
    lo, hi = int(window[0]), int(window[1])
    if not 1 <= lo < hi <= lam.size or hi - lo < 2:
        raise TangentError(f"decay window {window} must satisfy 1 ≤ start, start+2 ≤ end ≤ {lam.size}")
    k = np.arange(lo, hi + 1, dtype=np.float64)
    sel = lam[lo - 1 : hi]
    if np.any(sel <= 0):
        raise TangentError(f"decay window {window} contains zero eigenvalues; end it before index {int(np.argmin(sel > 0)) + lo}")
    x = np.log(k)
    y = np.log(sel / lam[0])
    sxx = float(x @ x)
    if sxx == 0:
        raise TangentError(f"decay window {window} must include some k > 1")
    b = float(x @ y) / sxx
    resid = y - b * x
    m = x.size
    s2 = float(resid @ resid) / (m - 1)
    stderr = 0.5 * np.sqrt(s2 / sxx)
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / sst if sst > 0 else 1.0
    return Decay(-b / 2.0, float(stderr), (lo, hi), r2)
