"""A stable fingerprint of a model's base weights, so adapters and kernels can refuse the wrong base."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

# Adapter tensors are not part of the base: a fingerprint must not change when LoRA/S2FT is injected.
_ADAPTER_MARKERS = ("lora_", "s2ft_", "modules_to_save")


def model_fingerprint(model: nn.Module) -> str:
    """16-hex digest of the architecture name and every base parameter's name, shape and value checksum.

    Checksums are float64 sums over a fixed strided sample of each tensor, so two loads of the same
    checkpoint agree and any re-initialisation or fine-tune of the base disagrees. PEFT wrapper prefixes
    (``base_model.model.``) and adapter tensors are ignored.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update(str(getattr(config, "model_type", type(model).__name__)).encode())
    for name, p in model.named_parameters():
        if any(m in name for m in _ADAPTER_MARKERS):
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to(torch.float64)
        h.update(f"{name}:{tuple(p.shape)}:{sample.sum().item():.10e}:{sample.abs().sum().item():.10e}".encode())
    return h.hexdigest()[:16]
