"""Report figures (matplotlib, Agg backend), each written atomically as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def spectrum_figure(eigenvalues, beta: float | None, window: tuple[int, int] | None, path) -> Path:
    """Eigenvalues λk against k on log–log axes, with the fitted power law λ1·k^(−2β) over its window."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    k = np.arange(1, lam.size + 1)
    pos = lam > 0
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(k[pos], lam[pos], "o", ms=3, label="eigenvalues of K")
    if beta is not None and window is not None and lam[0] > 0:
        kw = np.arange(window[0], window[1] + 1)
        ax.loglog(kw, lam[0] * kw ** (-2.0 * beta), "-", lw=1.5, label=f"fit λ1·k^(−2β), β = {beta:.3g}")
    ax.set_xlabel("index k")
    ax.set_ylabel("λk")
    ax.set_title("eNTK spectrum")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def candidate_figure(names: list[str], ratios: list[float], path) -> Path:
    """Bars of r_C = λmax(K+S_g+σI)/λmax(K+σI) per candidate group, best first (linearization paper, Fig. 3)."""
    order = np.argsort(ratios)[::-1]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 4))
    ax.bar([names[i] for i in order], [ratios[i] for i in order], color="tab:blue")
    ax.axhline(1.0, color="k", lw=0.8)
    lo = min(ratios)
    ax.set_ylim(min(1.0, lo) - 0.02 * (max(ratios) - 1 + 1e-9), max(ratios) * 1.02 if max(ratios) > 1 else 1.05)
    ax.set_ylabel("r_C")
    ax.set_title("candidate groups (higher is better)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return _save(fig, path)


def heatmap_figure(matrix, path, title: str = "eNTK K(X, X)") -> Path:
    """The kernel matrix as a heatmap (rows/columns in example-major order)."""
    m = np.asarray(matrix, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 4.3))
    lim = float(np.abs(m).max()) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    ax.set_xlabel("column (example·K + output)")
    ax.set_ylabel("row")
    return _save(fig, path)


def bounds_figure(steps, param_distance, linearization_gap, path, t_hat: int | None = None, radius: float | None = None) -> Path:
    """Bound curves over training steps: ‖θt − θ0‖ and ‖f − f̄‖ (linearization paper, Theorems 2–4)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, ys, label in ((axes[0], param_distance, "‖θt − θ0‖ bound"), (axes[1], linearization_gap, "‖f − f̄‖ bound")):
        ax.plot(steps, ys, "-", lw=1.5)
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
        if t_hat:
            ax.axvline(t_hat, color="tab:red", ls="--", lw=1, label=f"T̂ = {t_hat}")
            ax.legend()
    if radius:
        axes[0].axhline(radius, color="gray", ls=":", lw=1, label=f"r = {radius:.3g} (Lipschitz ball)")
        axes[0].legend()
    return _save(fig, path)
