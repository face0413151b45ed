"""ParamSelection: which parameters (or which rows/columns of them) are "θ" for a kernel or a training run.

A selection is a parsed :class:`~tangentft.models.spec.Spec` (the spec language lives in
:mod:`tangentft.models.spec`) resolved through the :class:`StructureMap`.

This module resolves specs: :func:`select` takes a spec, lets the method that gives a
term kind its meaning create what the term names, resolves the spec to parameter blocks and groups them.
A ``lora`` term selects the ``lora_A``/``lora_B`` factors of a PEFT LoRA adapter; the LoRA method
registers (:func:`register_term_kind`) the function that injects that adapter on the module paths the
terms resolve to. Row/column subsets (S2FT selections) are built programmatically with
:meth:`ParamBlock.sliced`.

Each block carries a ``group`` label (default ``L{layer}.{role}``) for per-group kernels; regroup with
:meth:`ParamSelection.regroup` by a keyword or by a spec (one group per term).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import TangentError
from .spec import ALIASES, Spec, SpecTerm
from .structure import StructureMap


def expand_targets(targets: Iterable[str], smap: StructureMap) -> tuple[str, ...]:
    """Replace the aliases attn/mlp/all by the roles this architecture has (BERT and GPT-2 have no gate)."""
    out: list[str] = []
    for t in targets:
        out += [r for r in ALIASES[t] if r in smap.roles] if t in ALIASES else [t]
    return tuple(dict.fromkeys(out))


def parse_spec(spec: str | Spec, num_layers: int | None = None) -> list[SpecTerm]:
    """The terms of ``spec`` (:meth:`Spec.parse`), their layers checked against ``num_layers`` when given."""
    parsed = Spec.parse(spec)
    return list(parsed.check_layers(num_layers).terms if num_layers is not None else parsed.terms)


# -- resolved selection --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamBlock:
    """One selected parameter tensor, or a row/column subset of it.

    ``module_kind`` tells the kernel engine how per-example gradients arise: ``linear`` (nn.Linear, GPT-2
    Conv1D when ``transposed``, and LoRA factors), ``norm`` (LayerNorm/RMSNorm), ``embedding``.
    ``out_idx``/``in_idx`` are the selected output/input channels (None: all).
    """

    name: str
    module: str
    part: str  # "weight" or "bias"
    module_kind: str
    group: str
    layer: int | None = None
    role: str | None = None
    transposed: bool = False
    out_idx: tuple[int, ...] | None = None
    in_idx: tuple[int, ...] | None = None

    def sliced(self, out_idx: Iterable[int] | None = None, in_idx: Iterable[int] | None = None, group: str | None = None) -> ParamBlock:
        """This block restricted to output channels ``out_idx`` and/or input channels ``in_idx``."""
        return replace(
            self,
            out_idx=tuple(int(i) for i in out_idx) if out_idx is not None else self.out_idx,
            in_idx=tuple(int(i) for i in in_idx) if in_idx is not None and self.part == "weight" else self.in_idx,
            group=group or self.group,
        )

    def index(self, tensor: torch.Tensor) -> torch.Tensor:
        """The selected entries of ``tensor`` (the parameter's value or gradient), as a view or copy."""
        out_axis, in_axis = (1, 0) if self.transposed else (0, 1)
        if self.part != "weight" or tensor.dim() == 1:
            out_axis = 0
        t = tensor
        if self.out_idx is not None:
            t = t.index_select(out_axis, torch.tensor(self.out_idx, device=t.device))
        if self.in_idx is not None and tensor.dim() == 2:
            t = t.index_select(in_axis, torch.tensor(self.in_idx, device=t.device))
        return t

    def numel(self, param: torch.Tensor) -> int:
        """Number of selected scalars given the full parameter tensor."""
        n = param.numel()
        if self.out_idx is not None:
            out_axis = (1 if self.transposed else 0) if param.dim() == 2 else 0
            n = n // param.shape[out_axis] * len(self.out_idx)
        if self.in_idx is not None and param.dim() == 2:
            in_axis = 0 if self.transposed else 1
            n = n // param.shape[in_axis] * len(self.in_idx)
        return n


@dataclass
class ParamSelection:
    """An ordered list of :class:`ParamBlock` with the spec it came from."""

    blocks: list[ParamBlock]
    spec: str = ""
    lora: dict | None = field(default=None)

    def __post_init__(self):
        if not self.blocks:
            raise TangentError(f"parameter selection '{self.spec}' matches no parameter")

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self):
        return len(self.blocks)

    @property
    def groups(self) -> OrderedDict[str, list[ParamBlock]]:
        """Blocks by group label, in first-seen order."""
        out: OrderedDict[str, list[ParamBlock]] = OrderedDict()
        for b in self.blocks:
            out.setdefault(b.group, []).append(b)
        return out

    def as_group(self, label: str) -> ParamSelection:
        """This selection with every block in the one group ``label``."""
        return ParamSelection([replace(b, group=label) for b in self.blocks], self.spec, self.lora)

    def regroup(self, by: str | Callable[[ParamBlock], str], structure: StructureMap | None = None) -> ParamSelection:
        """Relabel groups: a keyword (``layer``, ``role``, ``module``, ``param``, ``all``), a function of the
        block, or a spec ``SPEC;SPEC;…`` (needs the model's ``structure``).

        With a spec, each block joins the first term whose roles and layers cover it (``norm`` covers the
        layer norms, ``head`` the encoder head); the group is named by the term's text, and blocks no term
        covers go to ``other``. A term that covers no block is an error, so typos do not pass silently.
        """
        if callable(by):
            return ParamSelection([replace(b, group=by(b)) for b in self.blocks], self.spec, self.lora)
        by = by.strip()
        if by in GROUP_KEYWORDS:
            return self.regroup(GROUP_KEYWORDS[by])
        if structure is None:
            raise TangentError(f"unknown grouping '{by}': choose from {', '.join(GROUP_KEYWORDS)} (or a spec, given the model)")
        try:
            terms = Spec.parse(by).check_layers(structure.num_layers).terms
        except TangentError as exc:
            raise TangentError(f"groups '{by}' is neither a keyword ({', '.join(GROUP_KEYWORDS)}) nor a valid spec: "
                               f"{exc.message}") from None
        used: set[str] = set()

        def label(b: ParamBlock) -> str:
            for term in terms:
                if _covers(term, b, structure):
                    used.add(term.text)
                    return term.text
            return "other"

        out = self.regroup(label)
        unused = [t.text for t in terms if t.text not in used]
        if unused:
            raise TangentError(f"group '{unused[0]}' in groups '{by}' covers none of the selected parameters")
        return out

    def __add__(self, other: ParamSelection) -> ParamSelection:
        seen = {(b.name, b.out_idx, b.in_idx) for b in self.blocks}
        extra = [b for b in other.blocks if (b.name, b.out_idx, b.in_idx) not in seen]
        return ParamSelection(self.blocks + extra, f"{self.spec};{other.spec}", self.lora or other.lora)

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The distinct parameter tensors these blocks live in."""
        named = dict(model.named_parameters(remove_duplicate=False))
        return list({id(named[b.name]): named[b.name] for b in self.blocks}.values())

    def num_params(self, model: nn.Module) -> int:
        """Number of selected scalars."""
        named = dict(model.named_parameters(remove_duplicate=False))
        return sum(b.numel(named[b.name]) for b in self.blocks)

    def adapted_shapes(self, structure: StructureMap) -> dict[str, tuple[int, int]]:
        """(out, in) of every layer's linear matrix these blocks adapt, by ``L{layer}.{role}`` (a LoRA factor maps to
        the matrix it adapts)."""
        return {f"L{b.layer}.{b.role}": (structure.out_features(b.role), structure.in_features(b.role))
                for b in self.blocks if b.module_kind == "linear" and b.role is not None and b.layer is not None}

    def to_json(self) -> dict:
        """Serializable description (round-trips through :meth:`from_json`)."""
        return {"spec": self.spec, "lora": self.lora, "blocks": [asdict(b) for b in self.blocks]}

    @classmethod
    def from_json(cls, data: dict) -> ParamSelection:
        blocks = []
        for b in data["blocks"]:
            b = dict(b)
            for k in ("out_idx", "in_idx"):
                if b.get(k) is not None:
                    b[k] = tuple(b[k])
            blocks.append(ParamBlock(**b))
        return cls(blocks, data.get("spec", ""), data.get("lora"))

    def describe(self, model: nn.Module | None = None) -> str:
        """One line: the spec, block and group counts, and the parameter count when a model is given."""
        n = f", {self.num_params(model):,} params" if model is not None else ""
        return f"{self.spec or 'custom'}: {len(self.blocks)} tensors in {len(self.groups)} groups{n}"


GROUP_KEYWORDS: dict[str, Callable[[ParamBlock], str]] = {
    "layer": lambda b: f"L{b.layer}" if b.layer is not None else (b.role or b.module),
    "role": lambda b: b.role or b.module,
    "module": lambda b: f"L{b.layer}.{b.role}" if b.layer is not None else b.module,
    "param": lambda b: b.name,
    "all": lambda b: "all",
}


def _covers(term: SpecTerm, b: ParamBlock, smap: StructureMap) -> bool:
    targets = expand_targets(term.targets, smap)
    role_ok = "norm" in targets if b.module_kind == "norm" else b.role in targets
    return role_ok and (b.layer is None or b.layer in term.layer_indices(smap.num_layers))


def _module_kind(module: nn.Module) -> str:
    name = type(module).__name__
    if isinstance(module, nn.Embedding):
        return "embedding"
    if "Norm" in name:
        return "norm"
    return "linear"


def resolve(task_model: nn.Module, spec: str | Spec, *, prefix: str = "hf.") -> ParamSelection:
    """Resolve a spec against a TaskModel (``task_model.hf`` is the HF model, ``task_model.head`` its head).

    Raises :class:`TangentError` for unknown roles or layers, for a spec that matches no parameter, and for
    a LoRA term whose modules carry no injected LoRA adapter.
    """
    smap: StructureMap = task_model.structure
    spec = Spec.parse(spec)
    terms = spec.terms
    params = dict(task_model.named_parameters(remove_duplicate=False))
    blocks: list[ParamBlock] = []
    lora_opts = None

    def add(module_path: str, kind: str, group: str, layer=None, role=None, part=None, transposed=False, out_range=None):
        for p in ("weight", "bias"):
            if part is not None and p != part:
                continue
            path = module_path
            # Under an injected PEFT LoRA adapter the frozen W lives in the wrapper's base_layer.
            if f"{path}.{p}" not in params and f"{path}.base_layer.{p}" in params:
                path = f"{path}.base_layer"
            name = f"{path}.{p}"
            if name not in params:
                continue
            out_idx = None
            if out_range is not None:
                out_idx = tuple(range(*out_range))
            blocks.append(ParamBlock(name, path, p, kind, group, layer, role, transposed, out_idx))

    for term in terms:
        layers = term.layer_indices(smap.num_layers)
        for target in expand_targets(term.targets, smap):
            if target == "head":
                if getattr(task_model, "head", None) is None:
                    raise TangentError(f"'head' in '{term.text}': only encoder task models have a trainable head")
                add("head", "linear", "head", role="head", part=term.part)
                continue
            if target == "embed":
                for path in smap.embeddings:
                    add(prefix + path, "embedding", "embed", role="embed", part=term.part)
                continue
            for layer in layers:
                if target == "norm":
                    for nrole, path in smap.norms[layer].items():
                        add(prefix + path, "norm", f"L{layer}.{nrole}", layer, nrole, term.part)
                    continue
                if target not in smap.layers[layer]:
                    raise TangentError(
                        f"unknown module type '{target}' for {smap.arch}: choose from {', '.join(smap.roles)}"
                    )
                ref = smap.layers[layer][target]
                group = f"L{layer}.{target}"
                if term.lora is None:
                    add(prefix + ref.path, "linear", group, layer, target, term.part, ref.transposed, ref.out_range)
                    continue
                lora_opts = {"r": term.lora.r, "alpha": term.lora.alpha}
                mod = task_model.get_submodule(prefix + ref.path)
                if not hasattr(mod, "lora_A"):
                    raise TangentError(
                        f"'{term.text}': {ref.path} has no LoRA adapter; inject one first "
                        "(tangentft.methods.lora.inject_lora)"
                    )
                for factor in ("A", "B"):
                    if term.part is not None and term.part != factor:
                        continue
                    for adapter in getattr(mod, f"lora_{factor}"):
                        path = f"{prefix}{ref.path}.lora_{factor}.{adapter}"
                        if not any(b.module == path for b in blocks):
                            add(path, "linear", group, layer, target, "weight")
    return ParamSelection(_dedupe(blocks), str(spec), lora_opts)


def _dedupe(blocks: list[ParamBlock]) -> list[ParamBlock]:
    # GPT-2's q, k and v share c_attn: merge their output ranges into one block per (param, group).
    merged: OrderedDict[tuple[str, str], ParamBlock] = OrderedDict()
    for b in blocks:
        key = (b.name, b.group)
        if key in merged and merged[key].out_idx is not None and b.out_idx is not None:
            prev = merged[key]
            merged[key] = replace(prev, out_idx=tuple(sorted(set(prev.out_idx) | set(b.out_idx))))
        elif key not in merged:
            merged[key] = b
    return list(merged.values())


def module_kind_of(model: nn.Module, module_path: str) -> str:
    """Kind (linear / norm / embedding) of a module, used when blocks are built programmatically."""
    return _module_kind(model.get_submodule(module_path))


def term_module_paths(task_model: nn.Module, terms: list[SpecTerm]) -> list[str]:
    """Module paths inside ``task_model.hf`` of the projections the terms name, via the structure map."""
    smap: StructureMap = task_model.structure
    paths: list[str] = []
    for term in terms:
        for layer in term.layer_indices(smap.num_layers):
            for role in expand_targets(term.targets, smap):
                paths.append(smap.ref(layer, role).path)
    return list(dict.fromkeys(paths))


# -- term kinds whose meaning a method gives ----------------------------------------------------------------
class TermPreparer(Protocol):
    def __call__(self, task_model: Any, terms: list[SpecTerm], paths: list[str], *, seed: int, init: str) -> None: ...


TERM_KINDS: dict[str, TermPreparer] = {}
INITS = ("default", "random")


def register_term_kind(kind: str, prepare: TermPreparer) -> None:
    """Give ``KIND(...)`` terms their meaning: ``prepare(task_model, terms, paths, seed=, init=)`` creates the
    parameters they select (on the module ``paths`` the terms resolve to) before :func:`resolve` looks for them.

    The LoRA method registers ``lora`` (it injects one PEFT adapter). ``init`` is ``default`` (the method's
    usual start, e.g. LoRA's B = 0, a no-op) or ``random`` (every created factor random, to test kernels away
    from that start).
    """
    TERM_KINDS[kind] = prepare


def select(task_model: nn.Module, spec: str | Spec, *, seed: int = 0, groups: str | None = None,
           init: str = "default") -> ParamSelection:
    """Parse ``spec``, create what its method-defined terms name (a LoRA adapter for ``lora`` terms, unless the
    model carries one already), resolve it on ``task_model`` and group it by ``groups`` (see
    :meth:`ParamSelection.regroup`; None keeps ``L{layer}.{role}``)."""
    if init not in INITS:
        raise TangentError(f"unknown init '{init}': choose from {', '.join(INITS)}")
    smap: StructureMap = task_model.structure
    spec = Spec.parse(spec).check_layers(smap.num_layers)
    lora_terms = list(spec.lora_terms)
    if lora_terms and getattr(task_model, "peft_model", None) is None:
        if "lora" not in TERM_KINDS:
            raise TangentError(f"'{spec}' has lora terms but no method defines them: import tangentft.methods first")
        TERM_KINDS["lora"](task_model, lora_terms, term_module_paths(task_model, lora_terms), seed=seed, init=init)
    selection = resolve(task_model, spec)
    return selection.regroup(groups, smap) if groups is not None and groups.strip() else selection
