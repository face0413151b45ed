"""The one interface every fine-tuning method implements, and the registry the trainer looks methods up in.

A method answers two questions: which parameters train, and how the update is parameterized (in place,
through a PEFT adapter, through a linearized model, through an S2FT slice). The trainer knows nothing
else about it: it calls :meth:`FineTuneMethod.prepare`, optimizes ``trainable_parameters``, calls
``after_step`` after each optimizer step, and ``save`` at the end.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import TangentError
from ..models.selection import ParamSelection
from ..models.spec import Spec


@dataclass
class MethodConfig:
    """Fields shared by every method; subclasses add their own, each with ``metadata={"help": ...}``."""

    params: Spec | None = field(default=None, metadata={
        "help": "Parameter selection spec, e.g. 'q,v@0,15,29' or 'lora(r=8):q,v@all' (see tangentft.models.spec)."})
    seed: int = field(default=0, metadata={"help": "Seed for adapter initialisation and selections."})

    def __post_init__(self):
        if self.params is not None:
            self.params = Spec.parse(self.params)  # spec text enters here; methods get the parsed value

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for CLIs and docs."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    @classmethod
    def from_options(cls, method: str, options: dict[str, Any]) -> MethodConfig:
        """Build a config from CLI-style options; ``None`` means "not given".

        An option the method has no field for is an error (not silently ignored), naming the method.
        String values (from ``--method-opt key=value``) are converted to the field's annotated bool/int/float type.
        """
        return cls(**cls.coerce_options(method, options))

    @classmethod
    def coerce_options(cls, method: str, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` without the ones not given (None), each string converted to its field's type (bool, int,
        float; a spec's text parsed into a :class:`Spec`, so a run's config carries the value and config.json its
        text); an option the method has no field for is an error naming the method."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if value is None:
                continue
            if key not in known:
                opts = ", ".join(sorted(known))
                raise TangentError(f"option '{key}' does not apply to method '{method}' (its options: {opts})")
            kwargs[key] = _coerce(key, value, known[key])
            if isinstance(kwargs[key], float) and not math.isfinite(kwargs[key]):
                raise TangentError(f"option {key}={value!r}: expected a finite number")
        return kwargs

    def to_json(self) -> dict[str, Any]:
        """The config as a plain dict (for config.json): the spec as its text."""
        return asdict(self) | {"params": None if self.params is None else str(self.params)}


def _coerce(key: str, value: Any, f) -> Any:
    # Annotations are strings here (postponed evaluation): read the scalar type off them, e.g. "int | None".
    if not isinstance(value, str):
        return value
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if re.search(r"\bSpec\b", annotation):
        return Spec.parse(value)
    kind = next((t for t in ("bool", "int", "float") if re.search(rf"\b{t}\b", annotation)), None)
    try:
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise TangentError(f"option {key}={value!r}: expected a {kind}") from None
    return value


class FineTuneMethod(ABC):
    """Base class: subclasses set ``name`` and ``config_class`` and implement ``prepare`` and ``save``."""

    name: ClassVar[str]
    # Weight dtypes the method trains with, and why any other is refused (None: all of them).
    dtypes: ClassVar[tuple[str, ...] | None] = None
    dtypes_why: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # Why a kernel refresh (the kernel re-taken at a trained step, :meth:`load_kernel_state`) cannot describe this
    # method's run; "" when it can.
    refresh_why_not: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | None = None):
        self.config = config or self.config_class()

    @abstractmethod
    def prepare(self, task_model: nn.Module) -> nn.Module:
        """Freeze everything, create/unfreeze what this method trains, and return the module to optimize.

        The returned module's ``forward(input_ids, attention_mask)`` gives f(x) ∈ R^{batch×K}; exactly the
        parameters this method trains have ``requires_grad=True``.
        """

    def bind_data(self, examples: list) -> None:  # noqa: B027
        """Receive the training examples before :meth:`prepare`, for methods whose parameter selection is
        data-dependent (S2FT's activation/gradient strategies). Default: not needed."""

    def kernel_selection(self, task_model: nn.Module) -> ParamSelection:
        """Parameterize a fresh ``task_model`` the way this method trains it and return the selection of exactly
        the parameters it trains: what a kernel at θ0 of this method's run is taken over. Default:
        :meth:`prepare` and the ``selected`` it records (a method whose trained coordinates are entries of the
        base weights at θ0 may instead return them on the unchanged model, see S2FT)."""
        self.prepare(task_model)
        selected = getattr(self, "selected", None)
        if selected is None:
            raise TangentError(f"method '{self.name}' does not expose the parameters it trains (its 'selected' "
                               "selection), so no kernel of its run can be computed")
        return selected

    def load_kernel_state(self, task_model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Put a run's trained tensors at step t (a checkpoint's ``model_state``) into ``task_model`` as
        :meth:`kernel_selection` left it, so that the kernel over that selection, and the outputs, are the ones at
        θ_t (a kernel refresh, :mod:`tangentft.predict.refresh`). Default: :meth:`load_checkpoint_state` — the model
        the kernel is taken on is the one the method trains. A method whose kernel model is not its trained model
        (S2FT) maps the trained state onto it; one for which no refresh is meaningful sets ``refresh_why_not``."""
        self.load_checkpoint_state(task_model, state)

    def decay_selection(self, selection: ParamSelection) -> ParamSelection | None:
        """The part of a :meth:`kernel_selection` whose trained values are the model's own entries — what the
        optimizer's decoupled weight decay (toward 0) shrinks; None when no part is. Default: all of it."""
        return selection

    def trainable_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Name -> parameter for everything that trains (default: all with ``requires_grad``)."""
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def reference_point(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """θ0 for the pull toward initialization: detached copies of the trainable parameters now."""
        return {n: p.detach().clone() for n, p in self.trainable_parameters(model).items()}

    def after_step(self, model: nn.Module, lr: float) -> None:  # noqa: B027
        """Called after every optimizer step (proximal methods act here). Default: nothing."""

    def nonlinear(self, model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The network f(x; θ) and the values θt at which it is evaluated now, keyed like ``reference_point``.

        The trainer's linearization metrics compare ``f(x; θt)`` with f̄ = f(x; θ0) + J(x; θ0)(θt − θ0)
        by ``torch.func.functional_call`` on this module. Default: the prepared module and its trainable
        parameters; the linearized method returns the underlying network and its θ̄ instead.
        """
        return model, dict(self.trainable_parameters(model))

    def checkpoint_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Tensors that fully determine the trained state (for checkpoints and resume)."""
        return {n: p.detach().clone() for n, p in self.trainable_parameters(model).items()}

    def load_checkpoint_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`checkpoint_state` output into ``model`` in place."""
        params = self.trainable_parameters(model)
        missing = sorted(set(params) - set(state))
        if missing:
            raise TangentError(f"checkpoint lacks trained tensors: {', '.join(missing[:3])}")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])

    @abstractmethod
    def save(self, model: nn.Module, out_dir: Path) -> None:
        """Write the trained update (safetensors; PEFT format for adapters) to ``out_dir``."""


METHODS: dict[str, type[FineTuneMethod]] = {}


def register_method(cls: type[FineTuneMethod]) -> type[FineTuneMethod]:
    """Class decorator: make a method available to the trainer and CLI under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[FineTuneMethod]:
    """The method class registered as ``name``; a clear error listing the known ones otherwise."""
    if name not in METHODS:
        raise TangentError(f"unknown method '{name}': choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
