"""Dequantize a GGUF checkpoint once and cache it as a safetensors model folder.

transformers + gguf take ~25 s to dequantize SmolLM2's Q4_1 file; the cached float32 folder then loads in
about a second. The cache lives under ``$TANGENTFT_CACHE`` (default ``~/.cache/tangentft``), keyed by the
GGUF file's content (a SHA-256 prefix), so a reinstall that writes the same file again reuses the conversion
instead of adding another copy; the digest itself is remembered per (path, size, mtime), so the file is
hashed once per install, not per load. A conversion is built in a temporary folder that is renamed into
place, so an interrupted conversion never leaves a half-written cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import TangentError


def cache_root() -> Path:
    """Where tangentft keeps converted weights (``$TANGENTFT_CACHE`` or ``~/.cache/tangentft``)."""
    return Path(os.environ.get("TANGENTFT_CACHE", Path.home() / ".cache" / "tangentft"))


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def content_digest(path: Path, root: Path) -> str:
    """The first 16 hex digits of the SHA-256 of ``path``, remembered under ``root/digests`` by the file's
    resolved path, size and modification time (hashing SmolLM2's GGUF takes about a second)."""
    import hashlib

    from ..io import atomic_write, fingerprint

    st = path.stat()
    memo = root / "digests" / fingerprint(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo.is_file():
        return memo.read_text().strip()
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    atomic_write(memo, digest + "\n")
    return digest


def dequantized_folder(gguf_path: Path, name: str) -> Path:
    """Return a float32 safetensors folder for ``gguf_path``, converting it on first use (keyed by its content)."""
    from ..io import ensure_dir

    root = cache_root()
    if root.exists() and not root.is_dir():
        raise TangentError(f"TANGENTFT_CACHE={root} is a file, not a folder: point it at a folder (or unset it)")
    ensure_dir(root)  # before the conversion's half a minute, not after it
    st = gguf_path.stat()
    target = root / f"{name}-{content_digest(gguf_path, root)}"
    if _complete(target):
        return target
    legacy = root / f"{name}-{st.st_size}-{int(st.st_mtime)}"  # keyed by size and mtime before content keys
    if _complete(legacy):
        os.replace(legacy, target)
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
