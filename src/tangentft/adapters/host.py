"""One unmerged base causal LM holding LoRA and S2FT adapters side by side, each row of a batch under its own.

* S2FT (sparse) adapters go through :class:`MultiAdapter` (forward hooks that add each adapter's sparse term
  on its own rows, in original coordinates: the base is never permuted or merged);
* LoRA adapters go through PEFT's own mixed-batch path (``adapter_names``), injected with
  ``PeftModel.load_adapter`` into the same Hugging Face model.

Both apply in the same forward: a row names one adapter, the other mechanism sees ``__base__`` for it.
Adapters are refused (:class:`AdapterConflict`) when they were made for another base; nothing already
attached changes then.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from torch import nn

from ..errors import TangentError
from ..models.fingerprint import base_weights_fingerprint
from .folder import AdapterFolder, read_folder
from .merge import check_base
from .multi import BASE, MultiAdapter


class AdapterConflict(TangentError):
    """An adapter that cannot live on this base (another base's fingerprint, modules or shapes that differ)."""


class AdapterHost:
    """The adapters attached to one base model ``hf`` (frozen, in eval mode); :meth:`route` sends rows to them."""

    def __init__(self, hf: nn.Module):
        self.hf = hf
        self.fingerprint = base_weights_fingerprint(hf)
        self.sparse = MultiAdapter(hf)
        self.peft = None  # the PeftModel holding LoRA adapters, created with the first one
        self.kinds: dict[str, str] = {}  # attached adapter -> "lora" | "s2ft"

    def load(self, name: str, path: str | Path) -> AdapterFolder:
        """Read the adapter folder ``path`` and attach it as ``name``; the folder as read (kind, task spec)."""
        adapter = read_folder(path, name)
        self.attach(adapter)
        return adapter

    def attach(self, adapter: AdapterFolder) -> None:
        """Put ``adapter`` on the base, after checking it was made for it (nothing changes if that fails)."""
        expected = adapter.base_fingerprint
        if expected and expected != self.fingerprint:
            raise AdapterConflict(f"adapter '{adapter.name}' ({adapter.path}) was trained on another base "
                                  f"(fingerprint {expected}, served {self.fingerprint})")
        try:
            check_base(self.hf, adapter.weights)
            if adapter.kind == "s2ft":
                self.sparse.add(adapter.weights, check=False)
        except TangentError as exc:
            raise AdapterConflict(exc.message) from None
        if adapter.kind == "lora":
            self._inject_lora(adapter)
        self.kinds[adapter.name] = adapter.kind

    def parameters(self, name: str) -> int:
        """How many parameters attached adapter ``name`` adds to the base."""
        if self.kinds[name] == "s2ft":
            return next(a.numel for a in self.sparse.adapters if a.name == name)
        return sum(p.numel() for n, p in self.hf.named_parameters() if f".{name}." in n and "lora_" in n)

    def detach(self, name: str) -> None:
        """Take adapter ``name`` off the base."""
        if self.kinds.pop(name) == "lora":
            self.peft.delete_adapter(name)
        else:
            self.sparse.remove(name)

    def _inject_lora(self, adapter: AdapterFolder) -> None:
        from peft import PeftModel

        name = adapter.name
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.hf, str(adapter.path), adapter_name=name, is_trainable=False)
            else:
                self.peft.load_adapter(str(adapter.path), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names of another architecture
            if self.peft is not None and name in self.peft.peft_config:
                self.peft.delete_adapter(name)
            elif self.peft is None:
                _strip_tuner_layers(self.hf)  # a first LoRA that failed half-way must leave no layer behind
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AdapterConflict(f"LoRA adapter '{name}' ({adapter.path}) does not fit the served base: {first}") from None
        self.hf.eval()

    @contextlib.contextmanager
    def route(self, labels: list[str]):
        """Within the block, row b of every forward uses adapter ``labels[b]`` (``__base__`` or a name not
        attached: none)."""
        with contextlib.ExitStack() as stack:
            if self.peft is not None:
                lora = [n if self.kinds.get(n) == "lora" else BASE for n in labels]
                stack.enter_context(self.peft.base_model._enable_peft_forward_hooks(adapter_names=lora))
            stack.enter_context(self.sparse.route(labels))
            yield


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
