"""``entk(model, params, x1, x2)``: the empirical NTK of any PyTorch module or function, no TaskModel needed.

In the spirit of neural-tangents' ``empirical_ntk_fn`` (Novak et al. 2022), on the same core as the
TaskModel engine (:mod:`tangentft.ntk.core`): parameters of ``nn.Linear`` and norm layers that see the batch
on their first axis are hooked (one batched forward + K backward per chunk, Gram or materialized
contraction); any other parameter — or every parameter of a plain function — gets per-example Jacobians from
``torch.func`` (``vmap(jacrev)``), materialized.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TangentError
from ..models.selection import ParamBlock
from .capture import Site, as_outputs, capture, capturing, jacobian_features, site_features
from .contraction import BlockShape, choose, feature_bytes, parse_memory
from .core import Chunk, Plan, execute, make_chunks, make_tiles
from .kernel import spectrum_check

MAX_CHUNK = 64


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or (type(m).__name__.endswith("RMSNorm")
                                                          and hasattr(m, "variance_epsilon"))


def _batch(x, idx) -> Any:
    if isinstance(x, Mapping):
        return {k: v[idx] for k, v in x.items()}
    return x[idx]


def _size(x, what: str) -> int:
    tensors = list(x.values()) if isinstance(x, Mapping) else [x]
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        raise TangentError(f"{what} must be a tensor or a dict of tensors with the examples on axis 0")
    n = tensors[0].shape[0]
    if n == 0 or any(t.shape[0] != n for t in tensors):
        raise TangentError(f"{what} needs at least one example and the same number on axis 0 of every tensor")
    return n


def _forward(model: nn.Module, x) -> torch.Tensor:
    return model(**x) if isinstance(x, Mapping) else model(x)


def _owners(model: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, nn.Module, str]]:
    """name → (module path, module, 'weight'|'bias') for parameters a linear or norm hook can handle."""
    where = {id(p): (path, mod, part) for path, mod in model.named_modules()
             for part, p in mod.named_parameters(recurse=False)}
    owners = {}
    for name, p in params.items():
        path, mod, part = where.get(id(p), (None, None, None))
        if path is None:
            raise TangentError(f"params['{name}'] is not a parameter of the model")
        if part in ("weight", "bias") and (type(mod) is nn.Linear or _is_norm(mod)):
            owners[name] = (path, mod, part)
    return owners


def _probe(model: nn.Module, owners: dict, x) -> dict[str, int]:
    """Module path → tokens per example, for the candidate modules that run once per forward on the batch."""
    seen: dict[str, list] = {}
    mods = {path: mod for path, mod, _ in owners.values()}

    def hook_for(path):
        def hook(mod, inputs, output):
            seen.setdefault(path, []).append((inputs[0].shape if inputs and torch.is_tensor(inputs[0]) else None,
                                              output.shape if torch.is_tensor(output) else None))
        return hook

    handles = [m.register_forward_hook(hook_for(p)) for p, m in mods.items()]
    try:
        with torch.no_grad():
            B = as_outputs(_forward(model, x)).shape[0]
    finally:
        for h in handles:
            h.remove()
    ok = {}
    for path, calls in seen.items():
        (a, y), = calls if len(calls) == 1 else [(None, None)]
        if a is not None and y is not None and a[0] == B and y[0] == B and len(a) >= 2 and a[:-1] == y[:-1]:
            ok[path] = int(np.prod(a[1:-1])) if len(a) > 2 else 1
    return ok


@contextlib.contextmanager
def _evaluating(model):
    was = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield
    finally:
        if isinstance(model, nn.Module):
            model.train(was)


def entk(model: nn.Module | Callable, params: Mapping[str, torch.Tensor], x1, x2=None, *, signgd: bool = False,
         max_memory: str | int = "1GB") -> torch.Tensor:
    """The empirical NTK Θ(x1, x2)[i, j, k, l] = ⟨∂f_k(x1_i)/∂θ, ∂f_l(x2_j)/∂θ⟩ over the parameters in
    ``params`` (NTK: Jacot et al. 2018; its finite-width empirical form as Novak et al. 2022 define it), as a
    float64 CPU tensor of shape (n1, n2, out, out).

    ``model``: an ``nn.Module`` called as ``model(x)`` (or ``model(**x)`` for a dict batch) returning
    (batch, out) or (batch,); or a function ``model(params, x)``. ``params``: name → tensor to differentiate
    (for a module, its own parameters, e.g. ``dict(net.named_parameters())``; others stay fixed).
    ``x1``, ``x2``: batches (tensor or dict of tensors, examples on axis 0); ``x2=None`` means ``x2 = x1``.

    ``signgd=True``: the SignGD kernel ⟨∂f_k(x1_i)/∂θ, sign ∂f_l(x2_j)/∂θ⟩ that describes Adam/SignGD
    fine-tuning (Malladi et al. 2023, §4.2); not symmetric.

    ``max_memory`` (e.g. ``"1GB"``) is the one knob for the expensive choice: how many examples a pass
    batches, how many features are held at once, and, per linear weight, whether the kernel is contracted
    from per-token factors (Gram form: never builds a d_out×d_in gradient per example) or from materialized
    per-example gradients (cheaper over few tokens); the result is the same up to rounding.

    The model runs in eval mode; GEMMs run in float32 (float64 for a float64 model), every sum in float64
    (:mod:`tangentft.ntk.contraction`). A symmetric eNTK (``x2=None``) is checked: a warning says when it is
    not PSD or is ill-conditioned.
    """
    if not params:
        raise TangentError("params is empty: pass a dict name → parameter to differentiate")
    budget = parse_memory(max_memory)
    n1 = _size(x1, "x1")
    n2 = n1 if x2 is None else _size(x2, "x2")
    probe_x = _batch(x1, slice(0, min(n1, 2)))
    with _evaluating(model):
        if isinstance(model, nn.Module):
            owners = _owners(model, params)
            tokens = _probe(model, owners, probe_x)
            out_dim = as_outputs(_forward(model, probe_x)).shape[1]
        else:
            owners, tokens = {}, {}
            out_dim = as_outputs(model(dict(params), probe_x)).shape[1]
        hooked = {n: o for n, o in owners.items() if o[0] in tokens}
        generic = {n: p for n, p in params.items() if n not in hooked}
        return _run(model, params, hooked, generic, tokens, x1, x2, n1, n2, out_dim, signgd, budget)


def _run(model, params, hooked, generic, tokens, x1, x2, n1, n2, K, signgd, budget) -> torch.Tensor:
    sites: dict[str, Site] = {}
    how: dict[str, str] = {}
    per_example = 0.0
    n_total = n1 + (0 if x2 is None else n2)
    for name, (path, mod, part) in hooked.items():
        norm = _is_norm(mod)
        if path not in sites:
            sites[path] = Site(path, mod, "norm" if norm else "linear", [])
        sites[path].blocks.append(ParamBlock(name, path, part, "norm" if norm else "linear", name))
        p = params[name]
        shape = BlockShape(p.shape[1], p.shape[0], not norm) if p.dim() == 2 else BlockShape(1, p.numel(), False)
        how[name] = choose(shape, n_held=n1, n_total=n_total, tokens=tokens[path], K=K, traced=False, budget=budget,
                           forced="materialize" if signgd else "auto")
        per_example += feature_bytes(shape, how[name], tokens[path], K)
    per_example += sum(4.0 * K * p.numel() for p in generic.values())
    site_list = list(sites.values())
    order = [b.name for s in site_list for b in s.blocks] + list(generic)
    chunk = int(min(MAX_CHUNK, max(1, budget // (4 * per_example))))
    # SignGD with x2: the sign sits on the held side, so x2 is held and x1 streams past it.
    held, streamed = (x1, x2) if x2 is None or not signgd else (x2, x1)
    n_held, n_streamed = (n1, 0) if x2 is None else ((n1, n2) if not signgd else (n2, n1))
    held_chunks = make_chunks([1] * n_held, chunk_size=chunk, token_budget=n_held + 1)
    stream_chunks = make_chunks([1] * n_streamed, chunk_size=chunk, token_budget=n_streamed + 1)
    plan = Plan(["θ"] * len(order), [how.get(n, "materialize") for n in order], K, n_held, n_streamed, held_chunks,
                stream_chunks, make_tiles(held_chunks, per_example, budget), x2 is None, False, signgd)
    device = next(iter(params.values())).device
    device = torch.device("cpu") if device.type == "mps" else device
    call = (lambda p, x: torch.func.functional_call(model, p, (x,), strict=False) if not isinstance(x, Mapping)
            else torch.func.functional_call(model, p, (), x)) if isinstance(model, nn.Module) else model

    def features(side: str, ch: Chunk) -> list:
        xb = _batch(held if side == "held" else streamed, torch.as_tensor(ch.idx))
        feats = []
        if site_list:
            with capturing(model, site_list):
                captured = capture(site_list, lambda: _forward(model, xb), None, device)
            feats += site_features(site_list, lambda b: how[b.name], captured)
        if generic:
            feats += jacobian_features(call, dict(generic), xb, device)
        return feats

    sym, cross, _ = execute(plan, features, device)
    m = (sym if x2 is None else cross)["θ"]
    if x2 is not None and signgd:
        m = m.T
    if x2 is None and not signgd:
        spectrum_check(m)
    rows, cols = m.shape[0] // K, m.shape[1] // K
    return torch.from_numpy(np.ascontiguousarray(m)).reshape(rows, K, cols, K).permute(0, 2, 1, 3).contiguous()
