"""LoRA through PEFT: inject adapters on structure-map roles and layers.

tangentft does not re-implement LoRA: it builds a :class:`peft.LoraConfig` whose ``target_modules`` are the
exact module paths the structure map gives for the requested roles/layers, and lets PEFT inject, save and
load. With PEFT's standard init (B = 0) the adapter starts as a no-op, so ∂f/∂A = 0 at θ0: the LoRA
kernel at init is the B-only kernel (LoRA-NTK paper, §3).
"""

from __future__ import annotations

import torch

from ..errors import TangentError
from ..models.selection import SpecTerm, expand_targets, parse_spec


def lora_target_paths(task_model, terms: list[SpecTerm]) -> list[str]:
    """Module paths (inside ``task_model.hf``) that the LoRA terms adapt, via the structure map."""
    smap = task_model.structure
    paths: list[str] = []
    for term in terms:
        layers = term.layers if term.layers is not None else range(smap.num_layers)
        for layer in layers:
            for role in expand_targets(term.targets, smap):
                paths.append(smap.ref(layer, role).path)
    return list(dict.fromkeys(paths))


def inject_lora(
    task_model,
    spec: str | list[SpecTerm],
    *,
    r: int | None = None,
    alpha: float | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    init_b: str = "zero",
):
    """Inject one PEFT LoRA adapter ("default") into ``task_model.hf`` on the spec's lora terms.

    ``r``/``alpha`` override the spec's ``lora(r=…,alpha=…)`` options (alpha defaults to 2r). ``init_b`` is
    ``"zero"`` (PEFT's standard init, adapter is a no-op) or ``"random"`` (both factors random; used to test
    kernels with B ≠ 0). The PEFT wrapper is kept as ``task_model.peft_model`` for ``save_pretrained``.
    Returns the :class:`peft.LoraConfig`.
    """
    from peft import LoraConfig, get_peft_model

    terms = parse_spec(spec, task_model.structure.num_layers) if isinstance(spec, str) else spec
    terms = [t for t in terms if t.lora is not None] or [t for t in terms]
    opts = terms[0].lora or {}
    for t in terms[1:]:
        if (t.lora or {}) != opts:
            raise TangentError("all lora terms of one selection must share r and alpha (one adapter per model)")
    r = int(r if r is not None else opts.get("r", 8))
    if r <= 0:
        raise TangentError(f"LoRA rank must be positive, got r={r}")
    alpha = float(alpha if alpha is not None else (opts.get("alpha") or 2 * r))
    if getattr(task_model, "peft_model", None) is not None:
        raise TangentError("this task model already carries a LoRA adapter")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_paths(task_model, terms),
        init_lora_weights=init_b == "zero",
        bias="none",
        # GPT-2's Conv1D stores weights (in, out); PEFT needs to be told.
        fan_in_fan_out=task_model.structure.arch == "gpt2",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(task_model.hf, config)
    # Not a submodule: the parameters are already reachable as task_model.hf.*; keep the wrapper for saving.
    object.__setattr__(task_model, "peft_model", peft_model)
    return config
