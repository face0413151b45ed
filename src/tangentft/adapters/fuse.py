"""Fusion of several sparse adapters into one, with weights (S2FT paper §6.2).

Deltas on the same module and axis are combined on the union of their indices with ``index_add_``:
non-overlapping selections simply sit side by side (so the fused adapter equals applying them all), and
overlapping rows/columns are summed — weighted — and reported. Deltas on the same module along different
axes (rows of one, columns of another) stay separate entries; the entries they share are reported too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import TangentError
from .sparse import SparseAdapter, SparseDelta


@dataclass
class FusionReport:
    """Overlaps found while fusing: module path -> number of weight entries touched by more than one adapter."""

    overlaps: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Overlapping entries over all modules."""
        return sum(self.overlaps.values())

    def lines(self) -> list[str]:
        """One human-readable line per module with an overlap."""
        return [f"{p}: {n} overlapping entries combined" for p, n in self.overlaps.items()]


def check_same_base(adapters: list[SparseAdapter]) -> None:
    """Refuse adapters whose fingerprints over the same modules differ: they were made for different bases.

    Fingerprints over different module sets cannot be compared here; the fused adapter carries them all,
    so :func:`~tangentft.adapters.merge.check_base` still checks each against the model it is merged into.
    """
    for i, a in enumerate(adapters):
        for b in adapters[i + 1:]:
            shared = {tuple(sorted(p)) for p, _ in a.fingerprints} & {tuple(sorted(p)) for p, _ in b.fingerprints}
            if not shared and a.base and b.base and a.base != b.base:
                # no module fingerprinted in both, so nothing confirms one base: the names recorded must agree
                raise TangentError(f"adapters '{a.name}' and '{b.name}' were made for different base models "
                                   f"('{a.base}' and '{b.base}'); fuse adapters of one base")
    seen: dict[tuple[str, ...], tuple[str, str]] = {}
    for a in adapters:
        for paths, digest in a.fingerprints:
            key = tuple(sorted(paths))
            first = seen.setdefault(key, (digest, a.name))
            if first[0] != digest:
                raise TangentError(
                    f"adapters '{first[1]}' and '{a.name}' were made for different base models "
                    f"(fingerprints {first[0]} and {digest} over the same {len(paths)} modules)"
                )


def fuse(adapters: list[SparseAdapter], weights: list[float] | None = None, name: str = "fused") -> tuple[SparseAdapter, FusionReport]:
    """Σ_i w_i ΔW_i as one sparse adapter, plus the overlap report."""
    import math

    if not adapters:
        raise TangentError("fuse: give at least one adapter")
    weights = [1.0] * len(adapters) if weights is None else list(weights)
    if len(weights) != len(adapters):
        raise TangentError(f"fuse: {len(weights)} weights for {len(adapters)} adapters")
    bad = next((w for w in weights if not math.isfinite(w)), None)
    if bad is not None:
        raise TangentError(f"fuse: weight {bad} is not a finite number (weights {weights})")
    check_same_base(adapters)
    groups: dict[tuple[str, int], list[SparseDelta]] = {}
    for a, w in zip(adapters, weights, strict=True):
        for d in a.deltas:
            groups.setdefault((d.path, d.axis), []).append(d.scaled(w))
    report = FusionReport()
    fused: list[SparseDelta] = []
    for (path, axis), ds in groups.items():
        widths = {d.values.shape[1 - axis] for d in ds}
        if len(widths) > 1:
            raise TangentError(f"fuse: the adapters' deltas on {path} have different shapes ({sorted(widths)} "
                               f"{'columns' if axis == 0 else 'rows'}): they were made for different base models")
        union = torch.unique(torch.cat([d.index for d in ds]))
        shape = list(ds[0].values.shape)
        shape[axis] = union.numel()
        values = torch.zeros(shape, dtype=ds[0].values.dtype)
        hits = torch.zeros(union.numel(), dtype=torch.long)
        for d in ds:
            pos = torch.searchsorted(union, d.index)
            values.index_add_(axis, pos, d.values)
            hits.index_add_(0, pos, torch.ones_like(pos))
        other = shape[1 - axis]
        if int((hits > 1).sum()):
            report.overlaps[path] = report.overlaps.get(path, 0) + int((hits > 1).sum()) * other
        fused.append(SparseDelta(path, axis, union, values))
    by_path: dict[str, list[SparseDelta]] = {}
    for d in fused:
        by_path.setdefault(d.path, []).append(d)
    for path, ds in by_path.items():
        if len(ds) == 2:  # rows of one adapter cross columns of another
            report.overlaps[path] = report.overlaps.get(path, 0) + ds[0].index.numel() * ds[1].index.numel()
    fingerprints = list({(tuple(p), fp): (list(p), fp) for a in adapters for p, fp in a.fingerprints}.values())
    bases = {a.base for a in adapters}
    return SparseAdapter(name, fused, fingerprints, bases.pop() if len(bases) == 1 else None), report
