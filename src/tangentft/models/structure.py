"""Per-architecture structure maps: the only place that knows module names.

A :class:`StructureMap` says, for one architecture, where each layer's attention projections
(q, k, v, o) and feed-forward projections (gate, up, down) live, how many heads and key/value heads there
are, and which modules are coupled (a head's q/k/v output rows ↔ the o input columns of that head; an FFN
channel's gate/up output rows ↔ the down input column). Everything that selects parameters — kernels,
training methods, S2FT — resolves them through this map, never through name substrings.

Roles per architecture (the names users write in ``--params``):

======  ======================  ===============================  ==============================
role    llama (and mistral…)    bert                             gpt2
======  ======================  ===============================  ==============================
q       self_attn.q_proj        attention.self.query             attn.c_attn[:, 0:d]
k       self_attn.k_proj        attention.self.key               attn.c_attn[:, d:2d]
v       self_attn.v_proj        attention.self.value             attn.c_attn[:, 2d:3d]
o       self_attn.o_proj        attention.output.dense           attn.c_proj
gate    mlp.gate_proj           —                                —
up      mlp.up_proj             intermediate.dense               mlp.c_fc
down    mlp.down_proj           output.dense                     mlp.c_proj
======  ======================  ===============================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import TangentError

ATTN_ROLES = ("q", "k", "v", "o")
FFN_ROLES = ("gate", "up", "down")
ALL_ROLES = ATTN_ROLES + FFN_ROLES


@dataclass(frozen=True)
class ModuleRef:
    """Where one role of one layer lives.

    ``path`` is the dotted module path inside the Hugging Face model. ``out_range`` narrows a fused module
    (GPT-2's ``c_attn`` holds q, k and v) to this role's output channels. ``transposed`` is True for GPT-2's
    ``Conv1D``, whose weight is stored (in, out) instead of ``nn.Linear``'s (out, in).
    """

    path: str
    out_range: tuple[int, int] | None = None
    transposed: bool = False

    @property
    def out_axis(self) -> int:
        """Axis of the weight tensor that indexes output channels."""
        return 1 if self.transposed else 0

    @property
    def in_axis(self) -> int:
        """Axis of the weight tensor that indexes input channels."""
        return 0 if self.transposed else 1


@dataclass
class StructureMap:
    """Layers, module roles, head geometry and coupled pairs of one architecture."""

    arch: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    layers: list[dict[str, ModuleRef]]
    norms: list[dict[str, str]]
    final_norm: str | None
    embeddings: list[str] = field(default_factory=list)

    # -- roles -------------------------------------------------------------------------------------------
    @property
    def roles(self) -> tuple[str, ...]:
        """Roles present in this architecture, in canonical order."""
        return tuple(r for r in ALL_ROLES if r in self.layers[0])

    def ref(self, layer: int, role: str) -> ModuleRef:
        """The module reference for ``role`` in ``layer``; a clear error for unknown roles or layers."""
        if not 0 <= layer < self.num_layers:
            raise TangentError(f"layer {layer} out of range: {self.arch} model has layers 0..{self.num_layers - 1}")
        if role not in self.layers[layer]:
            raise TangentError(
                f"unknown module type '{role}' for {self.arch}: choose from {', '.join(self.roles)}"
            )
        return self.layers[layer][role]

    def module(self, model: nn.Module, layer: int, role: str) -> nn.Module:
        """The ``nn.Module`` (possibly a PEFT wrapper) holding ``role`` of ``layer`` inside ``model``."""
        return model.get_submodule(self.ref(layer, role).path)

    # -- geometry ----------------------------------------------------------------------------------------
    @property
    def queries_per_kv(self) -> int:
        """Query heads sharing one key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def q_channels(self, head: int) -> range:
        """Output channels of q (and input channels of o) that belong to query head ``head``."""
        return range(head * self.head_dim, (head + 1) * self.head_dim)

    def kv_channels(self, kv_head: int) -> range:
        """Output channels of k and v that belong to key/value head ``kv_head``."""
        return range(kv_head * self.head_dim, (kv_head + 1) * self.head_dim)

    def kv_group(self, kv_head: int) -> range:
        """Query heads that read key/value head ``kv_head`` (grouped-query attention)."""
        g = self.queries_per_kv
        return range(kv_head * g, (kv_head + 1) * g)

    def coupled(self) -> dict[str, tuple[tuple[str, ...], str]]:
        """Coupled structures: name -> (roles whose output rows are selected, role whose input columns match).

        ``attention``: a head's rows of q, k, v ↔ that head's columns of o.
        ``ffn``: a channel's rows of gate/up ↔ that channel's column of down.
        """
        ffn_rows = tuple(r for r in ("gate", "up") if r in self.layers[0])
        return {"attention": (("q", "k", "v"), "o"), "ffn": (ffn_rows, "down")}

    def out_features(self, role: str) -> int:
        """Output width of a role's projection."""
        return {
            "q": self.num_heads * self.head_dim,
            "k": self.num_kv_heads * self.head_dim,
            "v": self.num_kv_heads * self.head_dim,
            "o": self.hidden_size,
            "gate": self.intermediate_size,
            "up": self.intermediate_size,
            "down": self.hidden_size,
        }[role]

    def in_features(self, role: str) -> int:
        """Input width of a role's projection."""
        return {
            "o": self.num_heads * self.head_dim,
            "down": self.intermediate_size,
        }.get(role, self.hidden_size)

    def describe(self) -> dict:
        """A JSON-friendly summary (for reports and ``tangentft models``)."""
        return {
            "arch": self.arch,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "roles": list(self.roles),
        }


# -- builders ----------------------------------------------------------------------------------------------
def _llama(config, prefix: str) -> StructureMap:
    n = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers, norms = [], []
    for i in range(n):
        base = f"{prefix}layers.{i}"
        layers.append(
            {
                "q": ModuleRef(f"{base}.self_attn.q_proj"),
                "k": ModuleRef(f"{base}.self_attn.k_proj"),
                "v": ModuleRef(f"{base}.self_attn.v_proj"),
                "o": ModuleRef(f"{base}.self_attn.o_proj"),
                "gate": ModuleRef(f"{base}.mlp.gate_proj"),
                "up": ModuleRef(f"{base}.mlp.up_proj"),
                "down": ModuleRef(f"{base}.mlp.down_proj"),
            }
        )
        norms.append({"attn_norm": f"{base}.input_layernorm", "ffn_norm": f"{base}.post_attention_layernorm"})
    return StructureMap(
        arch="llama",
        num_layers=n,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        layers=layers,
        norms=norms,
        final_norm=f"{prefix}norm",
        embeddings=[f"{prefix}embed_tokens"],
    )


def _bert(config, prefix: str) -> StructureMap:
    n = config.num_hidden_layers
    layers, norms = [], []
    for i in range(n):
        base = f"{prefix}encoder.layer.{i}"
        layers.append(
            {
                "q": ModuleRef(f"{base}.attention.self.query"),
                "k": ModuleRef(f"{base}.attention.self.key"),
                "v": ModuleRef(f"{base}.attention.self.value"),
                "o": ModuleRef(f"{base}.attention.output.dense"),
                "up": ModuleRef(f"{base}.intermediate.dense"),
                "down": ModuleRef(f"{base}.output.dense"),
            }
        )
        norms.append({"attn_norm": f"{base}.attention.output.LayerNorm", "ffn_norm": f"{base}.output.LayerNorm"})
    return StructureMap(
        arch="bert",
        num_layers=n,
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_attention_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        layers=layers,
        norms=norms,
        final_norm=None,
        embeddings=[f"{prefix}embeddings.word_embeddings", f"{prefix}embeddings.position_embeddings"],
    )


def _gpt2(config, prefix: str) -> StructureMap:
    n, d = config.n_layer, config.n_embd
    inner = config.n_inner or 4 * d
    layers, norms = [], []
    for i in range(n):
        base = f"{prefix}h.{i}"
        attn = f"{base}.attn.c_attn"
        layers.append(
            {
                "q": ModuleRef(attn, (0, d), transposed=True),
                "k": ModuleRef(attn, (d, 2 * d), transposed=True),
                "v": ModuleRef(attn, (2 * d, 3 * d), transposed=True),
                "o": ModuleRef(f"{base}.attn.c_proj", transposed=True),
                "up": ModuleRef(f"{base}.mlp.c_fc", transposed=True),
                "down": ModuleRef(f"{base}.mlp.c_proj", transposed=True),
            }
        )
        norms.append({"attn_norm": f"{base}.ln_1", "ffn_norm": f"{base}.ln_2"})
    return StructureMap(
        arch="gpt2",
        num_layers=n,
        hidden_size=d,
        num_heads=config.n_head,
        num_kv_heads=config.n_head,
        head_dim=d // config.n_head,
        intermediate_size=inner,
        layers=layers,
        norms=norms,
        final_norm=f"{prefix}ln_f",
        embeddings=[f"{prefix}wte", f"{prefix}wpe"],
    )


# model_type -> (builder, path prefix of the transformer body inside the causal-LM / encoder class)
_BUILDERS = {
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
    "bert": _bert,
    "gpt2": _gpt2,
}


def arch_of(config) -> str:
    """The structure-map family of a Hugging Face config (``llama``, ``bert`` or ``gpt2``)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _BUILDERS:
        raise TangentError(
            f"unsupported architecture '{model_type}': tangentft knows {', '.join(sorted(_BUILDERS))}"
        )
    return {"mistral": "llama", "qwen2": "llama"}.get(model_type, model_type)


def structure_map(model: nn.Module) -> StructureMap:
    """Build the structure map of a Hugging Face model (causal LM or bare encoder), paths relative to it."""
    config = model.config
    arch_of(config)
    builder = _BUILDERS[config.model_type]
    # The transformer body sits under a different attribute in each head class; find it by the first
    # layer's path instead of guessing class names.
    for prefix in ("model.", "transformer.", "bert.", ""):
        smap = builder(config, prefix)
        try:
            model.get_submodule(smap.layers[0]["o"].path)
        except AttributeError:
            continue
        return smap
    raise TangentError(f"could not locate the transformer layers of {type(model).__name__}")
