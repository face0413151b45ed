"""S2FTMethod: the trainer-facing wrapper (``--method s2ft``) around the PEFT S2FT tuner.

``prepare(task_model)`` ranks units (calibrating on task examples for strategies A/S/G), injects the S2FT
adapter into ``task_model.hf`` through ``get_peft_model`` (the PeftModel is kept as
``task_model.peft_model``, like LoRA), freezes everything but the deltas (and the encoder's new task head,
unless ``params`` says otherwise) and returns the task model. ``save`` writes the PEFT adapter folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...data.types import Example
from ...errors import TangentError
from ...io import save_safetensors
from ...models.selection import ParamBlock, ParamSelection
from ...models.structure import StructureMap
from ..base import FineTuneMethod, MethodConfig, register_method
from .config import S2FTConfig
from .selection import pick_units, slice_selection


def parse_ratios(text: str) -> dict[str, float]:
    """``"o:0.1,down:0.05"`` -> {"o": 0.1, "down": 0.05} (a bare type means ratio 0.1)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition(":")
        try:
            out[name.strip()] = float(value) if value else 0.1
        except ValueError:
            raise TangentError(f"S2FT types '{text}': ratio '{value}' of '{name}' is not a number") from None
    return out


@dataclass
class S2FTMethodConfig(MethodConfig):
    """Options of ``--method s2ft`` (the S2FT paper's defaults: o and down, random selection)."""

    types: str = field(default="o:0.1,down:0.1", metadata={"help": "Module types and ratios, e.g. 'o:0.1,down:0.05'."})
    budget: int | None = field(default=None, metadata={"help": "Total trainable parameters (replaces the ratios)."})
    strategy: str = field(default="R", metadata={"help": "Selection strategy R, W, A, S or G (S2FT paper §3.2)."})
    variant: str = field(default="large", metadata={"help": "Pick largest or smallest scores: large | small."})
    calibration_size: int = field(default=64, metadata={"help": "Calibration examples for strategies A, S, G."})
    calibration_task: str | None = field(
        default=None, metadata={"help": "Task folder whose train split calibrates A/S/G (default: examples the trainer sets)."}
    )

    def to_peft(self) -> S2FTConfig:
        """The PEFT config these options describe."""
        return S2FTConfig(
            ratios=parse_ratios(self.types), budget=self.budget, strategy=self.strategy, variant=self.variant,
            seed=self.seed, calibration_size=self.calibration_size,
        )


def task_calibration(task_model, examples: Sequence[Example], batch_size: int = 8) -> list:
    """Zero-argument closures, one per batch, each returning the task loss (CE or MSE) of ``task_model``."""
    def make(batch):
        def run() -> torch.Tensor:
            out = task_model(**task_model.encode(batch))
            y = task_model.targets(batch).to(out)
            if task_model.spec.kind == "regression":
                return F.mse_loss(out, y)
            return F.cross_entropy(out, y.argmax(dim=1))

        return run

    return [make(list(examples[i : i + batch_size])) for i in range(0, len(examples), batch_size)]


@register_method
class S2FTMethod(FineTuneMethod):
    """Structured sparse fine-tuning (S2FT paper): trains selected heads/channels through a PEFT adapter."""

    name = "s2ft"
    dtypes = ("float32",)
    dtypes_why = ("its sparse layer's own backward multiplies the fp32 trained rows with the activations directly, "
                  "outside autocast")
    config_class = S2FTMethodConfig

    def __init__(self, config: S2FTMethodConfig | None = None, calibration: Sequence[Example] | None = None):
        super().__init__(config)
        # the trainer may hand over training examples for A/S/G instead of a calibration_task folder
        self.calibration = list(calibration) if calibration is not None else None

    def bind_data(self, examples: list) -> None:
        """Training examples calibrate strategies A/S/G unless a ``calibration_task`` was given."""
        if self.calibration is None and not self.config.calibration_task:
            self.calibration = list(examples)

    def _calibration_examples(self, peft_config: S2FTConfig) -> list[Example]:
        from ...data import load_task, sample_n

        examples = self.calibration
        if examples is None:
            if not self.config.calibration_task:
                raise TangentError(
                    f"S2FT strategy {peft_config.strategy} needs calibration data: set calibration_task to a task folder"
                )
            data = load_task(self.config.calibration_task)
            examples = data.splits.get("train") or next(iter(data.splits.values()))
        n = min(peft_config.calibration_size, len(examples))
        return sample_n(list(examples), n, seed=self.config.seed)

    def prepare(self, task_model: nn.Module) -> nn.Module:
        """Select, inject the S2FT adapter into ``task_model.hf``, freeze the rest; returns ``task_model``."""
        if getattr(task_model, "peft_model", None) is not None:
            raise TangentError("this task model already carries a PEFT adapter")
        return self._inject(task_model, self.rank_units(task_model))

    def _inject(self, task_model: nn.Module, units: dict) -> nn.Module:
        from peft import get_peft_model

        peft_config = self.config.to_peft()
        peft_config.selection = units
        peft_model = get_peft_model(task_model.hf, peft_config)
        object.__setattr__(task_model, "peft_model", peft_model)
        for p in task_model.parameters():
            p.requires_grad_(False)
        for n, p in task_model.named_parameters():
            if ".s2ft_delta." in n:
                p.requires_grad_(True)
        for p in self._extra_parameters(task_model):
            p.requires_grad_(True)
        return task_model

    def selection(self, task_model: nn.Module, units: dict | None = None) -> ParamSelection:
        """The parameters this run trains, on the UN-adapted ``task_model``: the weight rows/columns of the
        ranked ``units`` (default: :meth:`rank_units` on ``task_model``;
        :func:`~tangentft.methods.s2ft.selection.slice_selection`, original coordinates) plus the extra tensors
        :meth:`prepare` unfreezes whole (an encoder's head, or ``params``)."""
        sel = slice_selection(task_model, self.rank_units(task_model) if units is None else units)
        extra = self.config.params or ("head" if task_model.head is not None else None)
        if extra is None:
            return sel
        from ...models.selection import resolve

        # prepare unfreezes these tensors whole (a fused GPT-2 c_attn too): one whole-tensor block per tensor
        whole: dict[str, ParamBlock] = {}
        for b in resolve(task_model, extra).blocks:
            whole.setdefault(b.name, replace(b, out_idx=None, in_idx=None))
        return sel + ParamSelection(list(whole.values()), str(extra))

    def kernel_selection(self, task_model: nn.Module) -> ParamSelection:
        """:meth:`selection` on the unchanged ``task_model`` (recorded as ``selected``); no adapter is injected.

        Why not co-permute and inject as :meth:`prepare` does: co-permutation reorders hidden units between
        coupled matrices, which leaves f unchanged (S2FT paper §3.1), and the delta adds to its slice of the
        permuted weight, so ∂f/∂Δ is ∂f/∂W on exactly the original rows/columns the selection names — the kernel
        of the trained coordinates is the same at θ0 (and the selection's entries are those coordinates). On the
        un-permuted base those coordinates are slices of plain linear modules, which the kernel engine computes
        from per-module activations; an S2FT layer's delta is no module it knows.

        The ranked units are kept (``kernel_units``): a refresh (:meth:`load_kernel_state`) rebuilds the adapter
        on exactly them.
        """
        self.kernel_units = self.rank_units(task_model)
        self.selected = self.selection(task_model, self.kernel_units)
        return self.selected

    def load_kernel_state(self, task_model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Put the run's trained state at step t (a checkpoint's ``model_state``: the deltas and the whole extra
        tensors) into the UN-adapted ``task_model`` that :meth:`kernel_selection` ranked: the base weights with the
        deltas merged in, in original order, and the extra tensors as trained.

        Why this is θ_t for the kernel: co-permutation leaves f unchanged (S2FT paper §3.1), so the adapted model
        at step t computes the same f as the plain model whose selected rows/columns hold W0 + Δ_t; a delta adds to
        its slice, so ∂f/∂Δ at θ_t is ∂f/∂W on those original rows/columns at the merged weights — the kernel over
        :meth:`kernel_selection`'s slices, taken on this model. The merge is S2FT's own: the adapter is injected on
        a copy of ``task_model`` for the units the kernel was taken over (``kernel_units``, not re-ranked: the run
        trained those, whatever θ_t's weights or activations would rank first), the state loaded there, then
        ``merge_and_unload``, which adds each delta to its slice and undoes the permutation."""
        import copy

        units = getattr(self, "kernel_units", None)
        if units is None:
            raise TangentError("S2FT: load_kernel_state needs the units kernel_selection ranked on this model; "
                               "call kernel_selection first")
        # the tokenizer is not a tensor the merge touches: share it rather than copy it
        adapted = copy.deepcopy(task_model, {id(task_model.tokenizer): task_model.tokenizer})
        self._inject(adapted, copy.deepcopy(units))
        self.load_checkpoint_state(adapted, state)
        adapted.peft_model.merge_and_unload()
        task_model.load_state_dict(adapted.state_dict())  # strict: the unloaded copy has the plain model's names

    def decay_selection(self, selection: ParamSelection) -> ParamSelection | None:
        """Only the whole extra tensors: the slices train through deltas that start at 0, so weight decay pulls
        them toward θ0, not toward 0 (no J·θ0 term). At a refresh (θ_t, :meth:`load_kernel_state`) the slices'
        pull toward θ0 adds lr·wd·J·Δ_t per step, which the replay leaves out: second order in lr, as Δ_t is itself
        of order lr·t."""
        whole = [b for b in selection.blocks if b.out_idx is None and b.in_idx is None]
        return ParamSelection(whole, selection.spec) if whole else None

    def rank_units(self, task_model, progress: Callable[[int, int], None] | None = None) -> dict:
        """The units (heads/channels per layer) this config trains on ``task_model``: the selection dict of
        :func:`tangentft.methods.s2ft.selection.pick_units`, calibrated for strategies A/S/G on this method's
        calibration examples; ``progress(done, total)`` ticks once per calibration batch."""
        peft_config = self.config.to_peft()
        calibration = None
        if peft_config.needs_calibration:
            calibration = task_calibration(task_model, self._calibration_examples(peft_config))
            if progress is not None:
                calibration = _ticking(calibration, progress)
        return pick_units(task_model.hf, task_model.structure, peft_config, calibration)

    def _extra_parameters(self, task_model) -> list[nn.Parameter]:
        if self.config.params:
            from ...models.selection import resolve

            return resolve(task_model, self.config.params).parameters(task_model)
        return list(task_model.head.parameters()) if task_model.head is not None else []

    def save(self, model: nn.Module, out_dir: Path) -> None:
        """PEFT adapter folder ``out_dir/adapter`` (with an encoder's head, trained or seeded, as ``modules_to_save``)
        + other trained tensors (an encoder head) in ``extra.safetensors``."""
        from ..lora import save_peft_adapter

        out_dir = Path(out_dir)
        save_peft_adapter(model.peft_model, out_dir / "adapter", head=model.head)
        extra = {n: p for n, p in model.named_parameters() if p.requires_grad and ".s2ft_delta." not in n}
        if extra:
            save_safetensors(out_dir / "extra.safetensors", extra, {"method": self.name})


def _ticking(batches: list, progress: Callable[[int, int], None]) -> list:
    def wrap(i, run):
        def wrapped():
            loss = run()
            progress(i + 1, len(batches))
            return loss

        return wrapped

    return [wrap(i, b) for i, b in enumerate(batches)]


def choose_units(model: str, config: S2FTMethodConfig, *, template: str | None = None,
                 label_words: list[str] | None = None, progress: Callable[[int, int], None] | None = None,
                 device: str = "auto", dtype: str = "float32") -> tuple[dict, StructureMap]:
    """What ``config`` would train on ``model`` (registry name or folder, loaded on ``device`` in ``dtype``),
    without training: (selection dict, structure map). Strategies A/S/G calibrate on
    ``config.calibration_task`` exactly as training would (:meth:`S2FTMethod.rank_units`), with the task's prompt
    ``template``/``label_words`` replaced when given; R and W need only the weights."""
    peft_config = config.to_peft()
    if not peft_config.needs_calibration:
        from ...models.registry import load_model

        loaded = load_model(model, seed=config.seed, device=device, dtype=dtype)
        return pick_units(loaded.model, loaded.structure, peft_config), loaded.structure
    from ...data import load_task
    from ...models.task_model import build_task_model

    if not config.calibration_task:
        raise TangentError(f"S2FT strategy {peft_config.strategy} needs calibration data: set calibration_task "
                           "to a task folder")
    spec = load_task(config.calibration_task, template=template, label_words=label_words).spec
    tm = build_task_model(model, spec, seed=config.seed, device=device, dtype=dtype)
    return S2FTMethod(config).rank_units(tm, progress), tm.structure
