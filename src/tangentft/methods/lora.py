"""LoRA through PEFT: inject adapters on structure-map roles and layers.

tangentft does not re-implement LoRA: it builds a :class:`peft.LoraConfig` whose ``target_modules`` are the
exact module paths the structure map gives for the requested roles/layers, and lets PEFT inject, save and
load. With PEFT's standard init (B = 0) the adapter starts as a no-op, so ∂f/∂A = 0 at θ0: the LoRA
kernel at init is the B-only kernel (LoRA-NTK paper, §3).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..device import seeded
from ..errors import TangentError
from ..io import save_safetensors, write_json
from ..models.selection import register_term_kind, resolve, term_module_paths
from ..models.spec import DEFAULT_LORA_RANK, LoraOptions, Spec, SpecTerm
from .base import FineTuneMethod, MethodConfig, register_method

HEAD_MODULE = "task_head"  # the encoder head's module name inside a stand-alone adapter's base model


def save_peft_adapter(peft_model, target: Path, head: nn.Module | None = None) -> None:
    """PEFT ``save_pretrained`` into ``target`` (adapter_config.json + adapter_model.safetensors), each file
    renamed into place from a temporary folder beside it, so an interrupted save never leaves a torn file.

    ``head`` (an encoder task model's trained head) travels inside the adapter through PEFT's
    ``modules_to_save`` as module ``task_head`` of the base model: plain ``PeftModel.from_pretrained`` on a
    base that has a ``task_head`` ``nn.Linear`` of the same shape loads it with the adapter.
    """
    target.mkdir(parents=True, exist_ok=True)
    if head is not None:
        peft_model = with_head(peft_model, head)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        # No embedding layer is ever adapted; "auto" would look the base id up on the hub to find out.
        peft_model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        for f in Path(tmp).iterdir():
            os.replace(f, target / f.name)  # same filesystem: each file lands atomically


def with_head(peft_model, head: nn.Module):
    """A copy of ``peft_model`` whose base also holds ``head`` as PEFT ``modules_to_save`` module ``task_head``.

    Built with PEFT's own calls: the adapter state is read (``get_peft_model_state_dict``), the copy is
    unloaded to its base, the head attached, the adapter re-created from the same config plus
    ``modules_to_save`` and its state set back (``set_peft_model_state_dict``). ``peft_model`` is untouched.
    """
    import copy

    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    work = copy.deepcopy(peft_model)
    state = get_peft_model_state_dict(work, save_embedding_layers=False)
    config = copy.deepcopy(work.peft_config["default"])
    base = work.unload()
    base.add_module(HEAD_MODULE, copy.deepcopy(head))
    config.modules_to_save = [HEAD_MODULE]
    config.inference_mode = False
    with torch.random.fork_rng(devices=[]):  # re-creating the adapter draws an init we overwrite at once
        export = get_peft_model(base, config)
    # the wrapped head's copy is the trained head already; add its tensors so the state is complete
    head_state = get_peft_model_state_dict(export, save_embedding_layers=False)
    state.update({k: v for k, v in head_state.items() if f".{HEAD_MODULE}." in k})
    result = set_peft_model_state_dict(export, state)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if HEAD_MODULE not in k]
    if unexpected:
        raise TangentError(f"re-created adapter does not take tensor {unexpected[0]} of the trained one")
    return export


def inject_lora(
    task_model,
    spec: str | Spec,
    *,
    r: int | None = None,
    alpha: float | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    init: str = "default",
):
    """Inject one PEFT LoRA adapter ("default") into ``task_model.hf`` on the spec's lora terms.

    ``r``/``alpha`` override the spec's ``lora(r=…,alpha=…)`` options (alpha defaults to 2r). ``init`` is
    ``"default"`` (PEFT's standard init: B = 0, the adapter is a no-op) or ``"random"`` (both factors random;
    used to test kernels with B ≠ 0). The PEFT wrapper is kept as ``task_model.peft_model`` for
    ``save_pretrained``. Returns the :class:`peft.LoraConfig`.
    """
    spec = Spec.parse(spec).check_layers(task_model.structure.num_layers)
    terms = list(spec.lora_terms or spec.terms)
    return _inject(task_model, terms, term_module_paths(task_model, terms), r=r, alpha=alpha, dropout=dropout,
                   seed=seed, init=init)


def _inject(task_model, terms: list[SpecTerm], paths: list[str], *, r: int | None = None,
            alpha: float | None = None, dropout: float = 0.0, seed: int = 0, init: str = "default"):
    """The ``lora`` term kind (registered with :func:`tangentft.models.selection.register_term_kind`): one PEFT
    LoRA adapter on ``paths``, the module paths the terms resolved to."""
    from peft import LoraConfig, get_peft_model

    opts = terms[0].lora or LoraOptions()
    for t in terms[1:]:
        if (t.lora or LoraOptions()) != opts:
            raise TangentError("all lora terms of one selection must share r and alpha (one adapter per model)")
    opts = opts.overridden(r, alpha)
    if getattr(task_model, "peft_model", None) is not None:
        raise TangentError("this task model already carries a LoRA adapter")
    config = LoraConfig(
        r=opts.r,
        lora_alpha=opts.scale_alpha,
        lora_dropout=dropout,
        target_modules=paths,
        init_lora_weights=init == "default",
        bias="none",
        # GPT-2's Conv1D stores weights (in, out); PEFT needs to be told.
        fan_in_fan_out=task_model.structure.arch == "gpt2",
    )
    _warn_rank_beyond_full(task_model, paths, opts.r)
    # On the meta device (``plan``) the factors are shapes only: PEFT would otherwise allocate them on the CPU.
    meta = torch.device("meta") if task_model.device.type == "meta" else contextlib.nullcontext()
    with seeded(seed, task_model.device), meta:
        peft_model = get_peft_model(task_model.hf, config)
    # Not a submodule: the parameters are already reachable as task_model.hf.*; keep the wrapper for saving.
    object.__setattr__(task_model, "peft_model", peft_model)
    return config


def register_terms() -> None:
    """Give ``lora(...)`` selection terms their meaning (:func:`_inject`) wherever specs are resolved."""
    register_term_kind("lora", _inject)


def _warn_rank_beyond_full(task_model, paths: list[str], r: int) -> None:
    """Warn when r exceeds min(d_in, d_out) of a target: B·A of a d_out×d_in weight has rank at most that, so
    the extra factors cost parameters (and memory) without allowing any update a full-rank adapter cannot make."""
    import warnings

    full = {}
    for path in paths:
        weight = getattr(task_model.hf.get_submodule(path), "weight", None)
        if weight is not None and weight.dim() == 2:
            full[path] = min(weight.shape)
    if full and r > min(full.values()):
        path = min(full, key=full.get)
        warnings.warn(f"LoRA rank r={r} exceeds the full rank {full[path]} of {path} (min of its input and output "
                      f"sizes): B·A cannot use more, so the extra rank only adds parameters; r ≤ {full[path]} trains "
                      "the same updates", stacklevel=2)


def lora_spec(task_model, params: Spec | None, r: int | None = None, alpha: float | None = None) -> Spec:
    """The spec a LoRA run trains (:meth:`Spec.as_lora`, ``r``/``alpha`` the config's ``lora_r``/``lora_alpha``).

    Unset ``params`` means ``q,v`` in every layer (plus the head for encoders, whose head is new).
    """
    if params is None:
        params = Spec.parse("lora:q,v@all" + (";head" if getattr(task_model, "head", None) is not None else ""))
    return params.as_lora(r, alpha)


@dataclass
class LoraMethodConfig(MethodConfig):
    """LoRA through PEFT; ``params`` like ``lora(r=8):q,v@0,15,29`` or plain ``q,v@all``."""

    lora_r: int | None = field(default=None, metadata={"help": f"LoRA rank (overrides the spec's r; default {DEFAULT_LORA_RANK})."})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA alpha (overrides the spec's alpha; default 2r)."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input (0 keeps f deterministic)."})

    def __post_init__(self):
        super().__post_init__()
        LoraOptions().overridden(self.lora_r, self.lora_alpha)  # the options' own checks, before any loading
        if not 0 <= self.lora_dropout < 1:
            raise TangentError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@register_method
class LoraMethod(FineTuneMethod):
    """LoRA adapters injected by PEFT on structure-map roles; θ0 for the pull is the adapter's init (B = 0)."""

    name = "lora"
    config_class = LoraMethodConfig

    def prepare(self, task_model):
        from .full import freeze_all_but

        cfg = self.config
        spec = lora_spec(task_model, cfg.params, cfg.lora_r, cfg.lora_alpha).check_layers(
            task_model.structure.num_layers)
        inject_lora(task_model, Spec(spec.lora_terms), dropout=cfg.lora_dropout, seed=cfg.seed)
        self.selected = resolve(task_model, spec)
        freeze_all_but(task_model, {b.name for b in self.selected.blocks})
        return task_model

    def save(self, model, out_dir: Path) -> None:
        """PEFT ``save_pretrained`` into ``out_dir/adapter`` (adapter_config.json + adapter_model.safetensors);
        fully trained extras (an encoder head) go to ``out_dir/extra.safetensors``. An encoder's head travels in
        the adapter whether it trained or not: a seeded head is part of the task model plain PEFT must rebuild."""
        out_dir = Path(out_dir)
        save_peft_adapter(model.peft_model, out_dir / "adapter", head=getattr(model, "head", None))
        extra = {n: p for n, p in self.trainable_parameters(model).items() if ".lora_" not in n}
        if extra:
            save_safetensors(out_dir / "extra.safetensors", extra, {"method": self.name})
        write_json(out_dir / "selection.json", self.selected.to_json())
