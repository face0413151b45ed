"""The selection spec as a value: :class:`Spec`, parsed once where text enters (the CLI, a run's config) and
carried down; rendered back to text (``str(spec)``) only for config files and commands.

    SPEC   := TERM (";" TERM)*
    TERM   := ["lora" ["(" r=8,alpha=16 ")"] ":"] TARGETS ["@" LAYERS] ["." PART]
    TARGETS:= comma list of roles q k v o gate up down, or the aliases attn (q,k,v,o), mlp (gate,up,down),
              all (every role), norm (the layer's norms), or the whole-model names head, embed
    LAYERS := all | 3 | 0,15,29 | 0-5 | ::5 (every 5th) | 2:10:2 (python slice)
    PART   := weight | bias (default: both, where a bias exists); for lora terms A | B (default: both)

Examples: ``q,v@0,15,29`` · ``o@::5`` · ``attn@all.bias`` · ``lora(r=8):q,v@0,15,29`` · ``head`` · ``norm@all``.

A spec is parsed without the model: layer slices (``::5``) stay symbolic until :meth:`SpecTerm.layer_indices`
reads them against the model's layer count. Every rewrite of a spec (a candidate made a LoRA adapter like the
base, a group label made a term, LoRA options spelled out) is a method here, so no regex outside this module
takes a spec apart. :class:`LoraOptions` holds the LoRA term's defaults (r = 8, alpha = 2r) and checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache

from ..errors import TangentError
from .structure import ALL_ROLES, ATTN_ROLES, FFN_ROLES

WHOLE_MODEL_TARGETS = ("head", "embed")
ALIASES = {"attn": ATTN_ROLES, "mlp": FFN_ROLES, "all": ALL_ROLES}
DEFAULT_LORA_RANK = 8


@dataclass(frozen=True)
class LoraOptions:
    """A ``lora(r=…,alpha=…)`` term's options: rank r (default 8) and alpha (default 2r, PEFT's scale alpha/r = 2)."""

    r: int = DEFAULT_LORA_RANK
    alpha: float | None = None

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise TangentError(f"LoRA rank must be positive, got r={self.r}")
        if self.alpha is not None and not self.alpha > 0:
            raise TangentError(f"LoRA alpha must be positive, got alpha={self.alpha}")

    @property
    def scale_alpha(self) -> float:
        """The alpha PEFT is given: the option, or 2r when unset."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r

    def overridden(self, r: int | None = None, alpha: float | None = None) -> LoraOptions:
        """These options with a run's ``lora_r``/``lora_alpha`` (None: keep) applied and alpha spelled out."""
        rank = self.r if r is None else int(r)
        return LoraOptions(rank, float(alpha) if alpha is not None else LoraOptions(rank, self.alpha).scale_alpha)

    def __str__(self) -> str:
        return f"lora(r={self.r}" + (f",alpha={self.alpha:g})" if self.alpha is not None else ")")


def _parse_lora(options: str, raw: str) -> LoraOptions:
    values: dict[str, int | float] = {}
    for kv in filter(None, options.split(",")):
        if "=" not in kv:
            raise TangentError(f"bad LoRA option '{kv}' in '{raw}': write key=value, e.g. lora(r=8,alpha=16)")
        k, v = (s.strip() for s in kv.split("=", 1))
        if k not in ("r", "alpha"):
            raise TangentError(f"unknown LoRA option '{k}' in '{raw}': choose from r, alpha")
        try:
            values[k] = float(v) if "." in v or k == "alpha" else int(v)
        except ValueError:
            raise TangentError(f"bad LoRA option value '{kv}' in '{raw}'") from None
    if not isinstance(values.get("r", 1), int):
        raise TangentError(f"LoRA rank must be a whole number, got r={values['r']} in '{raw}'")
    return LoraOptions(**values)


@dataclass(frozen=True)
class SpecTerm:
    """One parsed term of a selection spec: ``body`` is its text after any ``lora(...):`` prefix."""

    targets: tuple[str, ...]
    layers: tuple[int, ...] | None  # None: all layers, or the slice ``stride`` (resolved against the model)
    part: str | None  # weight | bias | A | B | None (all)
    lora: LoraOptions | None = None
    text: str = ""
    body: str = ""
    stride: tuple[int | None, int | None, int | None] | None = None
    at: str = ""  # the LAYERS text, for messages

    def layer_indices(self, num_layers: int) -> tuple[int, ...]:
        """The layers this term names in a model of ``num_layers`` layers (an error for one it lacks)."""
        if self.stride is not None:
            out = tuple(range(num_layers)[slice(*self.stride)])
            if not out:
                raise TangentError(f"layer slice '@{self.at}' in '{self.text}' selects no layer of a {num_layers}-layer "
                                   "model")
            return out
        if self.layers is None:
            return tuple(range(num_layers))
        beyond = [i for i in self.layers if not 0 <= i < num_layers]
        if beyond:
            raise TangentError(f"layer {beyond[0]} in '@{self.at}' does not exist: the model has layers "
                               f"0-{num_layers - 1}")
        return self.layers

    def with_lora(self, options: LoraOptions) -> SpecTerm:
        """This term as a LoRA term with ``options`` (its text rewritten to say so)."""
        return replace(self, lora=options, text=f"{options}:{self.body}")

    @property
    def whole_model(self) -> bool:
        """Whether the term names head/embed/norm tensors (trained in full, never through a LoRA adapter)."""
        return any(t in (*WHOLE_MODEL_TARGETS, "norm") for t in self.targets)


def _parse_layers(text: str, raw: str):
    """(explicit layers or None, slice parts or None) of a term's ``@LAYERS``."""
    text = text.strip()
    if text in ("", "all"):
        return None, None
    try:
        if ":" in text:
            parts = tuple(int(p) if p else None for p in text.split(":"))
            if len(parts) > 3 or parts[2:3] == (0,):
                raise ValueError
            return None, (parts + (None,) * 3)[:3]
        out: list[int] = []
        for piece in text.split(","):
            if re.fullmatch(r"\d+-\d+", piece.strip()):
                a, b = (int(x) for x in piece.split("-"))
                if b < a:
                    raise TangentError(f"reversed layer range '{piece.strip()}' in '@{text}': write {b}-{a}")
                out.extend(range(a, b + 1))
            else:
                out.append(int(piece))
    except ValueError:
        raise TangentError(f"bad layer list '{text}' in '{raw}': use all, 3, 0,15,29, 0-5 or ::5") from None
    if any(i < 0 for i in out):
        raise TangentError(f"negative layer in '@{text}'")
    return tuple(dict.fromkeys(out)), None


def _parse_term(raw: str) -> SpecTerm:
    lora = None
    body = raw
    m = re.match(r"^lora(?:\(([^)]*)\))?:(.*)$", raw)
    if m:
        lora = _parse_lora(m.group(1) or "", raw)
        body = m.group(2).strip()
    rest, part = body, None
    m = re.match(r"^(.*)\.(weight|bias|A|B)$", body)
    if m:
        rest, part = m.group(1), m.group(2)
        if (part in ("A", "B")) != (lora is not None):
            raise TangentError(f"part '.{part}' in '{raw}' needs {'a lora term' if part in 'AB' else 'a module term'}")
    targets_text, _, layers_text = rest.partition("@")
    targets: list[str] = []
    for t in (x.strip() for x in targets_text.split(",")):
        if t in ALIASES or t in ALL_ROLES or t in WHOLE_MODEL_TARGETS or t == "norm":
            targets.append(t)
        else:
            known = ", ".join(ALL_ROLES + ("attn", "mlp", "all", "norm") + WHOLE_MODEL_TARGETS)
            raise TangentError(f"unknown module type '{t}' in '{raw}': choose from {known}")
    if lora is not None and any(t not in ALL_ROLES and t not in ALIASES for t in targets):
        raise TangentError(f"LoRA term '{raw}' can only adapt projections ({', '.join(ALL_ROLES)})")
    layers, stride = _parse_layers(layers_text, raw)
    return SpecTerm(tuple(dict.fromkeys(targets)), layers, part, lora, raw, body, stride, layers_text.strip())


@dataclass(frozen=True)
class Spec:
    """A parsed selection spec: its terms, in order. ``str(spec)`` is its text: as written when parsed (so a config
    file keeps the user's spelling), its terms joined by ``;`` when built by a rewrite."""

    terms: tuple[SpecTerm, ...]
    source: str | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, text: str | Spec) -> Spec:
        """Parse spec text (see the module docstring for the grammar); a :class:`Spec` passes through."""
        return text if isinstance(text, Spec) else _parse(str(text))

    def __str__(self) -> str:
        return self.source if self.source is not None else ";".join(t.text for t in self.terms)

    def __add__(self, other: Spec) -> Spec:
        return Spec(self.terms + other.terms)

    @property
    def lora_terms(self) -> tuple[SpecTerm, ...]:
        """The ``lora(...)`` terms."""
        return tuple(t for t in self.terms if t.lora is not None)

    @property
    def lora(self) -> LoraOptions | None:
        """The options of the first LoRA term (one adapter per model shares them), None without LoRA terms."""
        return self.lora_terms[0].lora if self.lora_terms else None

    def check_layers(self, num_layers: int) -> Spec:
        """This spec, after checking every term's layers exist in a ``num_layers``-layer model."""
        for t in self.terms:
            t.layer_indices(num_layers)
        return self

    def as_lora(self, r: int | None = None, alpha: float | None = None) -> Spec:
        """The spec a LoRA run trains: every projection term a LoRA term with its options overridden by ``r``/
        ``alpha`` and spelled out (so config.json and the selection say what was injected); head/norm/embed
        terms stay fully trained."""
        return Spec(tuple(t if t.lora is None and t.whole_model else
                          t.with_lora((t.lora or LoraOptions()).overridden(r, alpha)) for t in self.terms))

    def trained_like(self, candidates: Spec) -> Spec:
        """``candidates`` as this selection would train them: when this one trains LoRA factors, each plain
        projection candidate becomes a LoRA term of the same options; head/embed/norm and LoRA candidates stay."""
        opts = self.lora
        if opts is None:
            return candidates
        return Spec(tuple(t.with_lora(opts) if t.lora is None and not t.whole_model else t
                          for t in candidates.terms))

    @staticmethod
    def of_group(label: str) -> Spec:
        """The term that trains one kernel group label: ``L5.o`` -> ``o@5``, ``L3.attn_norm`` -> ``norm@3``;
        ``head``/``embed`` stay."""
        m = re.fullmatch(r"L(\d+)\.(\w+)", label)
        if m is None:
            return Spec.parse(label)
        layer, role = m.groups()
        return Spec.parse(f"{role}@{layer}" if role in ALL_ROLES else f"norm@{layer}")


@lru_cache(maxsize=256)
def _parse(text: str) -> Spec:
    # A Spec is immutable, so one parse per distinct text serves every caller.
    if not text.strip():
        raise TangentError("empty parameter selection: give a spec such as 'q,v@0,15,29' or 'head'")
    terms = tuple(_parse_term(raw.strip()) for raw in text.split(";") if raw.strip())
    if not terms:
        raise TangentError(f"empty parameter selection '{text}'")
    return Spec(terms, text)
