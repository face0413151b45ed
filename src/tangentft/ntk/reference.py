"""The correctness oracle: the eNTK from per-example autograd Jacobians, J J'ᵀ in float64.

Each example runs alone (no padding, no hooks, no contraction tricks); for every output k the gradient
w.r.t. each selected parameter tensor is taken with ``torch.autograd.grad`` and cut to the block with
:meth:`ParamBlock.index`. Slow and simple on purpose: the engine is tested against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.types import Example, data_fingerprint
from ..models.fingerprint import state_fingerprint
from ..models.selection import ParamSelection
from .kernel import Kernel, sample_ids


def reference_jacobians(task_model, selection: ParamSelection, examples: Sequence[Example]) -> dict[str, np.ndarray]:
    """Per-group Jacobians J_g: float64 (n·K, P_g), row i·K + k, from one autograd call per (example, k)."""
    named = dict(task_model.named_parameters(remove_duplicate=False))
    params = selection.parameters(task_model)
    pos = {id(p): j for j, p in enumerate(params)}
    flags = [(p, p.requires_grad) for p in task_model.parameters()]
    was_training = task_model.training
    rows: dict[str, list[np.ndarray]] = {g: [] for g in selection.groups}
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        task_model.eval()
        for ex in examples:
            out = task_model(**task_model.encode([ex]))[0]
            for k in range(out.shape[0]):
                grads = torch.autograd.grad(out[k], params, retain_graph=k < out.shape[0] - 1, allow_unused=True)
                per_group: dict[str, list[torch.Tensor]] = {g: [] for g in selection.groups}
                for b in selection.blocks:
                    p = named[b.name]
                    g = grads[pos[id(p)]]
                    g = torch.zeros_like(p) if g is None else g
                    per_group[b.group].append(b.index(g).reshape(-1).double())
                for grp, parts in per_group.items():
                    rows[grp].append(torch.cat(parts).cpu().numpy())
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        task_model.train(was_training)
    return {g: np.stack(r) for g, r in rows.items()}


def reference_ntk(task_model, selection: ParamSelection, x: Sequence[Example], x2: Sequence[Example] | None = None,
                  *, kind: str = "full", signgd: bool = False) -> Kernel:
    """K(X, X') = Σ_g J_g(X) J_g(X')ᵀ from per-example autograd (the oracle for :func:`empirical_ntk`);
    with ``signgd`` the SignGD kernel Σ_g J_g(X) sign(J_g(X'))ᵀ."""
    j1 = reference_jacobians(task_model, selection, x)
    j2 = j1 if x2 is None else reference_jacobians(task_model, selection, x2)
    blocks = {g: j1[g] @ (np.sign(j2[g]) if signgd else j2[g]).T for g in j1}
    x2 = x if x2 is None else x2
    k = Kernel(np.sum(list(blocks.values()), axis=0), blocks, task_model.num_outputs, "full", sample_ids(x),
               sample_ids(x2), selection.to_json(), state_fingerprint(task_model, getattr(task_model, "model_name", "")), data_fingerprint(list(x)),
               data_fingerprint(list(x2)), signgd=signgd)
    return k.traced() if kind == "traced" else k
