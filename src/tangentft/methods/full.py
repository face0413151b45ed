"""Full fine-tuning of selected modules (or of every parameter): θ trains in place.

A selection may name only some rows/columns of a tensor (GPT-2's fused ``c_attn`` for ``q``; S2FT-style
sliced blocks). Then the whole tensor is a leaf for the optimizer, but its gradient is masked to the
selected entries and ``after_step`` puts the others back to θ0, so weight decay or any optimizer quirk
can never move an unselected entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import save_safetensors, write_json
from ..models.selection import ParamBlock, ParamSelection, module_kind_of, select
from .base import FineTuneMethod, MethodConfig, register_method


def block_mask(block: ParamBlock, param: torch.Tensor) -> torch.Tensor:
    """Boolean mask over ``param`` (on its device) that is True on the entries ``block`` selects."""
    if param.dim() == 1 or block.part != "weight":
        m = torch.zeros(param.shape[0], dtype=torch.bool, device=param.device)
        m[list(block.out_idx) if block.out_idx is not None else slice(None)] = True
        return m.reshape(param.shape) if param.dim() == 1 else m.view(-1, *[1] * (param.dim() - 1)).expand_as(param)
    out_axis, in_axis = (1, 0) if block.transposed else (0, 1)
    out_m = torch.zeros(param.shape[out_axis], dtype=torch.bool, device=param.device)
    in_m = torch.zeros(param.shape[in_axis], dtype=torch.bool, device=param.device)
    out_m[list(block.out_idx) if block.out_idx is not None else slice(None)] = True
    in_m[list(block.in_idx) if block.in_idx is not None else slice(None)] = True
    m = out_m[:, None] & in_m[None, :]
    return m.T.contiguous() if block.transposed else m


def selection_masks(model: nn.Module, selection: ParamSelection) -> dict[str, torch.Tensor | None]:
    """Parameter name -> mask of selected entries, or None where the whole tensor is selected."""
    named = dict(model.named_parameters(remove_duplicate=False))
    masks: dict[str, torch.Tensor | None] = {}
    for b in selection.blocks:
        if b.out_idx is None and b.in_idx is None:
            masks[b.name] = None
        elif b.name not in masks:
            masks[b.name] = block_mask(b, named[b.name])
        elif masks[b.name] is not None:
            masks[b.name] = masks[b.name] | block_mask(b, named[b.name])
    return masks


def all_parameters_selection(task_model: nn.Module) -> ParamSelection:
    """A selection of every parameter of the task model (plain full fine-tuning)."""
    blocks = []
    for n, _ in task_model.named_parameters():
        module, part = n.rsplit(".", 1)
        blocks.append(ParamBlock(n, module, part, module_kind_of(task_model, module), "all"))
    return ParamSelection(blocks, "everything")


def freeze_all_but(model: nn.Module, names: set[str]) -> None:
    """requires_grad=True exactly on the parameters named ``names``."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning; ``params`` unset trains every parameter."""


@register_method
class FullMethod(FineTuneMethod):
    """Train the selected tensors (or entries of tensors) in place."""

    name = "full"
    config_class = FullConfig

    def selection(self, task_model: nn.Module) -> ParamSelection:
        """The parameters this run trains."""
        if self.config.params is None:
            return all_parameters_selection(task_model)
        return select(task_model, self.config.params, seed=self.config.seed)

    def prepare(self, task_model: nn.Module) -> nn.Module:
        sel = self.selection(task_model)
        self.selected = sel
        masks = selection_masks(task_model, sel)
        freeze_all_but(task_model, set(masks))
        named = dict(task_model.named_parameters())
        self._masks = {n: m for n, m in masks.items() if m is not None}
        self._frozen = {n: named[n].detach().clone() for n in self._masks}
        for n, m in self._masks.items():
            named[n].register_hook(lambda g, m=m: g * m.to(g.dtype))
        return task_model

    def after_step(self, model: nn.Module, lr: float) -> None:
        if not self._masks:
            return
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, m in self._masks.items():
                named[n].copy_(torch.where(m, named[n], self._frozen[n]))

    def save(self, model: nn.Module, out_dir: Path) -> None:
        """``trained.safetensors`` (trained tensors keyed by TaskModel parameter name) + ``selection.json``."""
        out_dir = Path(out_dir)
        tensors = self.checkpoint_state(model)
        save_safetensors(out_dir / "trained.safetensors", tensors, {"method": self.name})
        write_json(out_dir / "selection.json", self.selected.to_json())
