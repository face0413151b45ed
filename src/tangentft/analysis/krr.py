"""Kernel ridge prediction of the fine-tuned model (linearization paper, eq. 14–17).

In the linear regime, fine-tuning with ridge σ toward θ0 converges to

    f*(X*) = f0(X*) + K(X*, X) (K + σI)⁻¹ (Y − f0(X)).

Kernels come in two layouts (as :class:`tangentft.ntk.Kernel` produces them): the *full* kernel of shape
(n·K, n·K), example-major (row i·K + k is output k of example i), acting on the flattened residual; or the
*traced* kernel (n, n), shared by all K outputs, acting on the (n, K) residual column by column.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import linalg, stats

from ..data.scoring import pearson
from ..errors import TangentError
from ._linalg import as_kernel, check_sigma

ILL_CONDITIONED = 1e12


def _layout(k: np.ndarray, n: int, num_out: int, what: str = "kernel") -> str:
    if k.shape[0] == n * num_out:
        return "full"
    if k.shape[0] == n:
        return "traced"
    raise TangentError(f"{what} has {k.shape[0]} rows; expected n·K = {n * num_out} (full) or n = {n} (traced)")


def ridge_solve(k, rhs, sigma: float) -> np.ndarray:
    """(K + σI)⁻¹ rhs by a Cholesky solve; when κ(K+σI) > 1e12 (or Cholesky fails) warn and use an eigen pseudo-solve.

    The fallback drops eigen-directions whose eigenvalue of K+σI is below λmax·1e-12, so an ill-conditioned
    system returns the minimum-norm solution instead of amplified round-off.
    """
    k = as_kernel(k)
    sigma = check_sigma(sigma)
    a = k + sigma * np.eye(k.shape[0])
    w, v = np.linalg.eigh(a)
    kappa = w[-1] / w[0] if w[0] > 0 else np.inf
    if kappa <= ILL_CONDITIONED:
        try:
            return linalg.cho_solve(linalg.cho_factor(a, lower=True), rhs)
        except linalg.LinAlgError:
            pass
    warnings.warn(
        f"K+σI is ill-conditioned (κ = {kappa:.3g} at σ = {sigma:.3g}); solving in the eigenbasis with a cutoff",
        RuntimeWarning,
        stacklevel=2,
    )
    keep = w > w[-1] * 1e-12
    inv = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    rhs = np.asarray(rhs, dtype=np.float64)
    return v @ (inv[:, None] * (v.T @ rhs)) if rhs.ndim == 2 else v @ (inv * (v.T @ rhs))


@dataclass
class KRRFit:
    """Kernel-ridge predictions: ``train_pred`` (n, K), ``eval_pred`` (n*, K) or None, training risk R."""

    sigma: float
    train_pred: np.ndarray
    eval_pred: np.ndarray | None
    train_risk: float  # ‖Y − f*(X)‖², the R of Theorem 5
    dof: float  # tr(K(K+σI)⁻¹), effective degrees of freedom of the smoother


def krr_predict(k_train, y, f0, sigma: float, k_cross=None, f0_eval=None) -> KRRFit:
    """Eq. 14–17 of the linearization paper: f* = f0 + K(·,X)(K+σI)⁻¹(Y − f0(X)) on the train and eval sets.

    ``y``, ``f0``: (n, K) targets and pretrained outputs; ``k_cross``: K(X*, X) of shape (n*·K, n·K) or
    (n*, n) matching the train kernel's layout; ``f0_eval``: (n*, K).
    """
    k = as_kernel(k_train, "train kernel")
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    f0 = np.asarray(f0, dtype=np.float64).reshape(y.shape)
    n, num_out = y.shape
    layout = _layout(k, n, num_out, "train kernel")
    r = y - f0
    rhs = r.reshape(-1) if layout == "full" else r
    alpha = ridge_solve(k, rhs, sigma)
    train_pred = f0 + (k @ alpha).reshape(n, num_out)
    w = np.clip(np.linalg.eigvalsh(k), 0, None)
    dof = float((w / (w + sigma)).sum())
    eval_pred = None
    if k_cross is not None:
        kc = np.asarray(getattr(k_cross, "matrix", k_cross), dtype=np.float64)
        if f0_eval is None:
            raise TangentError("krr_predict: f0_eval is required with k_cross")
        f0e = np.atleast_2d(np.asarray(f0_eval, dtype=np.float64))
        want_cols = k.shape[0]
        want_rows = f0e.shape[0] * (num_out if layout == "full" else 1)
        if kc.shape != (want_rows, want_cols):
            raise TangentError(f"cross kernel has shape {kc.shape}, expected {(want_rows, want_cols)}")
        eval_pred = f0e + (kc @ alpha).reshape(f0e.shape[0], num_out)
    risk = float(((y - train_pred) ** 2).sum())
    return KRRFit(float(sigma), train_pred, eval_pred, risk, dof)


def sigma_grid(k, num: int = 15) -> np.ndarray:
    """A default σ grid relative to the kernel's scale: mean diagonal × 10^(−6 … 1), log-spaced."""
    k = as_kernel(k)
    scale = float(np.trace(k)) / k.shape[0]
    if scale <= 0:
        raise TangentError("kernel has zero trace; there is nothing to regress with")
    return scale * np.logspace(-6, 1, num)


@dataclass
class SigmaCV:
    """k-fold cross-validation of σ: the grid, mean held-out MSE per σ, and the chosen σ."""

    grid: list[float]
    cv_mse: list[float]
    sigma: float
    folds: int

    def to_json(self) -> dict:
        return asdict(self)


def cv_sigma(k, y, f0, grid=None, *, folds: int = 4, seed: int = 0) -> SigmaCV:
    """Choose the ridge σ of eq. 14–17 by k-fold cross-validation over ``grid`` (default :func:`sigma_grid`).

    Folds split *examples* (all K rows of an example stay together in the full layout). The score is the
    held-out mean squared error of f* against Y — smooth in σ, unlike accuracy, so ties are rare; ties go
    to the larger σ (the more regularized, safer choice).
    """
    k = as_kernel(k)
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    f0 = np.asarray(f0, dtype=np.float64).reshape(y.shape)
    n, num_out = y.shape
    layout = _layout(k, n, num_out)
    folds = int(min(folds, n))
    if folds < 2:
        raise TangentError(f"cross-validation needs at least 2 examples, got {n}")
    grid = sigma_grid(k) if grid is None else np.asarray(grid, dtype=np.float64)
    for s in grid:
        check_sigma(s)
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, folds)

    def rows(ex):
        return (ex[:, None] * num_out + np.arange(num_out)).reshape(-1) if layout == "full" else ex

    mse = np.zeros(len(grid))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for hold in parts:
            tr = np.setdiff1d(perm, hold)
            ktr = k[np.ix_(rows(tr), rows(tr))]
            kcr = k[np.ix_(rows(hold), rows(tr))]
            for j, s in enumerate(grid):
                fit = krr_predict(ktr, y[tr], f0[tr], s, kcr, f0[hold])
                mse[j] += float(((fit.eval_pred - y[hold]) ** 2).sum())
    mse /= n * num_out
    best = int(np.flatnonzero(mse <= mse.min() * (1 + 1e-12)).max())
    return SigmaCV(grid.tolist(), mse.tolist(), float(grid[best]), folds)


def regression_metrics(pred, target) -> dict[str, float]:
    """MSE, Pearson r (the task metric, :func:`tangentft.data.scoring.pearson`) and Spearman ρ of scalar
    predictions; the correlations are NaN where the task metric is."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    r = pearson(p, t)
    return {"mse": float(np.mean((p - t) ** 2)), "pearson": r,
            "spearman": float("nan") if np.isnan(r) else float(stats.spearmanr(p, t)[0])}
