"""Shared checks for kernel matrices: float64, square, finite, symmetric (symmetrized with a tolerance)."""

from __future__ import annotations

import numpy as np

from ..errors import TangentError


def as_kernel(k, name: str = "kernel") -> np.ndarray:
    """``k`` as a symmetric float64 matrix; TangentError if it is not square, finite and near-symmetric.

    Round-off asymmetry (relative 1e-8 of the largest entry) is removed by averaging with the transpose,
    since every spectral formula downstream assumes an exactly symmetric matrix.
    """
    k = np.asarray(getattr(k, "matrix", k), dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise TangentError(f"{name} must be a non-empty square matrix, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise TangentError(f"{name} has non-finite entries")
    scale = max(float(np.abs(k).max()), 1e-300)
    if float(np.abs(k - k.T).max()) > 1e-8 * scale:
        raise TangentError(f"{name} is not symmetric (max |K-Kᵀ| = {np.abs(k - k.T).max():.3g})")
    return (k + k.T) / 2.0


def check_sigma(sigma: float, name: str = "sigma") -> float:
    """A ridge σ must be a positive finite number."""
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma <= 0:
        raise TangentError(f"{name} must be > 0, got {sigma}")
    return sigma
