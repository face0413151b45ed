"""One pass of the kernel engine: per-example gradient features of a batch, by hooks or by torch.func.

Hooked path (linear weights and biases, norm weights and biases): ONE batched forward in eval mode and K
batched backward passes of Σ_i f_k(x_i) (examples are independent, so one backward yields every example's
output-gradient). Forward hooks on the modules that own selected blocks capture each token's input a (for
norms, the normalized input x̂) and keep the module output y; ``torch.autograd.grad`` w.r.t. those outputs
gives the output-gradients b. All parameters are frozen during the pass and the lowest hooked output is
turned into a leaf, so autograd records nothing below the lowest selected module and backward stops there.

Generic path (any other parameter, or a plain function): per-example Jacobians from
``torch.func.vmap(jacrev(...))`` (the "Jacobian contraction" route of the PyTorch NTK tutorial), materialized.

Features are kept in the *product dtype* (:func:`product_dtype`: float32 for float32/bf16/fp16 models,
float64 for float64 ones); every sum over blocks, panels, tokens, outputs and chunks is float64
(:mod:`tangentft.ntk.contraction`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import TangentError
from ..models.selection import ParamBlock
from .contraction import GramFactors, Materialized, materialize


def product_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernel products run in: the model's, raised to at least float32 (bf16 GEMMs lose digits)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Site:
    """A module owning selected blocks, with what its hook captured in the current forward."""

    path: str
    module: nn.Module
    kind: str  # linear | norm
    blocks: list[ParamBlock]
    a: torch.Tensor | None = None
    y: torch.Tensor | None = None
    checked: bool = False


def normalized_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x̂ such that a norm layer computes y = w ⊙ x̂ (+ b): the per-token factor of ∂y/∂w."""
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if eps is None:
        raise TangentError(f"norm layer {type(module).__name__} is not supported by the eNTK engine")
    xf = x.float()
    # Mirrors LlamaRMSNorm: normalize in fp32, cast back, then scale.
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@contextlib.contextmanager
def capturing(module: nn.Module, sites: list[Site]):
    """Freeze every parameter, switch to eval mode and hook the sites; restore everything on exit."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    was_training = module.training
    handles = []

    def hook_for(site: Site):
        def hook(mod, inputs, output):
            if site.y is not None:
                raise TangentError(f"module {site.path} runs twice per forward; the eNTK engine needs one call")
            x = inputs[0].detach()
            site.a = normalized_input(mod, x) if site.kind == "norm" else x
            if not output.requires_grad:
                # The lowest selected module: start the autograd graph here, nothing below is recorded.
                output = output.detach().requires_grad_(True)
            site.y = output
            return output

        return hook

    try:
        for p, _ in flags:
            p.requires_grad_(False)
        module.eval()
        handles = [s.module.register_forward_hook(hook_for(s)) for s in sites]
        yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(was_training)
        for s in sites:
            s.a = s.y = None


def as_outputs(out: torch.Tensor) -> torch.Tensor:
    """The (B, K) view of a model output: (B,) is one output per example."""
    if out.dim() == 1:
        return out.unsqueeze(1)
    if out.dim() != 2:
        raise TangentError(f"the model must return (batch, outputs) or (batch,), got shape {tuple(out.shape)}")
    return out


def capture(sites: list[Site], forward: Callable[[], torch.Tensor], mask: torch.Tensor | None, device: torch.device):
    """One forward and K backward passes; returns per-site factors (a (B,T,d_in), b (B,K,T,d_out)) on
    ``device`` in the product dtype, zeroed on the tokens ``mask`` marks as padding. Runs inside
    :func:`capturing`; every dimension between the batch and the feature axis counts as a token."""
    for s in sites:
        s.a = s.y = None
    out = as_outputs(forward())
    if not out.requires_grad:
        raise TangentError("the outputs do not depend on the selected parameters")
    ys = [s.y for s in sites]
    if any(y is None for y in ys):
        missing = next(s.path for s in sites if s.y is None)
        raise TangentError(f"selected module {missing} is not used by the forward")
    B, K = out.shape
    grads: list[list[torch.Tensor]] = [[] for _ in sites]
    for k in range(K):
        gk = torch.autograd.grad(out[:, k].sum(), ys, retain_graph=k < K - 1, allow_unused=True)
        for j, (g, y) in enumerate(zip(gk, ys, strict=True)):
            grads[j].append(torch.zeros_like(y) if g is None else g)
    dtype = product_dtype(out.dtype)
    captured = []
    for s, gs in zip(sites, grads, strict=True):
        if not s.checked and s.kind == "norm":
            check_norm(s)
        if s.a.shape[0] != B:
            raise TangentError(f"module {s.path} does not see the batch on its first axis; the eNTK engine cannot hook it")
        a = s.a.to(device, dtype).reshape(B, -1, s.a.shape[-1])  # (B, T, d_in); T = 1 for (B, d_in) inputs
        b = torch.stack(gs, dim=1).to(device, dtype).reshape(B, K, -1, s.y.shape[-1])
        if mask is not None and a.shape[1] > 1:
            if a.shape[1] != mask.shape[1]:
                raise TangentError(f"module {s.path} does not act per token; the eNTK engine cannot hook it")
            m = mask.to(device, dtype)
            a, b = a * m.unsqueeze(-1), b * m[:, None, :, None]
        captured.append((a, b))
        s.a = s.y = None
    return captured


def check_norm(s: Site) -> None:
    """Refuse a norm layer that does not compute y = w ⊙ x̂ + b (the kernel would silently be wrong)."""
    w = getattr(s.module, "weight", None)
    bias = getattr(s.module, "bias", None)
    pred = s.a * w if w is not None else s.a
    if bias is not None:
        pred = pred + bias
    # bf16/fp16 round the fused and the unfused form differently; compare at the dtype's resolution.
    tol = 1e-4 if s.y.dtype in (torch.float32, torch.float64) else 3e-2
    if not torch.allclose(pred.float(), s.y.detach().float(), rtol=tol, atol=tol / 10):
        raise TangentError(f"norm layer {s.path} ({type(s.module).__name__}) is not w ⊙ x̂ + b; unsupported")
    s.checked = True


def block_features(b: ParamBlock, how: str, a: torch.Tensor, g: torch.Tensor):
    """The features of one block from its site's captured (a, b): sliced exactly to out_idx/in_idx."""
    if b.out_idx is not None:
        g = g.index_select(-1, torch.tensor(b.out_idx, device=g.device))
    if b.part == "bias":
        return Materialized(g.sum(dim=2))
    if b.module_kind == "norm":
        if b.out_idx is not None:
            a = a.index_select(-1, torch.tensor(b.out_idx, device=a.device))
        return Materialized((g * a.unsqueeze(1)).sum(dim=2))
    if b.in_idx is not None:
        a = a.index_select(-1, torch.tensor(b.in_idx, device=a.device))
    return GramFactors(a, g) if how == "gram" else materialize(a, g)


def site_features(sites: list[Site], how: Callable[[ParamBlock], str], captured) -> list:
    """Every block's features from one :func:`capture`, in site order then block order."""
    feats = []
    for s, (a, g) in zip(sites, captured, strict=True):
        feats += [block_features(b, how(b), a, g) for b in s.blocks]
    return feats


def jacobian_features(call: Callable, params: dict[str, torch.Tensor], x, device: torch.device) -> list[Materialized]:
    """Per-example gradients of ``call(params, x) -> (B, K)`` w.r.t. each tensor of ``params``, one
    :class:`Materialized` per entry: ``vmap(jacrev)`` over the batch, each example run as a batch of one."""
    from torch.func import jacrev, vmap

    def one(p, xi):
        xb = {k: v.unsqueeze(0) for k, v in xi.items()} if isinstance(xi, dict) else xi.unsqueeze(0)
        return as_outputs(call(p, xb))[0]

    detached = {k: v.detach() for k, v in params.items()}
    jac = vmap(jacrev(one), in_dims=(None, 0))(detached, x)
    out = []
    for name in params:
        j = jac[name].detach()  # (B, K, *shape)
        out.append(Materialized(j.reshape(j.shape[0], j.shape[1], -1).to(device, product_dtype(j.dtype))))
    return out
