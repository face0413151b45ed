"""Which coupled structures S2FT trains: attention KV groups and FFN channels, scored and ranked per layer.

Coupled structures (S2FT paper §3.1), read from the :class:`StructureMap`:

* ``attention`` — one unit per key/value head. With grouped-query attention a KV head is shared by
  ``queries_per_kv`` query heads, so a unit is the whole group: the q rows of its query heads, the k and v
  rows of its KV head, and the o columns of its query heads (``head_dim`` from the config). Moving a whole
  group keeps every query head attached to its own KV head.
* ``ffn`` — one unit per intermediate channel: gate/up rows (BERT ``intermediate``, GPT-2 ``c_fc``) and the
  matching down column (BERT ``output``, GPT-2 ``c_proj``).

Allocation is uniform across layers: every layer trains the same number of units of each module type
(``ratios`` or an equal share of ``budget``). Strategies (S2FT paper §3.2 and App. D), all ranking units
per layer, best first, with ``variant`` picking the largest or the smallest scores:

* R — a seeded random order;
* W — ‖W_u‖, the Frobenius norm of the unit's trained weights;
* A — ‖X_u‖, the norm of the unit's activations (the inputs of o / down on the unit's channels) over a
  calibration set, forward only;
* S — ‖W_u‖·‖X_u‖ (weight × activation);
* G — sqrt(Σ_batches ‖∂L/∂W_u‖²) over the calibration set; each weight's gradient is reduced to per-unit
  norms as soon as backward produces it and then dropped, so full gradients never accumulate.

The result is a JSON-friendly dict stored in :attr:`S2FTConfig.selection` (original numbering).

:func:`slice_selection` turns that dict into a :class:`ParamSelection` of the same entries of the un-permuted
weights, for kernels of exactly the parameters an S2FT run trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...errors import TangentError
from ...models.selection import ParamBlock, ParamSelection
from ...models.structure import StructureMap
from .config import ATTN_TYPES, S2FTConfig

COLUMN_TYPES = ("o", "down")  # the input-side member of each coupled pair


def structure_of(role: str) -> str:
    """``attention`` for q/k/v/o, ``ffn`` for gate/up/down."""
    return "attention" if role in ATTN_TYPES else "ffn"


def num_units(smap: StructureMap, structure: str) -> int:
    """Units per layer: KV heads (attention) or intermediate channels (ffn)."""
    return smap.num_kv_heads if structure == "attention" else smap.intermediate_size


def unit_width(smap: StructureMap, role: str) -> int:
    """Channels one unit owns in ``role``'s selected axis (rows of q/k/v/gate/up, columns of o/down)."""
    if role in ("q", "o"):
        return smap.queries_per_kv * smap.head_dim
    if role in ("k", "v"):
        return smap.head_dim
    return 1


def unit_channels(smap: StructureMap, role: str, units: torch.Tensor) -> torch.Tensor:
    """Channel indices (in the role's own rows, or o/down's columns) of ``units``, unit by unit in order."""
    w = unit_width(smap, role)
    return (units.long().unsqueeze(1) * w + torch.arange(w)).reshape(-1)


def role_weight(hf: nn.Module, smap: StructureMap, layer: int, role: str) -> torch.Tensor:
    """The role's weight as an (out, in) view in nn.Linear orientation (GPT-2 Conv1D transposed, c_attn narrowed)."""
    ref = smap.ref(layer, role)
    w = hf.get_submodule(ref.path).weight
    w = w.t() if ref.transposed else w
    if ref.out_range is not None:
        w = w[ref.out_range[0] : ref.out_range[1]]
    return w


def unit_sq_norms(smap: StructureMap, role: str, w: torch.Tensor) -> torch.Tensor:
    """Per-unit squared Frobenius norms of a role's (out, in) weight (or gradient) along its selected axis."""
    w = w.detach().double()
    per_channel = w.pow(2).sum(0) if role in COLUMN_TYPES else w.pow(2).sum(1)
    return per_channel.reshape(-1, unit_width(smap, role)).sum(1)


def unit_counts(smap: StructureMap, config: S2FTConfig) -> dict[str, int]:
    """Units trained per layer for every module type (uniform across layers)."""
    counts = {}
    for role, ratio in config.ratios.items():
        if role not in smap.roles:
            raise TangentError(f"S2FTConfig.ratios: module type '{role}' does not exist in {smap.arch} models")
        units = num_units(smap, structure_of(role))
        if config.budget is not None:
            share = config.budget / (len(config.ratios) * smap.num_layers)
            per_unit = unit_width(smap, role) * (
                smap.out_features(role) if role in COLUMN_TYPES else smap.in_features(role)
            )
            n = int(share // per_unit)
        else:
            n = int(round(float(ratio) * units))
        counts[role] = min(units, max(1, n))
    return counts


Calibration = Sequence[Callable[[], torch.Tensor]]


def pick_units(hf: nn.Module, smap: StructureMap, config: S2FTConfig, calibration: Calibration | None = None) -> dict:
    """Rank units per layer with ``config.strategy`` and return the selection dict (see module docstring).

    ``calibration`` is a sequence of zero-argument callables, each running the model on one calibration batch
    and returning a scalar loss; strategies A and S only run them forward, G back-propagates them.
    """
    counts = unit_counts(smap, config)
    structures = sorted({structure_of(r) for r in counts})
    if config.needs_calibration and not calibration:
        raise TangentError(f"S2FT strategy {config.strategy} needs calibration batches (strategies R and W do not)")
    # scored on the model's device, ranked on the CPU
    scores = {s: [u.cpu() for u in v] for s, v in _scores(hf, smap, config, structures, calibration or []).items()}
    gen = torch.Generator().manual_seed(int(config.seed))
    out: dict = {"counts": {r: [n] * smap.num_layers for r, n in counts.items()}}
    for s in structures:
        keep = max(n for r, n in counts.items() if structure_of(r) == s)
        per_layer = []
        for layer in range(smap.num_layers):
            if config.strategy == "R":
                order = torch.randperm(num_units(smap, s), generator=gen)
            else:
                score = scores[s][layer]
                # stable sort: ties are broken by unit index, so a selection is reproducible
                order = torch.sort(score, descending=config.variant == "large", stable=True).indices
            per_layer.append(order[:keep].tolist())
        out[s] = per_layer
    return out


def _trained_roles(smap: StructureMap, config: S2FTConfig, structure: str) -> list[str]:
    return [r for r in config.ratios if structure_of(r) == structure and r in smap.roles]


def _scores(hf, smap, config, structures, calibration) -> dict[str, list[torch.Tensor]]:
    if config.strategy == "R":
        return {}
    out: dict[str, list[torch.Tensor]] = {}
    if config.strategy in ("W", "S"):
        for s in structures:
            out[s] = [
                sum(unit_sq_norms(smap, r, role_weight(hf, smap, layer, r)) for r in _trained_roles(smap, config, s)).sqrt()
                for layer in range(smap.num_layers)
            ]
    if config.strategy in ("A", "S"):
        act = activation_norms(hf, smap, structures, calibration)
        out = {s: [a * out[s][i] for i, a in enumerate(act[s])] for s in structures} if out else act
    if config.strategy == "G":
        out = gradient_norms(hf, smap, config, structures, calibration)
    return out


@torch.no_grad()
def activation_norms(hf, smap: StructureMap, structures, calibration: Calibration) -> dict[str, list[torch.Tensor]]:
    """‖X_u‖ per unit: norms of the o / down inputs on each unit's channels over the calibration batches."""
    col_role = {"attention": "o", "ffn": "down"}
    device = next(hf.parameters()).device
    sums = {s: [torch.zeros(smap.in_features(col_role[s]), dtype=torch.float64, device=device)
                for _ in range(smap.num_layers)] for s in structures}
    hooks = []

    def hook_for(acc: torch.Tensor):
        def hook(_module, args):
            x = args[0].detach()
            acc.add_(x.double().pow(2).reshape(-1, x.shape[-1]).sum(0))

        return hook

    try:
        for s in structures:
            for layer in range(smap.num_layers):
                mod = smap.module(hf, layer, col_role[s])
                hooks.append(mod.register_forward_pre_hook(hook_for(sums[s][layer])))
        with _eval_mode(hf):
            for run in calibration:
                run()
    finally:
        for h in hooks:
            h.remove()
    return {
        s: [acc.reshape(-1, unit_width(smap, col_role[s])).sum(1).sqrt() for acc in sums[s]] for s in structures
    }


def gradient_norms(hf, smap: StructureMap, config: S2FTConfig, structures, calibration: Calibration) -> dict[str, list[torch.Tensor]]:
    """sqrt(Σ_batches ‖∂L/∂W_u‖²) per unit; each weight's gradient is reduced and freed as soon as it exists."""
    device = next(hf.parameters()).device
    acc = {s: [torch.zeros(num_units(smap, s), dtype=torch.float64, device=device) for _ in range(smap.num_layers)]
           for s in structures}
    # param -> [(structure, layer, role)]; GPT-2's q, k and v share one c_attn weight
    owners: dict[int, tuple[nn.Parameter, list[tuple[str, int, str]]]] = {}
    for s in structures:
        for layer in range(smap.num_layers):
            for role in _trained_roles(smap, config, s):
                p = smap.module(hf, layer, role).weight
                owners.setdefault(id(p), (p, []))[1].append((s, layer, role))
    flags = {n: p.requires_grad for n, p in hf.named_parameters()}
    handles = []

    def hook_for(entries):
        def hook(p):
            for s, layer, role in entries:
                ref = smap.ref(layer, role)
                g = p.grad.t() if ref.transposed else p.grad
                if ref.out_range is not None:
                    g = g[ref.out_range[0] : ref.out_range[1]]
                acc[s][layer] += unit_sq_norms(smap, role, g)
            p.grad = None  # discard: only per-unit norms survive this layer's backward

        return hook

    try:
        for p in hf.parameters():
            p.requires_grad_(False)
        for p, entries in owners.values():
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(hook_for(entries)))
        with _eval_mode(hf):
            for run in calibration:
                loss = run()
                if not torch.is_tensor(loss) or loss.dim() != 0:
                    raise TangentError("S2FT strategy G: a calibration callable must return a scalar loss tensor")
                loss.backward()
    finally:
        for h in handles:
            h.remove()
        for n, p in hf.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
    return {s: [a.sqrt() for a in acc[s]] for s in structures}


class _eval_mode:
    def __init__(self, module: nn.Module):
        self.module, self.was = module, module.training

    def __enter__(self):
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was)


def trainable_count(smap: StructureMap, selection: dict) -> int:
    """Trainable parameters the selection gives (delta entries over all layers and types)."""
    total = 0
    for role, per_layer in selection["counts"].items():
        other = smap.out_features(role) if role in COLUMN_TYPES else smap.in_features(role)
        total += sum(n * unit_width(smap, role) * other for n in per_layer)
    return total


def describe(smap: StructureMap, selection: dict) -> str:
    """A short human-readable summary: units per type and the total trainable parameters."""
    parts = [f"{r}: {per_layer[0]}/{num_units(smap, structure_of(r))} units x {len(per_layer)} layers"
             for r, per_layer in selection["counts"].items()]
    return "; ".join(parts) + f"; trainable {trainable_count(smap, selection):,}"


def slice_selection(task_model: nn.Module, selection: dict, *, prefix: str = "hf.") -> ParamSelection:
    """The weight entries ``selection`` trains, as a :class:`ParamSelection` of row/column slices of the
    UN-permuted task model: rows of q/k/v/gate/up (within GPT-2's fused ``c_attn`` range), columns of o/down,
    one block ``L{layer}.{role}`` per trained role and layer. Co-permutation moves exactly these rows/columns
    into the delta's contiguous slice, so the blocks hold the same scalars as the S2FT deltas (weights only:
    a delta has no bias part)."""
    smap: StructureMap = task_model.structure
    blocks = []
    for role, counts in selection["counts"].items():
        ranked = selection[structure_of(role)]
        for layer, n_units in enumerate(counts):
            ref = smap.ref(layer, role)
            channels = unit_channels(smap, role, torch.tensor(ranked[layer][:n_units], dtype=torch.long))
            path = prefix + ref.path
            block = ParamBlock(f"{path}.weight", path, "weight", "linear", f"L{layer}.{role}", layer, role,
                               ref.transposed)
            if role in COLUMN_TYPES:
                block = block.sliced(in_idx=sorted(channels.tolist()))
            else:
                offset = ref.out_range[0] if ref.out_range is not None else 0
                block = block.sliced(out_idx=sorted((offset + channels).tolist()))
            blocks.append(block)
    return ParamSelection(blocks, f"s2ft: {describe(smap, selection)}")
