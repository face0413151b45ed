"""Function-space dynamics of the linearized model under a run's own settings: the predicted learning curve.

For the linearized model f̄ = f0 + J(θ − θ0) a parameter step Δθ moves every output by J Δθ, so a run can be
replayed on the outputs alone (linearization paper, eq. 2–3; Malladi et al., A Kernel-Based View of Language
Model Fine-Tuning, §4):

* SGD: Δθ = −η_t J_Bᵀ χ_B / |B| gives f_{t+1}(X) = f_t(X) − η_t K(X, X_B) χ_B / |B| with the eNTK K and
  χ = ∂ℓ/∂f (cross-entropy: softmax(f) − onehot; squared error averaged over the K outputs: 2(f − y)/K).
  This is exact: it reproduces the linearized trainer step for step.
* Adam/AdamW: its steps are sign-like (Malladi et al., §4.2, Definition 4.4), so a step moves f through the
  SignGD kernel K_A(x, x') = ⟨∇f(x), sign ∇f(x')⟩. The batch direction Σ_j χ_j sign(∇f(x_j)) replaces
  sign(Σ_j χ_j ∇f(x_j)) (the per-example signs the kernel is built from); Adam's first moment is linear in
  the step direction and is tracked exactly in function space; its second moment is tracked as one scalar,
  the EMA of ‖χ_B/|B|‖², which makes the first step a unit-size sign step per coordinate (when the examples'
  sign patterns are uncorrelated) and lets later steps shrink as the loss gradient does. This is an
  approximation of Adam, stated as such.
* The pull toward θ0 ((λ/2)‖θ − θ0‖², decoupled, before each step) shrinks f − f0 by (1 − η_t λ); weight decay
  (toward 0, as both AdamW and SGD apply it to θ, not θ − θ0) moves f by −η_t·wd·(f − f0 + J θ0), where J θ0
  (``j_theta0``, one JVP along θ0) is zero for LoRA at init (B = 0 so J_A = 0, and θ0_B = 0). The selective pull (linearization paper, eq. 8) is applied when
  χ_B · (f − f0)(X_B) ≥ 0, the function-space form of ∇R·(θ − θ0) ≥ 0 over the whole selection (the trainer
  decides per tensor).

Costs O(steps · |B|·K · (n + m)·K): seconds for n, m in the thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..data.scoring import task_metric
from ..errors import TangentError
from ..ntk.sketch import LowRank

LOSSES = ("ce", "mse")
OPTIMIZERS = ("sgd", "adamw")
PULLS = ("none", "l2", "selective")
ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which the trainer uses


@dataclass
class StepPlan:
    """What a run does at each optimizer step: the learning rate and the example indices of its batch
    (micro-batches of one step concatenated), plus the steps at which it evaluates (0 = before training)."""

    lrs: list[float]
    batches: list[list[int]]
    eval_steps: list[int]

    def __post_init__(self):
        if len(self.lrs) != len(self.batches):
            raise TangentError(f"step plan: {len(self.lrs)} learning rates for {len(self.batches)} batches")
        if not self.batches:
            raise TangentError("step plan: a run needs at least one step")


@dataclass
class Curve:
    """A predicted learning curve on the run's eval steps (the rows of its metrics.jsonl)."""

    steps: list[int]
    train_loss: list[float | None]
    eval_loss: list[float]
    eval_metric: list[float]
    metric_name: str
    best_step: int
    best_metric: float
    output_shift: list[float] = field(default_factory=list)  # ‖f_t(X) − f0(X)‖ on the training sample

    def to_json(self) -> dict:
        """Plain-JSON dict of the curve."""
        return asdict(self)

    def with_eval(self, eval_loss: list[float], eval_metric: list[float]) -> Curve:
        """The same curve with other eval values on its steps, its best step and metric re-read from them."""
        vals = np.asarray(eval_metric, dtype=np.float64)
        best = int(np.nanargmax(vals)) if np.isfinite(vals).any() else 0
        return replace(self, eval_loss=list(eval_loss), eval_metric=list(eval_metric), best_step=self.steps[best],
                       best_metric=float(vals[best]))


def loss_and_grad(f: np.ndarray, y: np.ndarray, labels: np.ndarray | None, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-example loss ℓ_i and χ_i = ∂ℓ_i/∂f_i for outputs ``f`` (n, K), as the trainer defines them:
    cross-entropy over the K outputs, or the squared error averaged over the K outputs."""
    if loss == "ce":
        z = f - f.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        idx = np.arange(len(f))
        g = np.exp(logp)
        g[idx, labels] -= 1.0
        return -logp[idx, labels], g
    r = f - y
    return (r**2).mean(axis=1), 2.0 * r / f.shape[1]


def metric(f: np.ndarray, y: np.ndarray, labels: np.ndarray | None, kind: str) -> tuple[str, float]:
    """(name, value) of the task metric (:func:`tangentft.data.scoring.task_metric`, as the trainer reports it)
    of outputs ``f`` against class ``labels`` (classification) or the scores ``y[:, 0]`` (regression)."""
    return task_metric(f, np.asarray(y)[:, 0] if kind == "regression" else labels, kind)


def _apply(k, rows: int, num_out: int, cols: np.ndarray, chi: np.ndarray) -> np.ndarray:
    """K(X, X_B)·χ_B for a full-layout kernel (rows·K, n·K) — dense, or a :class:`LowRank` Nyström sketch —
    and χ_B (|B|, K); returns (rows, K)."""
    idx = (cols[:, None] * num_out + np.arange(num_out)).ravel()
    block = k.columns(idx) if isinstance(k, LowRank) else k[:, idx]
    return (block @ chi.ravel()).reshape(rows, num_out)


def simulate(
    k_train: np.ndarray,
    k_eval: np.ndarray,
    f0: np.ndarray,
    f0_eval: np.ndarray,
    y: np.ndarray,
    y_eval: np.ndarray,
    plan: StepPlan,
    *,
    loss: str,
    optimizer: str,
    task_kind: str,
    weight_decay: float = 0.0,
    pull: str = "none",
    lam: float = 0.0,
    betas: Sequence[float] = ADAM_BETAS,
    j_theta0: tuple[np.ndarray, np.ndarray] | None = None,
) -> Curve:
    """Replay a run on the linearized model's outputs (see the module docstring for the update rules).

    ``k_train`` (n·K, n·K) and ``k_eval`` (m·K, n·K) are full-layout kernels with training examples as columns
    (dense, or :class:`tangentft.ntk.sketch.LowRank` Nyström sketches for large n):
    the eNTK for SGD, the SignGD kernel ⟨∇f(row), sign ∇f(column)⟩ for AdamW. ``y``/``y_eval`` are the targets
    (one-hot or scores), ``f0``/``f0_eval`` the outputs at θ0, ``j_theta0`` the pair (J θ0 on the train, on
    the eval examples) that weight decay needs (taken as zero when omitted). Returns the curve on ``plan.eval_steps``.
    """
    if loss not in LOSSES:
        raise TangentError(f"unknown loss '{loss}': choose from {', '.join(LOSSES)}")
    if optimizer not in OPTIMIZERS:
        raise TangentError(f"unknown optimizer '{optimizer}': choose from {', '.join(OPTIMIZERS)}")
    if pull not in PULLS:
        raise TangentError(f"unknown pull '{pull}': choose from {', '.join(PULLS)}")
    if loss == "ce" and task_kind == "regression":
        raise TangentError("cross-entropy needs a classification task; use mse for regression")
    f0 = np.asarray(f0, dtype=np.float64)
    f0_eval = np.asarray(f0_eval, dtype=np.float64)
    y, y_eval = np.asarray(y, dtype=np.float64), np.asarray(y_eval, dtype=np.float64)
    n, K = f0.shape
    m = f0_eval.shape[0]
    if k_train.shape != (n * K, n * K):
        raise TangentError(f"train kernel has shape {k_train.shape}; expected ({n * K}, {n * K}) (full layout)")
    if k_eval.shape != (m * K, n * K):
        raise TangentError(f"eval kernel has shape {k_eval.shape}; expected ({m * K}, {n * K}) (full layout)")
    labels = y.argmax(axis=1) if task_kind == "classification" else None
    labels_eval = y_eval.argmax(axis=1) if task_kind == "classification" else None
    f, fe = f0.copy(), f0_eval.copy()
    b1, b2 = betas
    mom, mom_e, v = np.zeros_like(f), np.zeros_like(fe), 0.0
    evals = set(plan.eval_steps)
    out: dict[str, list] = {"steps": [], "train_loss": [], "eval_loss": [], "eval_metric": [], "output_shift": []}
    name = "accuracy" if task_kind == "classification" else "pearson"
    loss_sum, loss_n = 0.0, 0

    def record(step: int) -> None:
        nonlocal loss_sum, loss_n, name
        ell, _ = loss_and_grad(fe, y_eval, labels_eval, loss)
        name, value = metric(fe, y_eval, labels_eval, task_kind)
        out["steps"].append(step)
        out["train_loss"].append(loss_sum / loss_n if loss_n else None)
        out["eval_loss"].append(float(ell.mean()) if m else float("nan"))
        out["eval_metric"].append(value)
        out["output_shift"].append(float(np.linalg.norm(f - f0)))
        loss_sum, loss_n = 0.0, 0

    record(0)
    for t, (lr, batch) in enumerate(zip(plan.lrs, plan.batches, strict=True), start=1):
        b = np.asarray(batch, dtype=np.int64)
        ell, chi = loss_and_grad(f[b], y[b], None if labels is None else labels[b], loss)
        chi = chi / len(b)
        loss_sum += float(ell.sum()) / len(b)
        loss_n += 1
        if pull == "l2" or (pull == "selective" and lam and float((chi * (f[b] - f0[b])).sum()) >= 0):
            f, fe = f0 + (1 - lr * lam) * (f - f0), f0_eval + (1 - lr * lam) * (fe - f0_eval)
        if weight_decay:
            f = f - lr * weight_decay * (f - f0 + (0.0 if j_theta0 is None else j_theta0[0]))
            fe = fe - lr * weight_decay * (fe - f0_eval + (0.0 if j_theta0 is None else j_theta0[1]))
        d, de = _apply(k_train, n, K, b, chi), _apply(k_eval, m, K, b, chi)
        if optimizer == "sgd":
            f, fe = f - lr * d, fe - lr * de
        else:
            mom, mom_e = b1 * mom + (1 - b1) * d, b1 * mom_e + (1 - b1) * de
            v = b2 * v + (1 - b2) * float((chi**2).sum())
            scale = lr / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + 1e-12)
            f, fe = f - scale * mom, fe - scale * mom_e
        if t in evals:
            record(t)
    return _finish(out, name)


def _finish(out: dict, name: str) -> Curve:
    curve = Curve(out["steps"], out["train_loss"], [], [], name, out["steps"][0], float("nan"), out["output_shift"])
    return curve.with_eval(out["eval_loss"], out["eval_metric"])
