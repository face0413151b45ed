"""Adapter switching on a served model: unfuse the old sparse adapter, fuse the new one.

Unfusing restores the slices the old merge saved (exact), fusing adds the new deltas with ``index_add_``;
both touch only the adapters' rows/columns, so a switch costs O(n·d) instead of LoRA's O(d²) re-merge
(S2FT paper §6.2). The result is bit-for-bit the base with the new adapter merged.
"""

from __future__ import annotations

from torch import nn

from .merge import MergeRecord, merge, unmerge
from .sparse import SparseAdapter


def switch(model: nn.Module, current: MergeRecord | None, new: SparseAdapter | list[SparseAdapter], check: bool = True) -> MergeRecord:
    """Unmerge ``current`` (if any) and merge ``new``; returns the record of the new merge."""
    if current is not None:
        unmerge(model, current)
    return merge(model, new, check=check)
