"""Fine-tuning methods: each decides which parameters train and how the update is parameterized."""

from __future__ import annotations

from ..models.selection import ParamSelection, parse_spec, resolve


def parameterize(task_model, spec: str, *, seed: int = 0, init_b: str = "zero") -> ParamSelection:
    """Resolve a selection spec on ``task_model``, injecting the PEFT LoRA adapter its lora terms ask for."""
    terms = parse_spec(spec, task_model.structure.num_layers)
    lora_terms = [t for t in terms if t.lora is not None]
    if lora_terms and getattr(task_model, "peft_model", None) is None:
        from .lora import inject_lora

        inject_lora(task_model, lora_terms, seed=seed, init_b=init_b)
    return resolve(task_model, terms)


# Importing a method module registers it (tangentft.methods.base.METHODS); the trainer and CLI list these.
from . import full, head, linearized, lora, nuclear_prox, s2ft  # noqa: E402, F401
