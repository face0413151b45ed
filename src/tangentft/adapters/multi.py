"""Batched multi-adapter forward: each example of a batch names its sparse adapter (S2FT paper §6.2).

The base weights stay unmerged; every adapted module computes its base matmul for the whole batch once, then
for each adapter present in the batch gathers that adapter's examples and adds their sparse contribution:

* row delta (output channels ``idx``):   y[b][..., idx] += x[b] Vᵀ
* column delta (input channels ``idx``): y[b]          += x[b][..., idx] Vᵀ

implemented with forward hooks, so any model (TaskModel, HF model) works unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import TangentError
from .merge import check_base
from .sparse import SparseAdapter, _hf_of


def _is_transposed(module: nn.Module) -> bool:
    # GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in)
    return not isinstance(module, nn.Linear) and type(module).__name__ == "Conv1D"


class MultiAdapter:
    """Serve ``adapters`` side by side on one unmerged base; route examples with :meth:`route`."""

    def __init__(self, model: nn.Module, adapters: Sequence[SparseAdapter], check: bool = True):
        self.hf = _hf_of(model)
        self.adapters = list(adapters)
        if check:
            for a in self.adapters:
                check_base(self.hf, a)
        self._ids: torch.Tensor | None = None
        # path -> [(adapter number, is_output_axis, index, V in (rows|out, in|cols) linear orientation)]
        self._plan: dict[str, list[tuple[int, bool, torch.Tensor, torch.Tensor]]] = {}
        for k, a in enumerate(self.adapters):
            for d in a.deltas:
                module = self.hf.get_submodule(d.path)
                t = _is_transposed(module)
                out_axis = 1 if t else 0
                v = d.values.t() if t else d.values
                self._plan.setdefault(d.path, []).append((k, d.axis == out_axis, d.index, v.contiguous()))
        self._handles = [self.hf.get_submodule(p).register_forward_hook(self._hook(p)) for p in self._plan]

    def names(self) -> list[str]:
        """Adapter names in routing order (id k selects ``names()[k]``; -1 selects the base)."""
        return [a.name for a in self.adapters]

    @contextlib.contextmanager
    def route(self, adapter_ids: Sequence[int] | torch.Tensor) -> Iterator[None]:
        """Within the block, example b of every forward uses adapter ``adapter_ids[b]`` (-1: none)."""
        ids = torch.as_tensor(adapter_ids, dtype=torch.long)
        if ids.numel() and (ids.max() >= len(self.adapters) or ids.min() < -1):
            raise TangentError(f"adapter ids must be in -1..{len(self.adapters) - 1}, got {ids.tolist()}")
        self._ids = ids
        try:
            yield
        finally:
            self._ids = None

    def _hook(self, path: str):
        def hook(_module, args, output):
            if self._ids is None:
                return output
            x = args[0]
            if x.shape[0] != self._ids.shape[0]:
                raise TangentError(f"batch of {x.shape[0]} examples routed with {self._ids.shape[0]} adapter ids")
            out = output.clone()
            ids = self._ids.to(x.device)
            for k, is_out, index, v in self._plan[path]:
                rows = (ids == k).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                xb, idx, v = x.index_select(0, rows), index.to(x.device), v.to(x.device, x.dtype)
                yb = out.index_select(0, rows)
                if is_out:
                    yb.index_add_(-1, idx, xb.matmul(v.t()))
                else:
                    yb += xb.index_select(-1, idx).matmul(v.t())
                out.index_copy_(0, rows, yb)
            return out

        return hook

    def close(self) -> None:
        """Remove the hooks: the model is the plain base again."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> MultiAdapter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
