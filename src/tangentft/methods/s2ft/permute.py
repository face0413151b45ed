"""Co-permutation: reorder coupled rows/columns so every selection is one contiguous leading slice.

For each layer the ranked units of a structure come first (best first), the others follow in their
original order. The same unit order is applied to every member of the coupled structure — q/k/v output
rows and o input columns of whole KV groups; gate/up output rows (with their biases) and down input
columns — so the block computes exactly the same function (S2FT paper §3.1: permuting the hidden units
between two coupled matrices leaves the product unchanged). A permutation is stored as ``index`` with
``W_new = W_old.index_select(axis, index)``: position ``i`` of the permuted weight holds original row/column
``index[i]``. GPT-2's fused ``c_attn`` gets one index over its q|k|v columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...models.structure import StructureMap
from .selection import COLUMN_TYPES, num_units, structure_of, unit_channels


@dataclass
class ModulePermutation:
    """The permutation of one module's weight along ``axis`` (native layout), and of its bias if ``bias``."""

    path: str
    axis: int
    index: torch.Tensor
    bias: bool

    @property
    def inverse(self) -> torch.Tensor:
        """``inv`` with ``W_old = W_new.index_select(axis, inv)``."""
        return torch.argsort(self.index)


def unit_order(smap: StructureMap, structure: str, ranked: list[int]) -> torch.Tensor:
    """All units of a layer: the ranked ones first (in rank order), then the rest in original order."""
    n = num_units(smap, structure)
    ranked_t = torch.tensor(ranked, dtype=torch.long)
    rest = torch.ones(n, dtype=torch.bool)
    rest[ranked_t] = False
    return torch.cat([ranked_t, torch.arange(n)[rest]])


def permutations(hf: nn.Module, smap: StructureMap, selection: dict) -> dict[str, ModulePermutation]:
    """Module path -> permutation bringing ``selection``'s units to the front of every coupled member."""
    out: dict[str, ModulePermutation] = {}
    structures = [s for s in ("attention", "ffn") if s in selection]
    for s in structures:
        roles = [r for r in smap.roles if structure_of(r) == s]
        for layer in range(smap.num_layers):
            order = unit_order(smap, s, selection[s][layer])
            for role in roles:
                ref = smap.ref(layer, role)
                module = hf.get_submodule(ref.path)
                is_col = role in COLUMN_TYPES
                axis = ref.in_axis if is_col else ref.out_axis
                channels = unit_channels(smap, role, order)
                if ref.path not in out:
                    size = module.weight.shape[axis]
                    out[ref.path] = ModulePermutation(ref.path, axis, torch.arange(size), bias=False)
                perm = out[ref.path]
                offset = ref.out_range[0] if (ref.out_range is not None and not is_col) else 0
                perm.index[offset : offset + channels.numel()] = offset + channels
                perm.bias = perm.bias or (not is_col and getattr(module, "bias", None) is not None)
    return out


@torch.no_grad()
def apply(hf: nn.Module, perms: dict[str, ModulePermutation], inverse: bool = False) -> None:
    """Permute the base weights in place (or undo it with ``inverse=True``); the model's outputs are unchanged."""
    for perm in perms.values():
        module = hf.get_submodule(perm.path)
        index = (perm.inverse if inverse else perm.index).to(module.weight.device)
        # in place: the weights keep their storage (no second copy of every permuted matrix stays resident)
        module.weight.data.copy_(module.weight.data.index_select(perm.axis, index))
        if perm.bias:
            module.bias.data.copy_(module.bias.data.index_select(0, index))
