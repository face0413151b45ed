"""The eNTK of a TaskModel w.r.t. a ParamSelection: the selection/TaskModel adapter onto the kernel core.

It only translates: the selection's blocks become hook sites (:mod:`tangentft.ntk.capture`), examples are
sorted by token length and cut into chunks (little padding) whose activations fit the budget, and a pass
encodes a chunk and captures its features; planning the tiles, running the passes and assembling the blocks
is :mod:`tangentft.ntk.core`, the same code :func:`tangentft.ntk.entk` runs on a plain ``nn.Module``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from ..data.types import Example
from ..device import accumulation_device
from ..errors import TangentError
from ..models.selection import ParamBlock, ParamSelection
from .capture import Site, capture, capturing, site_features
from .contraction import BlockShape, choose, feature_bytes
from .core import Chunk, Plan, execute, make_chunks, make_tiles, my_passes

DEFAULT_CHUNK = 8  # still batches well on one CPU thread and leaves enough chunks to balance over a few ranks


def build_sites(task_model: nn.Module, selection: ParamSelection) -> list[Site]:
    """Group the selection's blocks by owning module; refuse blocks the engine cannot contract exactly."""
    params = dict(task_model.named_parameters(remove_duplicate=False))
    sites: dict[str, Site] = {}
    for b in selection.blocks:
        if b.name not in params:
            raise TangentError(f"selected parameter '{b.name}' does not exist in this task model")
        if b.module_kind == "embedding":
            raise TangentError(
                f"'{b.name}': embedding tables are not supported by the eNTK engine (select projections, "
                "norms, biases, LoRA factors or the head)"
            )
        if b.module not in sites:
            sites[b.module] = Site(b.module, task_model.get_submodule(b.module), b.module_kind, [])
        sites[b.module].blocks.append(b)
    return list(sites.values())


def block_shape(task_model: nn.Module, b: ParamBlock) -> BlockShape:
    """Widths of one block after slicing (d_in = 1 for biases and norm parameters)."""
    p = dict(task_model.named_parameters(remove_duplicate=False))[b.name]
    if b.part == "weight" and p.dim() == 2:
        dout_full, din_full = (p.shape[1], p.shape[0]) if b.transposed else (p.shape[0], p.shape[1])
        dout = len(b.out_idx) if b.out_idx is not None else dout_full
        din = len(b.in_idx) if b.in_idx is not None else din_full
        return BlockShape(din, dout, b.module_kind == "linear")
    return BlockShape(1, len(b.out_idx) if b.out_idx is not None else p.numel(), False)


def bytes_per_token(task_model: nn.Module) -> float:
    """Rough activation bytes one token costs in a forward+backward with the graph kept (model dtype)."""
    s = task_model.structure
    return float(task_model.dtype.itemsize) * s.num_layers * (12 * s.hidden_size + 3 * s.intermediate_size + 2 * s.num_heads * 64)


def _key(b: ParamBlock):
    return (b.name, b.out_idx, b.in_idx, b.group)


def make_plan(task_model, selection: ParamSelection, held: Sequence[Example], streamed: Sequence[Example],
              *, symmetric: bool, traced: bool, contraction: str, budget: int, chunk_size: int | None,
              sign: bool = False) -> tuple[Plan, list[Site], dict]:
    """Sites, per-block contraction (from shapes and the budget), chunks by token length, and tiles.

    Returns ``(plan, sites, how)`` with ``how`` the contraction of each block (by :func:`_key`)."""
    if not held:
        raise TangentError("no examples to compute a kernel on")
    if chunk_size is not None and chunk_size < 1:
        raise TangentError(f"chunk_size must be a positive integer, got {chunk_size}")
    sites = build_sites(task_model, selection)
    K = task_model.num_outputs
    len_h = task_model.token_lengths(list(held))
    len_s = task_model.token_lengths(list(streamed)) if streamed else []
    tokens = float(np.mean(len_h + len_s))
    n_total = len(held) + (0 if symmetric else len(streamed))
    token_budget = max(int(budget / 2 / bytes_per_token(task_model)), max(len_h + len_s))
    how: dict = {}
    per_example = 0.0
    for s in sites:
        for b in s.blocks:
            shape = block_shape(task_model, b)
            h = choose(shape, n_held=len(held), n_total=n_total, tokens=tokens, K=K, traced=traced,
                       budget=budget, forced="materialize" if sign else contraction)
            how[_key(b)] = h
            per_example += feature_bytes(shape, h, max(len_h), K)
    cap = chunk_size or DEFAULT_CHUNK
    held_chunks = make_chunks(len_h, chunk_size=cap, token_budget=token_budget)
    stream_chunks = make_chunks(len_s, chunk_size=cap, token_budget=token_budget) if streamed else []
    blocks = [b for s in sites for b in s.blocks]
    plan = Plan([b.group for b in blocks], [how[_key(b)] for b in blocks], K, len(held), len(streamed), held_chunks, stream_chunks,
                make_tiles(held_chunks, per_example, budget), symmetric, traced, sign)
    return plan, sites, how


def run(task_model, selection: ParamSelection, held: Sequence[Example], streamed: Sequence[Example] = (), *,
        symmetric: bool, traced: bool, contraction: str, budget: int, chunk_size: int | None,
        progress: Callable[[int, int], None] | None = None, sign: bool = False):
    """Compute per-group kernel blocks: held×held (if ``symmetric``) and held×streamed.

    ``sign`` computes the SignGD kernel ⟨∇f(x), sign(∇f(x'))⟩ instead (rows x, columns x'), from the same
    pass: every block is materialized (costs n·K·d_in·d_out floats per block for Gram-contracted modules),
    and the held×held kernel is asymmetric, so mirrored tiles are contracted both ways.

    Returns ``(sym_blocks | None, cross_blocks | None, timings)`` with float64 numpy blocks per group,
    rows/columns in the caller's example order (full kind: index i·K + k). With ``sign`` the held×held block
    is ⟨∇f(row), sign ∇f(column)⟩ and the held×streamed block is ⟨∇f(streamed), sign ∇f(held)⟩ laid out
    held×streamed (so its transpose is the streamed×held SignGD kernel). Under a process group every rank
    returns the whole kernel (:mod:`tangentft.ntk.core`); ``progress`` counts this rank's own passes.
    """
    t0 = time.perf_counter()
    plan, sites, how = make_plan(task_model, selection, held, streamed, symmetric=symmetric, traced=traced,
                                 contraction=contraction, budget=budget, chunk_size=chunk_size, sign=sign)
    device = accumulation_device(task_model.device)
    examples = {"held": held, "stream": streamed}
    total = my_passes(plan)
    clock = {"forward_backward_seconds": 0.0, "features_seconds": 0.0, "done": 0}

    def features(side: str, chunk: Chunk) -> list:
        t = time.perf_counter()
        enc = task_model.encode([examples[side][i] for i in chunk.idx])
        captured = capture(sites, lambda: task_model(**enc), enc["attention_mask"], device)
        t1 = time.perf_counter()
        feats = site_features(sites, lambda b: how[_key(b)], captured)
        clock["forward_backward_seconds"] += t1 - t
        clock["features_seconds"] += time.perf_counter() - t1
        clock["done"] += 1
        if progress is not None:
            progress(clock["done"], total)
        return feats

    with capturing(task_model, sites):
        sym, cross, timings = execute(plan, features, device)
    timings.update(forward_backward_seconds=clock["forward_backward_seconds"],
                   features_seconds=clock["features_seconds"], total_seconds=time.perf_counter() - t0)
    return sym, cross, timings
