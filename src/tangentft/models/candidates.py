"""A base selection and candidate groups beside it, selected together for one kernel pass (``analyze``).

All the spec work an analysis needs happens here, on the parsed :class:`~tangentft.models.spec.Spec`, in one
call (:func:`select_candidates`): the model's default base, the candidates made adapters like the base
(:meth:`Spec.trained_like`), one injection for base and candidates, the grouping into ``base`` and the candidate
groups, their parameter counts and the matrix shapes the base adapts. The analysis gets these results back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TangentError
from .selection import ParamSelection, select
from .spec import LoraOptions, Spec

BASE_GROUP = "base"


@dataclass(frozen=True)
class Candidates:
    """The base selection and the candidate groups of one analysis, with the figures its report gives."""

    params: Spec  # the base: as given, or the model's default (:func:`default_params`)
    params_default: bool
    candidates: Spec | None  # as the base trains them (LoRA adapters when the base is LoRA)
    base: ParamSelection
    combined: ParamSelection  # the base as one group ``base``, then one group per candidate module
    groups: tuple[str, ...]  # the candidate group labels (``L5.o``), in order
    num_params: int
    num_params_candidates: dict[str, int]
    adapted_shapes: dict[str, tuple[int, int]]  # (out, in) of each linear matrix the base adapts, by ``L{i}.{role}``


def default_params(task_model) -> Spec:
    """The base analysed when none is given: LoRA r = 8 on q and v of the first, middle and last layers, plus the
    task head of encoders (new, so it trains too)."""
    last = task_model.structure.num_layers - 1
    layers = ",".join(str(i) for i in dict.fromkeys((0, last // 2 + last % 2, last)))
    head = ";head" if getattr(task_model, "head", None) is not None else ""
    return Spec.parse(f"{LoraOptions()}:q,v@{layers}{head}")


def select_candidates(task_model, params: Spec | None, candidates: Spec | None, *, seed: int = 0) -> Candidates:
    """Select the base ``params`` (None: :func:`default_params`) and the ``candidates`` beside it on ``task_model``.

    One injection serves base and candidates: a LoRA candidate is an adapter of its own (its kernel is the LoRA
    kernel of that module, not the whole-module kernel), and PEFT adapters are injected once per model. Candidates
    that add no parameter beyond the base are an error."""
    params_default = params is None
    params = default_params(task_model) if params is None else params
    if candidates is not None:
        candidates = params.trained_like(candidates)
        select(task_model, params + candidates, seed=seed)  # injects the adapters of both at once
    base = select(task_model, params, seed=seed)
    combined, groups, sizes = base.as_group(BASE_GROUP), (), {}
    if candidates is not None:
        held = {(b.name, b.out_idx, b.in_idx) for b in base.blocks}
        blocks = [b for b in select(task_model, candidates, seed=seed).blocks if (b.name, b.out_idx, b.in_idx) not in held]
        if not blocks:
            raise TangentError(f"candidates '{candidates}' adds no parameter beyond params '{params}'")
        extra = ParamSelection(blocks, str(candidates))
        combined, groups = combined + extra, tuple(extra.groups)
        sizes = {g: ParamSelection(group, g).num_params(task_model) for g, group in extra.groups.items()}
    return Candidates(params=params, params_default=params_default, candidates=candidates, base=base,
                      combined=combined, groups=groups, num_params=base.num_params(task_model),
                      num_params_candidates=sizes, adapted_shapes=base.adapted_shapes(task_model.structure))
