"""Baselines every prediction is shown beside: zero-shot, majority class, and a linear probe (head kernel).

A prediction of the fine-tuned metric is only worth acting on where it beats these (issue: a constant guess
beat the old ridge prediction). The linear probe is the same dynamics run with the kernel of a linear head on
the frozen features φ(x) the model's output reads (the encoder's pooled state, the causal LM's last-position
state), i.e. kernel regression on frozen features.
"""

from __future__ import annotations

import numpy as np

from .dynamics import metric


def majority_metric(y_train: np.ndarray, y_eval: np.ndarray, kind: str) -> tuple[str, float]:
    """Metric of always predicting the training sample's majority class (NaN for regression: a constant has
    no correlation with the scores)."""
    if kind == "regression":
        return "pearson", float("nan")
    counts = np.bincount(y_train.argmax(axis=1), minlength=y_train.shape[1])
    return "accuracy", float((y_eval.argmax(axis=1) == int(counts.argmax())).mean())


def zero_shot_metric(f0_eval: np.ndarray, y_eval: np.ndarray, kind: str) -> tuple[str, float]:
    """Metric of the model at θ0 (for an encoder with a seeded random head it is meaningless)."""
    labels = y_eval.argmax(axis=1) if kind == "classification" else None
    return metric(f0_eval, y_eval, labels, kind)


def probe_kernel(phi_rows: np.ndarray, phi_cols: np.ndarray, num_out: int, *, bias: bool, signgd: bool,
                 dz_rows: np.ndarray | None = None, dz_cols: np.ndarray | None = None) -> np.ndarray:
    """Full-layout (n·K, n'·K) kernel of a linear head z = Wφ (+ b) on frozen features φ.

    Classification (f = z): K[(i,k),(j,l)] = δ_kl (φ_i·φ_j + bias). For a causal LM's regression output
    f = softmax(z)·v, pass ``dz`` = ∂f/∂z (n, C): K[(i,0),(j,0)] = Σ_c dz_ic dz_jc φ_i·φ_j. ``signgd`` puts the
    sign on the column side's gradient, as the SignGD kernel does (Malladi et al. 2023, §4.2).
    """
    phi_rows, phi_cols = np.asarray(phi_rows, np.float64), np.asarray(phi_cols, np.float64)
    if dz_rows is None:
        cols = np.sign(phi_cols) if signgd else phi_cols
        g = phi_rows @ cols.T + (1.0 if bias else 0.0)
        return np.kron(g, np.eye(num_out))
    if signgd:
        # ∇_W f = dz ⊗ φ: its sign is sign(dz_c)·sign(φ_d) per entry.
        return (dz_rows @ np.sign(dz_cols).T) * (phi_rows @ np.sign(phi_cols).T)
    return (dz_rows @ dz_cols.T) * (phi_rows @ phi_cols.T)


def features(task_model, examples, batch_size: int = 32) -> np.ndarray:
    """φ(x) of each example: the frozen representation the task model's output reads (float64, (n, d)), in eval
    mode (dropout off, as f is defined everywhere else)."""
    return task_model.predict_and_features(examples, batch_size)[1].numpy()


def _score_grad(task_model, phi: np.ndarray) -> np.ndarray:
    """∂f/∂z of a causal LM's regression output f = softmax(z)·v at z = Wφ: p_c (v_c − f)."""
    w, b = task_model.label_head()
    z = phi @ w.detach().double().cpu().numpy().T + (0.0 if b is None else b.detach().double().cpu().numpy())
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    v = task_model.label_values.double().cpu().numpy()
    return p * (v[None, :] - (p @ v)[:, None])


def probe_kernels(task_model, x, x_eval, *, signgd: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval×train) full-layout kernels of a linear probe on ``task_model``'s frozen features."""
    return probe_kernels_of(task_model, features(task_model, x), features(task_model, x_eval), signgd=signgd)


def probe_kernels_of(task_model, phi: np.ndarray, phi_e: np.ndarray, *, signgd: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`probe_kernels` from features already taken (``phi``, ``phi_e``: (n, d) and (n', d) float64)."""
    dz = dz_e = None
    if task_model.head is None and task_model.spec.kind == "regression":
        dz, dz_e = _score_grad(task_model, phi), _score_grad(task_model, phi_e)
    bias = task_model.head is not None
    K = task_model.num_outputs
    kt = probe_kernel(phi, phi, K, bias=bias, signgd=signgd, dz_rows=dz, dz_cols=dz)
    kc = probe_kernel(phi_e, phi, K, bias=bias, signgd=signgd, dz_rows=dz_e, dz_cols=dz)
    return kt, kc
