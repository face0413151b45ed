"""Spectral perturbation when candidate parameter groups join the trained set (linearization paper).

Training the parameters of a base selection plus a candidate group C gives the kernel K + S_C, where S_C is
the sum of the per-group kernels S_g, g ∈ C (Gram matrices of disjoint Jacobian column blocks add up).
Theorem 6 bounds the eigenvalues of K + S through η = ‖K^{-1/2} S K^{-1/2}‖₂, Theorem 7 / Corollary 1
turn that into an interval for how the Theorem 5 risk bounds move, and Algorithm 2 (Appendix L) ranks
candidate subsets by r_C = λmax(K + S_C + σI) / λmax(K + σI).

Choice made here: η is computed on the regularized base A = K + σI, i.e. η = ‖A^{-1/2} S A^{-1/2}‖₂. It
equals the paper's η as σ → 0 and stays finite when K is singular (an eNTK with n·K > #params always is).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import TangentError
from ._linalg import as_kernel, check_sigma


def _inv_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v / np.sqrt(w)) @ v.T


def eta(k, s, sigma: float) -> float:
    """η = ‖(K+σI)^{-1/2} S (K+σI)^{-1/2}‖₂, the relative size of the perturbation S (Theorem 6)."""
    k, s = as_kernel(k), as_kernel(s, "perturbation")
    if k.shape != s.shape:
        raise TangentError(f"perturbation shape {s.shape} differs from kernel shape {k.shape}")
    m = _inv_sqrt(k + check_sigma(sigma) * np.eye(k.shape[0]))
    return float(max(np.linalg.eigvalsh(m @ s @ m).max(), 0.0))


@dataclass
class PerturbationBounds:
    """Theorem 6 eigenvalue bounds for K+S and the Corollary 1 interval for the change of the risk bounds."""

    eta: float
    lambda_max: tuple[float, float]  # interval for λmax(K+S)
    lambda_min: tuple[float, float]  # interval for λmin(K+S)
    risk_ratio: tuple[float, float]  # interval for (Theorem 5 bound with K+S) / (bound with K)

    def to_json(self) -> dict:
        return asdict(self)


def perturbation_bounds(k, s, sigma: float) -> PerturbationBounds:
    """Theorems 6, 7 and Corollary 1 (linearization paper) for a PSD perturbation S of K.

    Since 0 ≼ S and S ≼ η(K+σI): λ_i(K) ≤ λ_i(K+S) ≤ min(λ_i(K) + ‖S‖, (1+η)(λ_i(K)+σ) − σ) (Weyl and the
    multiplicative bound). Each Theorem 5 bound has the form (σ‖r‖/(σ+λ))², so with λ moved inside that
    interval the bound is multiplied by a factor in [1/(1+η)², 1] (Corollary 1; the reported lower end uses the
    tighter of the Weyl and multiplicative upper bounds): adding parameters can only lower the risk bounds,
    by at most (1+η)².
    """
    k, s = as_kernel(k), as_kernel(s, "perturbation")
    sigma = check_sigma(sigma)
    e = eta(k, s, sigma)
    lam = np.clip(np.linalg.eigvalsh(k), 0, None)
    s_norm = float(max(np.linalg.eigvalsh(s).max(), 0.0))

    def upper(x):
        return float(min(x + s_norm, (1 + e) * (x + sigma) - sigma))

    lmax, lmin = float(lam.max()), float(lam.min())
    shrink = min(((sigma + x) / (sigma + upper(x))) ** 2 for x in (lmax, lmin))
    return PerturbationBounds(e, (lmax, upper(lmax)), (lmin, upper(lmin)), (shrink, 1.0))


def ratio(k, s, sigma: float) -> float:
    """r_C = λmax(K + S_C + σI) / λmax(K + σI) (Algorithm 2, Appendix L of the linearization paper)."""
    k, s = as_kernel(k), as_kernel(s, "perturbation")
    sigma = check_sigma(sigma)
    return float((np.linalg.eigvalsh(k + s).max() + sigma) / (np.linalg.eigvalsh(k).max() + sigma))


@dataclass
class CandidateScore:
    """One scored subset of candidate groups."""

    groups: list[str]
    r_c: float
    eta: float
    lambda_max_bounds: tuple[float, float]
    risk_ratio: tuple[float, float]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    """Algorithm 2 result: every scored subset ranked by r_C, and the best subset of each size."""

    ranking: list[CandidateScore]
    best_by_size: dict[int, CandidateScore]
    singles: list[CandidateScore]  # each candidate alone, ranked (the Fig. 3 bars)
    method: str  # "exhaustive" or "greedy"
    sigma: float

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "sigma": self.sigma,
            "ranking": [c.to_json() for c in self.ranking],
            "best_by_size": {str(k): v.to_json() for k, v in self.best_by_size.items()},
            "singles": [c.to_json() for c in self.singles],
        }


def select_groups(
    k,
    candidates: Mapping[str, np.ndarray],
    sigma: float,
    *,
    max_size: int | None = None,
    exhaustive_limit: int = 12,
) -> Selection:
    """Algorithm 2 (Appendix L, linearization paper): rank subsets C of candidate groups by r_C.

    With m ≤ ``exhaustive_limit`` candidates every subset of size 1..``max_size`` (default m) is scored;
    beyond, forward greedy selection adds at each step the candidate that maximizes r_C, giving one nested
    subset per size (plus every singleton). Since S_g ≽ 0, r_C grows with C, so the useful answer is the best
    subset *per size* (``best_by_size``) — the size is the parameter budget. Each score carries its η and the
    Theorem 6 / Corollary 1 bounds.
    """
    k = as_kernel(k)
    sigma = check_sigma(sigma)
    if not candidates:
        raise TangentError("candidate set is empty: give at least one candidate group")
    names = list(candidates)
    mats = {g: as_kernel(candidates[g], f"candidate kernel {g}") for g in names}
    for g, m in mats.items():
        if m.shape != k.shape:
            raise TangentError(f"candidate kernel {g} has shape {m.shape}, base kernel {k.shape}")
    m = len(names)
    max_size = m if max_size is None else max(1, min(int(max_size), m))

    def score(subset) -> CandidateScore:
        s = sum(mats[g] for g in subset)
        pb = perturbation_bounds(k, s, sigma)
        return CandidateScore(list(subset), ratio(k, s, sigma), pb.eta, pb.lambda_max, pb.risk_ratio)

    singles = sorted((score((g,)) for g in names), key=lambda c: -c.r_c)
    if m <= exhaustive_limit:
        method = "exhaustive"
        scored = [score(c) for size in range(1, max_size + 1) for c in itertools.combinations(names, size)]
    else:
        method = "greedy"
        scored, chosen = list(singles), []
        for _ in range(max_size):
            rest = [g for g in names if g not in chosen]
            best = max((score(tuple(chosen) + (g,)) for g in rest), key=lambda c: c.r_c)
            chosen = best.groups
            if len(chosen) > 1:
                scored.append(best)
    ranking = sorted(scored, key=lambda c: (-c.r_c, len(c.groups)))
    best_by_size: dict[int, CandidateScore] = {}
    for c in ranking:
        best_by_size.setdefault(len(c.groups), c)
    return Selection(ranking, dict(sorted(best_by_size.items())), singles, method, sigma)
