"""Memory per rank of an eNTK pass (and of training the same parameters), from a model's config alone.

The model is built on the ``meta`` device (:func:`tangentft.models.registry.meta_model`): every shape is
known and no weight is read, so a 70B plan costs a second. The figures follow the engine's own rules
(:mod:`tangentft.ntk.engine` and :mod:`tangentft.ntk.contraction`): the same chunk size, the same per-block
choice between Gram and materialized features, float64 features and kernels.

Per rank (every rank holds a model replica, receives every held feature and returns the whole kernel):

* weights        = Σ numel · dtype size
* activations    = bytes_per_token · chunk · seq_len  (one chunk's forward graph + K backward passes)
* features       = Σ_blocks feature_bytes · n, of which at most half the budget is held per tile
* kernel         = (n·K)² · 8 · (1 + groups)  (the matrix and each per-group block, float64)

Training the selected parameters adds, per rank, fp32 master weights + gradients + Adam moments
(16 bytes per trained parameter) — replicated under DDP, divided by the number of ranks under
ZeRO-3 / FSDP full sharding (which also divide the frozen weights).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..device import resolve_dtype
from ..errors import TangentError
from ..ntk.contraction import choose, feature_bytes, parse_memory
from ..ntk.engine import DEFAULT_CHUNK, block_shape, bytes_per_token

TRAIN_BYTES_PER_PARAM = 16  # fp32 master weight + fp32 gradient + Adam's two fp32 moments
GB = 1e9


class _Skeleton(nn.Module):
    """What the selection grammar and the engine's cost model read off a TaskModel, on the meta device."""

    def __init__(self, loaded, num_outputs: int):
        super().__init__()
        self.hf = loaded.model
        self.structure = loaded.structure
        self.kind = loaded.kind
        self.num_outputs = num_outputs
        self.model_name = loaded.name
        self.head = None
        if loaded.kind == "encoder":
            with torch.device("meta"):
                self.head = nn.Linear(loaded.structure.hidden_size, num_outputs, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return torch.device("meta")


@dataclass
class MemoryPlan:
    """Bytes per rank of one eNTK pass and of training the same selection; see the module docstring."""

    model: str
    params: str
    n: int
    K: int
    seq_len: int
    dtype: str
    ranks: int
    budget_bytes: int
    model_params: int
    selected_params: int
    chunk_size: int
    chunks: int
    tiles: int
    contractions: dict
    weights_bytes: float
    activation_bytes_per_chunk: float
    feature_bytes: float
    held_feature_bytes: float
    kernel_bytes: float
    entk_peak_bytes: float
    train_state_ddp_bytes: float
    train_state_sharded_bytes: float

    def rows(self) -> list[tuple[str, float]]:
        """(what, GB per rank) for a table."""
        return [
            ("weights", self.weights_bytes / GB),
            (f"activations per chunk ({self.chunk_size} × {self.seq_len} tokens)", self.activation_bytes_per_chunk / GB),
            (f"features, all {self.n} examples (float64)", self.feature_bytes / GB),
            (f"features held at once ({self.tiles} tile{'s' if self.tiles > 1 else ''})", self.held_feature_bytes / GB),
            (f"kernel + group blocks ({self.n * self.K}² float64)", self.kernel_bytes / GB),
            ("eNTK peak per rank", self.entk_peak_bytes / GB),
            ("training, DDP: weights + trained-param state (no activations)", self.train_state_ddp_bytes / GB),
            (f"training, ZeRO-3 / FSDP over {self.ranks} ranks: the same, sharded", self.train_state_sharded_bytes / GB),
        ]

    def to_json(self) -> dict:
        return asdict(self)


def memory_plan(model: str, params: str, n: int, *, num_outputs: int = 2, seq_len: int = 128,
                dtype: str = "bfloat16", ranks: int = 1, max_memory: str | int = "2GB",
                groups: str | None = None) -> MemoryPlan:
    """Plan the memory of ``tangentft ntk``/``analyze`` on ``model`` (registry name, folder, config.json or
    hub id) for the selection ``params``, ``n`` examples of ``seq_len`` tokens and K = ``num_outputs``, per
    rank over ``ranks`` ranks, without loading any weight."""
    from ..methods.lora import register_terms
    from ..models.registry import meta_model
    from ..models.selection import select

    if n < 1 or num_outputs < 1 or seq_len < 1 or ranks < 1:
        raise TangentError(f"n, num_outputs, seq_len and ranks must be ≥ 1, got {n}, {num_outputs}, {seq_len}, {ranks}")
    budget = parse_memory(max_memory)
    resolve_dtype(dtype)
    loaded = meta_model(model, dtype=dtype)
    tm = _Skeleton(loaded, num_outputs)
    register_terms()  # a lora(...) term injects an adapter into the skeleton
    selection = select(tm, params, groups=groups)
    K = num_outputs
    weights = float(sum(p.numel() * p.element_size() for p in tm.parameters()))
    per_token = bytes_per_token(tm)
    token_budget = max(int(budget / 2 / per_token), seq_len)
    chunk = max(1, min(DEFAULT_CHUNK, token_budget // seq_len, n))
    chunks = -(-n // chunk)
    per_example = 0.0
    how_count: dict[str, int] = {}
    for b in selection.blocks:
        shape = block_shape(tm, b)
        how = choose(shape, n_held=n, n_total=n, tokens=seq_len, K=K, traced=False, budget=budget)
        how_count[how] = how_count.get(how, 0) + 1
        per_example += feature_bytes(shape, how, seq_len, K)
    features = per_example * n
    per_chunk_features = per_example * chunk
    chunks_per_tile = max(1, int(budget / 2 // per_chunk_features)) if per_chunk_features else chunks
    tiles = -(-chunks // chunks_per_tile)
    held = per_chunk_features * min(chunks, chunks_per_tile)
    streamed = per_chunk_features if tiles > 1 else 0.0
    kernel = 8.0 * (n * K) ** 2 * (1 + len(selection.groups))
    activations = per_token * chunk * seq_len
    selected = selection.num_params(tm)
    trained = TRAIN_BYTES_PER_PARAM * selected
    return MemoryPlan(
        model=model, params=params, n=n, K=K, seq_len=seq_len, dtype=str(tm.dtype).removeprefix("torch."),
        ranks=ranks, budget_bytes=budget, model_params=int(sum(p.numel() for p in tm.parameters())),
        selected_params=int(selected), chunk_size=chunk, chunks=chunks, tiles=tiles, contractions=how_count,
        weights_bytes=weights, activation_bytes_per_chunk=activations, feature_bytes=features,
        held_feature_bytes=held, kernel_bytes=kernel,
        entk_peak_bytes=weights + activations + held + streamed + kernel,
        train_state_ddp_bytes=weights + trained,
        train_state_sharded_bytes=(weights + trained) / ranks,
    )
