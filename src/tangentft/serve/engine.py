"""The serving engine: one unmerged base causal LM, any number of LoRA and S2FT adapters, and one forward
in which every row of the batch uses its own adapter.

* S2FT (sparse) adapters go through :class:`tangentft.adapters.MultiAdapter` (forward hooks that add each
  adapter's sparse term on its own rows, in original coordinates: the base is never permuted or merged);
* LoRA adapters go through PEFT's own mixed-batch path (``adapter_names``), injected with
  ``PeftModel.load_adapter`` into the same Hugging Face model.

Both apply in the same forward: a row names one adapter, the other mechanism sees ``__base__`` for it.
Adapters are refused (:class:`AdapterConflict`) when their base fingerprint differs from the served base;
nothing already loaded changes then. The engine is not thread-safe: the scheduler calls it from one thread.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..adapters import MultiAdapter, SparseAdapter, check_base, load_adapter
from ..adapters.multi import BASE
from ..data.tasks import get_builtin_spec
from ..data.types import Example, TaskSpec
from ..errors import TangentError
from ..io import safetensors_metadata
from ..models.fingerprint import base_weights_fingerprint
from ..models.registry import LoadedModel
from ..schemas import AdapterConfig, AdapterProvenance, read_json


class AdapterConflict(TangentError):
    """An adapter that cannot live on this base (another base's fingerprint, modules or shapes that differ)."""


@dataclass
class AdapterInfo:
    """A served adapter: its name, kind (``lora`` | ``s2ft``), folder, task spec (for classify) and size."""

    name: str
    kind: str
    path: str
    task: TaskSpec | None
    parameters: int


def adapter_kind(path: Path) -> str:
    """``lora`` or ``s2ft`` from an adapter folder's ``adapter_config.json``."""
    cfg_file = path / "adapter_config.json"
    cfg = read_json(cfg_file, AdapterConfig, missing=f"{path}: not an adapter folder (no adapter_config.json)")
    if cfg.peft_type == "LORA":
        return "lora"
    if cfg.peft_type == "S2FT" or cfg.format == "tangentft-sparse":
        return "s2ft"
    raise TangentError(f"{cfg_file}: peft_type {cfg.peft_type!r}: the server serves LoRA and S2FT adapters")


def run_config(path: Path) -> dict:
    """The ``config.json`` of the tangentft training run an adapter folder belongs to (``{}`` if none)."""
    for folder in (path, path.parent):
        f = folder / "config.json"
        if f.is_file():
            info = read_json(f, AdapterProvenance)
            if info.train is not None or info.task_spec is not None:  # else a model's own config.json
                return info.model_dump(exclude_none=True)
    return {}


def task_of(cfg: dict) -> TaskSpec | None:
    """The task spec a run was trained for (None when the folder does not say)."""
    spec = cfg.get("task_spec")
    if not spec:
        return None
    builtin = get_builtin_spec(spec.get("name", "")) if spec.get("name") else None
    return TaskSpec(
        spec.get("name", "task"), spec.get("kind", "classification"), spec["template"], list(spec["label_words"]),
        list(spec.get("label_values") or (builtin.label_values if builtin else [])),
        len(spec["label_words"]) if spec.get("kind", "classification") == "classification" else 1,
    )


class Engine:
    """One base model and its adapters; :meth:`forward` runs a batch whose rows name their adapters."""

    def __init__(self, loaded: LoadedModel, max_resident: int | None = None):
        if loaded.kind != "causal":
            raise TangentError(f"model '{loaded.name}' is an encoder: the server generates text and needs a causal LM")
        self.loaded = loaded
        self.name = loaded.name
        self.hf: nn.Module = loaded.model.eval()
        self.tokenizer = loaded.tokenizer  # for the HTTP thread only
        # a fast tokenizer is one Rust object whose padding/truncation state every call sets: two threads
        # sharing it garble each other's batches (seen under load), so the worker thread has its own copy
        self.worker_tokenizer = copy.deepcopy(loaded.tokenizer)
        self._worker_loaded = replace(loaded, tokenizer=self.worker_tokenizer)
        self.fingerprint = base_weights_fingerprint(self.hf)
        self.sparse = MultiAdapter(self.hf)
        self.peft = None  # the PeftModel holding LoRA adapters, created with the first one
        self.adapters: dict[str, AdapterInfo] = {}  # every registered adapter, resident or not
        if max_resident is not None and max_resident < 1:
            raise TangentError(f"at most {max_resident} adapters resident: keep at least 1 (or set no limit)")
        self.max_resident = max_resident
        self.resident: collections.OrderedDict[str, None] = collections.OrderedDict()  # least recently used first
        self.loads: collections.Counter = collections.Counter()  # reads from disk per adapter
        self.evictions: collections.Counter = collections.Counter()
        self.uses: collections.Counter = collections.Counter()  # requests admitted per model (base included)
        cfg = self.hf.config
        self.context = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))
        for p in self.hf.parameters():
            p.requires_grad_(False)

    # -- adapters ------------------------------------------------------------------------------------------
    def check_name(self, name: str) -> None:
        """Raise unless ``name`` can name a new adapter (AdapterConflict when one of that name is loaded)."""
        if not name or name == BASE or name == self.name or "/" in name:
            raise TangentError(f"adapter name '{name}' is not allowed (empty, '{BASE}', the base's name, or has '/')")
        if name in self.adapters:
            raise AdapterConflict(f"an adapter named '{name}' is already loaded; unload it first")

    def load(self, name: str, path: str | Path, busy: Collection[str] = ()) -> AdapterInfo:
        """Serve the adapter in folder ``path`` as ``name``; raises AdapterConflict for another base. The adapter
        is read (and so checked) now; beyond ``max_resident`` the least recently used one not in ``busy`` is
        evicted (kept registered, read again on its next use)."""
        self.check_name(name)
        path = Path(path)
        if not path.is_dir():
            raise TangentError(f"adapter path {path}: no such folder")
        kind = adapter_kind(path)
        run = run_config(path)
        expected = run.get("base_fingerprint")
        if expected and expected != self.fingerprint:
            raise AdapterConflict(
                f"adapter '{name}' ({path}) was trained on another base (fingerprint {expected}, served {self.fingerprint})"
            )
        size = self._attach(name, kind, path)
        info = AdapterInfo(name, kind, str(path), task_of(run), size)
        self.adapters[name] = info
        if not self._evict_beyond(self.max_resident, {*busy, name}):
            self._evict_beyond(self.max_resident, busy)  # every other resident one is busy: wait on disk
        return info

    def ensure(self, label: str, busy: Collection[str] = ()) -> bool:
        """Make ``label`` resident for a request (reading it from disk if it was evicted, evicting the least
        recently used adapter not in ``busy``) and count the use; False when every resident one is busy."""
        self.uses[self.name if label == BASE else label] += 1
        if label == BASE:
            return True
        if label in self.resident:
            self.resident.move_to_end(label)
            return True
        if self.max_resident is not None and not self._evict_beyond(self.max_resident - 1, busy):
            self.uses[label] -= 1
            return False
        info = self.adapters[label]
        self._attach(label, info.kind, Path(info.path))
        return True

    def unload(self, name: str) -> None:
        """Stop serving adapter ``name`` (resident or not)."""
        if name not in self.adapters:
            raise TangentError(f"no adapter named '{name}' is loaded")
        if name in self.resident:
            self._detach(name)
        del self.adapters[name]

    def _evict_beyond(self, limit: int | None, busy: Collection[str]) -> bool:
        """Evict least recently used adapters not in ``busy`` until at most ``limit`` are resident; False if
        the busy ones alone exceed it."""
        if limit is None:
            return True
        for name in [n for n in self.resident if n not in busy]:
            if len(self.resident) <= limit:
                break
            self._detach(name)
            self.evictions[name] += 1
        return len(self.resident) <= limit

    def _attach(self, name: str, kind: str, path: Path) -> int:
        """Read adapter ``name`` from ``path`` into the model; its number of parameters."""
        if kind == "s2ft":
            adapter = load_adapter(path, name=name)
            try:
                self.sparse.add(adapter)
            except TangentError as exc:
                raise AdapterConflict(exc.message) from None
            size = adapter.numel
        else:
            size = self._load_lora(name, path)
        self.resident[name] = None
        self.loads[name] += 1
        return size

    def _detach(self, name: str) -> None:
        if self.adapters[name].kind == "lora":
            self.peft.delete_adapter(name)
        else:
            self.sparse.remove(name)
        del self.resident[name]

    def _load_lora(self, name: str, path: Path) -> int:
        from peft import PeftModel

        fingerprints = _lora_fingerprints(path)  # also checks the weights file is whole, before PEFT reads it
        if fingerprints:
            check = SparseAdapter(name, [], fingerprints)
            try:
                check_base(self.hf, check)
            except TangentError as exc:
                raise AdapterConflict(exc.message) from None
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.hf, str(path), adapter_name=name, is_trainable=False)
            else:
                self.peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names of another architecture
            if self.peft is not None and name in self.peft.peft_config:
                self.peft.delete_adapter(name)
            elif self.peft is None:
                _strip_tuner_layers(self.hf)  # a first LoRA that failed half-way must leave no layer behind
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AdapterConflict(f"LoRA adapter '{name}' ({path}) does not fit the served base: {first}") from None
        self.hf.eval()
        return sum(p.numel() for n, p in self.hf.named_parameters() if f".{name}." in n and "lora_" in n)

    def model_names(self) -> list[str]:
        """The base's name, then every adapter's."""
        return [self.name, *self.adapters]

    def resolve(self, model: str) -> str:
        """Row label for a request's ``model``: an adapter name or ``__base__``; raises KeyError if unknown."""
        if model == self.name or model == BASE:
            return BASE
        if model in self.adapters:
            return model
        raise KeyError(model)

    # -- forward -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def routing(self, labels: list[str]):
        """Within the block, row b of every forward uses adapter ``labels[b]`` (``__base__``: none)."""
        with contextlib.ExitStack() as stack:
            if self.peft is not None:
                lora = [n if n in self.resident and self.adapters[n].kind == "lora" else BASE for n in labels]
                stack.enter_context(self.peft.base_model._enable_peft_forward_hooks(adapter_names=lora))
            stack.enter_context(self.sparse.route(labels))
            yield

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, position_ids, cache, labels: list[str]):
        """Logits of the last position of each row and the updated KV cache, one mixed-adapter forward."""
        with self.routing(labels):
            out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True)
        return out.logits[:, -1].float(), out.past_key_values

    @torch.inference_mode()
    def classify(self, name: str, texts: list[str], task: str | None = None) -> tuple[TaskSpec, torch.Tensor]:
        """f(x) ∈ R^K (label-word scores) of the task model under adapter ``name`` for each text."""
        from ..models.task_model import TaskModel

        label = self.resolve(name)
        spec = get_builtin_spec(task) if task else (self.adapters[label].task if label != BASE else None)
        if spec is None:
            if task:
                raise TangentError(f"task '{task}' is not a built-in task (sst2, cr, mr, cola, stsb)")
            raise TangentError(f"model '{name}' has no task (no training run config.json beside it): pass 'task'")
        if spec.is_pair:
            raise TangentError(f"task '{spec.name}' takes sentence pairs; /v1/classify takes single texts")
        tm = TaskModel(self._worker_loaded, spec)
        examples = [Example(t, 0) for t in texts]
        enc = tm.encode(examples)
        with self.routing([label] * len(texts)):
            return spec, tm(**enc).float()


def _strip_tuner_layers(hf: nn.Module) -> None:
    """Put every PEFT tuner layer's base layer back in its place (undoes a failed first injection)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for path, module in list(hf.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = path.rpartition(".")
            setattr(hf.get_submodule(parent) if parent else hf, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in hf.__dict__:
            delattr(hf, attr)


def _lora_fingerprints(path: Path) -> list[tuple[list[str], str]]:
    """Base fingerprints a LoRA written by ``tangentft s2ft to-lora`` carries in its safetensors metadata."""
    f = path / "adapter_model.safetensors"
    if not f.is_file():
        return []
    raw = safetensors_metadata(f).get("tangentft_fingerprints")
    if not raw:
        return []
    try:
        return [(list(p), str(fp)) for p, fp in json.loads(raw)]
    except (json.JSONDecodeError, TypeError, ValueError):
        raise TangentError(f"{f}: metadata 'tangentft_fingerprints' is not a list of [modules, fingerprint]") from None
