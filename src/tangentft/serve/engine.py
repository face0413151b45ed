"""The serving engine: one base causal LM and the adapters registered on it, under a residency limit, and one
forward in which every row of the batch uses its own adapter.

The adapters package reads an adapter folder and holds it with the other attached ones on the unmerged base
(:class:`tangentft.adapters.AdapterHost`); the engine names them, keeps at most
``max_resident`` attached (least recently used evicted, read again on its next use) and counts their use.
Adapters are refused (:class:`AdapterConflict`) when made for another base; nothing already loaded changes
then. The engine is not thread-safe: the scheduler calls it from one thread.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..adapters.host import AdapterConflict, AdapterHost
from ..adapters.multi import BASE
from ..data.tasks import get_builtin_spec
from ..data.types import Example, TaskSpec
from ..errors import TangentError
from ..models.registry import LoadedModel

__all__ = ["AdapterConflict", "AdapterInfo", "Engine"]


@dataclass
class AdapterInfo:
    """A served adapter: its name, kind (``lora`` | ``s2ft``), folder, task spec (for classify) and size."""

    name: str
    kind: str
    path: str
    task: TaskSpec | None
    parameters: int


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
        self.host = AdapterHost(self.hf)
        self.fingerprint = self.host.fingerprint
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
        adapter = self.host.load(name, path)
        self._now_resident(name)
        self.adapters[name] = AdapterInfo(name, adapter.kind, str(adapter.path), adapter.task, self.host.parameters(name))
        if not self._evict_beyond(self.max_resident, {*busy, name}):
            self._evict_beyond(self.max_resident, busy)  # every other resident one is busy: wait on disk
        return self.adapters[name]

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
        self.host.load(label, self.adapters[label].path)
        self._now_resident(label)
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

    def _now_resident(self, name: str) -> None:
        """Count adapter ``name``, just attached (read from disk), as the most recently used resident one."""
        self.resident[name] = None
        self.loads[name] += 1

    def _detach(self, name: str) -> None:
        self.host.detach(name)
        del self.resident[name]

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
    def routing(self, labels: list[str]):
        """Within the block, row b of every forward uses adapter ``labels[b]`` (``__base__``: none)."""
        return self.host.route(labels)

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
