"""Dequantize a GGUF checkpoint once and cache it as a safetensors model folder.

transformers + gguf take ~25 s to dequantize SmolLM2's Q4_1 file; the cached float32 folder then loads in
about a second. The cache lives under ``$TANGENTFT_CACHE`` (default ``~/.cache/tangentft``), keyed by the
GGUF file's name, size and modification time, and is built in a temporary folder that is renamed into
place, so an interrupted conversion never leaves a half-written cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch


def cache_root() -> Path:
    """Where tangentft keeps converted weights (``$TANGENTFT_CACHE`` or ``~/.cache/tangentft``)."""
    return Path(os.environ.get("TANGENTFT_CACHE", Path.home() / ".cache" / "tangentft"))


def dequantized_folder(gguf_path: Path, name: str) -> Path:
    """Return a float32 safetensors folder for ``gguf_path``, converting it on first use."""
    st = gguf_path.stat()
    target = cache_root() / f"{name}-{st.st_size}-{int(st.st_mtime)}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    # The weights are now plain fp32; drop the GGUF quantization marker so save_pretrained accepts them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a stale, incomplete cache from an older run
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
