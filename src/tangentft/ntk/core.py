"""The kernel core, independent of what the model is: plan the work, run the passes, assemble the blocks.

A :class:`Plan` says which blocks are contracted how, which chunks of examples run together, and how the
"held" side's chunks are grouped into tiles whose features fit half the memory budget; every other chunk is
streamed past each tile. With one tile (the usual case) each chunk runs exactly once. The caller supplies
``features(side, chunk)`` — one pass over a chunk, returning every block's features in plan order — so the
same core serves a plain ``nn.Module`` (:func:`tangentft.ntk.entk`) and a TaskModel with a ParamSelection
(:mod:`tangentft.ntk.engine`).

Under a process group (:mod:`tangentft.distributed`) the work is spread over the ranks, each holding a model
replica: a tile's held chunks are split by length (longest-processing-time), their features broadcast to every
rank, then the tile's chunk pairs and the streamed chunks are split the same way. Every kernel entry is still
computed by exactly one rank with the same operations on the same chunks, and the all-reduce only adds zeros
to it, so the result equals the single-process kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import distributed
from ..errors import TangentError
from .contraction import GramFactors, Materialized, contract


@dataclass
class Chunk:
    """Positions (into its side's example list) of examples run as one batch; ``max_len`` its padded tokens."""

    idx: np.ndarray
    max_len: int


def make_chunks(lengths: Sequence[int], *, chunk_size: int, token_budget: int) -> list[Chunk]:
    """Sort by length and cut greedily: at most ``chunk_size`` examples and ``token_budget`` padded tokens.

    The cut never depends on the number of ranks (chunks are the unit of work spread over them), so the
    kernel is the same whatever the number of processes.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    chunks: list[Chunk] = []
    cur: list[int] = []
    for i in order:
        L = int(lengths[i])
        if cur and (len(cur) >= chunk_size or (len(cur) + 1) * L > token_budget):
            chunks.append(Chunk(np.array(cur), int(lengths[cur[-1]])))
            cur = []
        cur.append(int(i))
    if cur:
        chunks.append(Chunk(np.array(cur), int(lengths[cur[-1]])))
    return chunks


def make_tiles(chunks: list[Chunk], per_example_bytes: float, budget: int) -> list[list[int]]:
    """Consecutive groups of chunk indices whose held features stay within half the budget."""
    tiles: list[list[int]] = []
    cur: list[int] = []
    held = 0.0
    for c, ch in enumerate(chunks):
        size = per_example_bytes * len(ch.idx)
        if cur and held + size > budget / 2:
            tiles.append(cur)
            cur, held = [], 0.0
        cur.append(c)
        held += size
    if cur:
        tiles.append(cur)
    return tiles


@dataclass
class Plan:
    """Everything decided before the first forward.

    ``groups[i]``/``kinds[i]`` are the kernel group and the contraction (``gram``/``materialize``) of the
    i-th block ``features`` returns; rows of the result are ``n_held`` (and columns ``n_streamed``)
    examples × K outputs (× 1 if ``traced``).
    """

    groups: list[str]
    kinds: list[str]
    K: int
    n_held: int
    n_streamed: int
    held_chunks: list[Chunk]
    stream_chunks: list[Chunk]
    tiles: list[list[int]]
    symmetric: bool
    traced: bool
    sign: bool = False
    passes: int = field(init=False)

    def __post_init__(self):
        if self.sign and any(k != "materialize" for k in self.kinds):
            raise TangentError("the SignGD kernel needs materialized per-example gradients")
        self.passes = 0
        for t in self.tiles:
            self.passes += len(t) + len(self.stream_chunks)
            if self.symmetric:
                self.passes += len(self.held_chunks) - 1 - t[-1]


def assign(costs: Sequence[float], ranks: int) -> list[int]:
    """Longest-processing-time assignment of work items to ranks: item i goes to ``assign(...)[i]``.

    Deterministic (ties by index), so every rank computes the same schedule without talking.
    """
    load = [0.0] * ranks
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


def _tokens(ch: Chunk) -> float:
    return float(len(ch.idx) * ch.max_len)


@dataclass
class TileWork:
    """One tile's share of the schedule: its held chunks, what streams past it, and which rank does what."""

    chunks: list[Chunk]
    held_owner: list[int]
    later: list[tuple[str, int]]  # ("held", c) mirrored chunks after the tile, ("stream", c) streamed ones
    later_owner: list[int]
    pairs: list[tuple[int, int]]  # chunk pairs inside the tile (symmetric kernels only)
    pair_owner: list[int]


def schedule(plan: Plan, ranks: int) -> list[TileWork]:
    """Which rank runs which chunk and which pair, the same on every rank."""
    out = []
    for tile in plan.tiles:
        chunks = [plan.held_chunks[c] for c in tile]
        after = list(range(tile[-1] + 1, len(plan.held_chunks))) if plan.symmetric else []
        later = [("held", c) for c in after] + [("stream", c) for c in range(len(plan.stream_chunks))]
        later_chunks = [plan.held_chunks[c] if side == "held" else plan.stream_chunks[c] for side, c in later]
        pairs = [(i, j) for i in range(len(tile)) for j in range(i, len(tile))] if plan.symmetric else []
        out.append(TileWork(chunks, assign([_tokens(ch) for ch in chunks], ranks), later,
                            assign([_tokens(ch) for ch in later_chunks], ranks), pairs,
                            assign([_tokens(chunks[i]) * _tokens(chunks[j]) for i, j in pairs], ranks)))
    return out


def _flatten(feats) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for f in feats:
        out += [f.g] if isinstance(f, Materialized) else [f.a, f.b]
    return out


def _unflatten(tensors: list[torch.Tensor], kinds: list[str]) -> list:
    out, i = [], 0
    for k in kinds:
        if k == "materialize":
            out.append(Materialized(tensors[i]))
            i += 1
        else:
            out.append(GramFactors(tensors[i], tensors[i + 1]))
            i += 2
    return out


@dataclass
class Side:
    """Features of several chunks on one side of a contraction: materialized blocks stacked over the chunks
    (one GEMM per block for all of them), Gram blocks per chunk (their token axes differ)."""

    rows: np.ndarray  # kernel rows of the stacked examples, in stacking order
    stacked: dict[int, torch.Tensor]  # block index → (N, K, P) materialized features of all the chunks
    gram: list[tuple[np.ndarray, dict[int, GramFactors]]]  # per chunk: its rows, block index → factors
    signed: bool = False  # ``stacked`` holds sign(∇f) (SignGD), no longer the gradients themselves


class Accumulator:
    """The float64 kernel blocks per group (held×held and/or held×streamed) and the time spent filling them.

    Per block one contraction (GEMM in the product dtype, result float64) between two :class:`Side` s;
    blocks add up per group, in float64, into the numpy blocks."""

    def __init__(self, plan: Plan):
        m = 1 if plan.traced else plan.K
        self.plan = plan
        self.sym = {g: np.zeros((plan.n_held * m, plan.n_held * m)) for g in plan.groups} if plan.symmetric else None
        self.cross = {g: np.zeros((plan.n_held * m, plan.n_streamed * m)) for g in plan.groups} \
            if plan.n_streamed else None
        self.seconds = 0.0

    def rows(self, ch: Chunk) -> np.ndarray:
        return ch.idx if self.plan.traced else (ch.idx[:, None] * self.plan.K + np.arange(self.plan.K)).ravel()

    def side(self, chunks: list[Chunk], feature_stream) -> Side:
        """One side from ``feature_stream`` (yields each chunk's features in order): each materialized block is
        copied into one (N, K, P) tensor as its chunk arrives, so the side costs its stacked features plus one
        chunk's, never two copies of the stack."""
        offsets = np.cumsum([0] + [len(ch.idx) for ch in chunks])
        stacked: dict[int, torch.Tensor] = {}
        gram = []
        for c, (ch, feats) in enumerate(zip(chunks, feature_stream, strict=True)):
            t = time.perf_counter()
            for i, kind in enumerate(self.plan.kinds):
                if kind == "materialize":
                    g = feats[i].g
                    if len(chunks) == 1:
                        stacked[i] = g
                        continue
                    if i not in stacked:
                        stacked[i] = g.new_empty((int(offsets[-1]), *g.shape[1:]))
                    stacked[i][offsets[c]:offsets[c + 1]] = g
            gram.append((self.rows(ch), {i: f for i, (f, k) in enumerate(zip(feats, self.plan.kinds, strict=True)) if k == "gram"}))
            self.seconds += time.perf_counter() - t
        return Side(np.concatenate([self.rows(ch) for ch in chunks]), stacked, gram)

    def _add(self, out: dict, rows, cols, per_group: dict[str, torch.Tensor], transpose: bool = False) -> None:
        for g, tile in per_group.items():
            arr = tile.cpu().numpy()
            out[g][np.ix_(rows, cols)] += arr.T if transpose else arr

    def _materialized(self, p: Side, q: Side) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, gp in p.stacked.items():
            g = self.plan.groups[i]
            tile = contract(Materialized(gp), Materialized(q.stacked[i]), self.plan.traced,
                            self.plan.sign and not q.signed)
            out[g] = out[g] + tile if g in out else tile
        return out

    def _gram(self, pf: dict, qf: dict) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, f in pf.items():
            g = self.plan.groups[i]
            tile = contract(f, qf[i], self.plan.traced)
            out[g] = out[g] + tile if g in out else tile
        return out

    def self_kernel(self, tile: Side, pairs: list[tuple[int, int]], materialized: bool) -> None:
        """The held×held kernel within one tile: all of it for materialized blocks (if ``materialized``),
        the given chunk pairs (i ≤ j, mirrored) for Gram blocks."""
        t = time.perf_counter()
        if materialized:
            self._add(self.sym, tile.rows, tile.rows, self._materialized(tile, tile))
        for i, j in pairs:
            (rp, fp), (rq, fq) = tile.gram[i], tile.gram[j]
            per_group = self._gram(fp, fq)
            self._add(self.sym, rp, rq, per_group)
            if i != j:
                self._add(self.sym, rq, rp, per_group, transpose=True)
        self.seconds += time.perf_counter() - t

    def mirrored(self, tile: Side, q: Side) -> None:
        """A held chunk after the tile (``q``) against the tile, both ways."""
        if tile.signed:
            raise RuntimeError("a mirrored chunk after the tile's streamed chunks: the tile holds signs by then")
        t = time.perf_counter()
        per_group = self._materialized(tile, q)
        self._add(self.sym, tile.rows, q.rows, per_group)
        if self.plan.sign:  # ⟨∇f, sign ∇f'⟩ is asymmetric: contract the mirror too
            self._add(self.sym, q.rows, tile.rows, self._materialized(q, tile))
        else:
            self._add(self.sym, q.rows, tile.rows, per_group, transpose=True)
        (rq, fq), = q.gram
        for rp, fp in tile.gram:
            per_group = self._gram(fp, fq)
            self._add(self.sym, rp, rq, per_group)
            self._add(self.sym, rq, rp, per_group, transpose=True)
        self.seconds += time.perf_counter() - t

    def streamed(self, tile: Side, q: Side) -> None:
        """The tile against a streamed chunk ``q``; with ``sign`` the sign sits on the held side,
        ⟨∇f(streamed), sign ∇f(held)⟩, laid out held×streamed. The streamed chunks come last in a tile's work
        (after its self-kernel and mirrored chunks, which need the tile's gradients), so the tile's features are
        replaced by their sign once, in place, at the first of them: one sign per tile instead of one per
        streamed chunk (which cost as much as the GEMMs), and no second copy of the tile."""
        t = time.perf_counter()
        if self.plan.sign and not tile.signed:
            for g in tile.stacked.values():
                g.sign_()
            tile.signed = True
        if self.plan.sign:
            self._add(self.cross, tile.rows, q.rows, self._materialized(q, tile), transpose=True)
        else:
            self._add(self.cross, tile.rows, q.rows, self._materialized(tile, q))
        (rq, fq), = q.gram
        for rp, fp in tile.gram:
            self._add(self.cross, rp, rq, self._gram(fp, fq))
        self.seconds += time.perf_counter() - t


Features = Callable[[str, Chunk], list]


def run_passes(plan: Plan, features: Features, acc: Accumulator, device: torch.device) -> float:
    """Run this rank's passes of the schedule into ``acc``; returns the seconds spent sharing features.

    A tile's materialized self-kernel is one GEMM per block over all its chunks, done by the rank that owns
    the tile's first chunk pair (or its first held chunk when the kernel is not symmetric)."""
    me, ranks = distributed.rank(), distributed.world_size()
    t_comm = 0.0
    for work in schedule(plan, ranks):
        # Under ranks, every rank first runs its own chunks (in parallel), then each chunk's features travel
        # from its owner to all; alone, each chunk runs as the stack takes it.
        own = {i: features("held", ch) for i, ch in enumerate(work.chunks) if work.held_owner[i] == me} \
            if ranks > 1 else {}

        def stream(work=work, own=own):
            nonlocal t_comm
            for i, ch in enumerate(work.chunks):
                if ranks == 1:
                    yield features("held", ch)
                    continue
                t = time.perf_counter()
                mine = own.pop(i, None)
                yield _unflatten(distributed.broadcast_tensors(None if mine is None else _flatten(mine),
                                                               work.held_owner[i], device, "sharing eNTK features"),
                                 plan.kinds)
                t_comm += time.perf_counter() - t

        tile = acc.side(work.chunks, stream())
        if plan.symmetric:
            mine = [pair for pair, owner in zip(work.pairs, work.pair_owner, strict=True) if owner == me]
            acc.self_kernel(tile, mine, materialized=work.pair_owner[0] == me)
        for (side, c), owner in zip(work.later, work.later_owner, strict=True):
            if owner != me:
                continue
            cq = plan.held_chunks[c] if side == "held" else plan.stream_chunks[c]
            q = acc.side([cq], [features(side, cq)])
            if side == "held":
                acc.mirrored(tile, q)
            else:
                acc.streamed(tile, q)
    return t_comm


def my_passes(plan: Plan) -> int:
    """How many passes this rank runs (what a progress bar counts to)."""
    me = distributed.rank()
    return sum(sum(o == me for o in w.held_owner) + sum(o == me for o in w.later_owner)
               for w in schedule(plan, distributed.world_size()))


def assemble(plan: Plan, acc: Accumulator) -> tuple[float, dict | None, dict | None]:
    """Sum the ranks' blocks (each entry was computed by one rank) and make the eNTK's held×held blocks
    exactly symmetric; returns (seconds spent communicating, held×held, held×streamed)."""
    t = time.perf_counter()
    if distributed.world_size() > 1:
        parts = [torch.from_numpy(a) for out in (acc.sym, acc.cross) if out is not None for a in out.values()]
        distributed.all_reduce_sum(parts, "gathering the eNTK blocks")  # in place on the numpy arrays
    if acc.sym is not None and not plan.sign:
        for g in acc.sym:  # diagonal tiles are symmetric up to rounding; make it exact
            acc.sym[g] = (acc.sym[g] + acc.sym[g].T) / 2
    return time.perf_counter() - t, acc.sym, acc.cross


def execute(plan: Plan, features: Features, device: torch.device):
    """Plan → passes → assembled float64 blocks: ``(held×held | None, held×streamed | None, timings)``.

    ``features(side, chunk)`` runs one pass (``side`` is ``held`` or ``stream``); the caller times it.
    """
    t0 = time.perf_counter()
    acc = Accumulator(plan)
    t_comm = run_passes(plan, features, acc, device)
    t_gather, sym, cross = assemble(plan, acc)
    return sym, cross, {
        "total_seconds": time.perf_counter() - t0,
        "contraction_seconds": acc.seconds,
        "communication_seconds": t_comm + t_gather,
        "passes": plan.passes,
        "chunks": len(plan.held_chunks) + len(plan.stream_chunks),
        "tiles": len(plan.tiles),
        "ranks": distributed.world_size(),
        "contractions": sorted(set(plan.kinds)),
    }
