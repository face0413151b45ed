"""Shared helpers for the S2FT and adapter tests: tiny task models carrying an S2FT adapter."""

from __future__ import annotations

import torch

from conftest import tiny_task_model, toy_examples

ALL_TYPES = {
    "tiny-llama": {"q": 0.5, "k": 0.5, "v": 0.5, "o": 0.5, "gate": 0.25, "up": 0.25, "down": 0.25},
    "tiny-bert": {"q": 0.25, "v": 0.5, "o": 0.5, "up": 0.25, "down": 0.25},
    "tiny-gpt2": {"q": 0.25, "k": 0.5, "v": 0.5, "o": 0.5, "up": 0.25, "down": 0.25},
}


def s2ft_model(name: str, ratios=None, strategy: str = "R", seed: int = 0, delta_seed: int | None = None, base_seed: int = 0):
    """(task model with an S2FT adapter injected, peft model); deltas random when ``delta_seed`` is given."""
    from peft import get_peft_model

    from tangentft.methods.s2ft import S2FTConfig

    tm = tiny_task_model(name, seed=base_seed)
    cfg = S2FTConfig(ratios=ratios or ALL_TYPES[name], strategy=strategy, seed=seed)
    pm = get_peft_model(tm.hf, cfg)
    object.__setattr__(tm, "peft_model", pm)
    if delta_seed is not None:
        randomize_deltas(tm, delta_seed)
    return tm, pm


@torch.no_grad()
def randomize_deltas(tm, seed: int, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    for n, p in tm.named_parameters():
        if ".s2ft_delta." in n:
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def batch(tm, n: int = 6, seed: int = 0):
    return tm.encode(toy_examples(n, seed=seed))
