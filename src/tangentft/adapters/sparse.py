"""The sparse adapter type, its files, and extraction of ΔW from a trained model.

A :class:`SparseAdapter` is a list of :class:`SparseDelta` — ΔW of one module restricted to the rows or
columns ``index`` along the native weight axis ``axis`` (ΔW = U Vᵀ with U the selected basis vectors e_i,
S2FT paper §6.2) — plus the fingerprints of the base weights it was made for. Files: the PEFT layout
written by ``S2FTModel.save_pretrained`` (``adapter_config.json`` + ``adapter_model.safetensors`` with
``<path>.s2ft_index / .s2ft_axis / .s2ft_delta``), which :func:`load_adapter` reads directly; fused or
diff-extracted adapters are written in the same key layout with a ``tangentft-sparse`` config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import TangentError
from ..io import load_safetensors, save_safetensors, write_json
from ..methods.s2ft import S2FTLayer
from ..models.fingerprint import modules_fingerprint
from ..schemas import AdapterConfig, read_json

PEFT_PREFIX = "base_model.model."
SPARSE_FORMAT = "tangentft-sparse"


@dataclass
class SparseDelta:
    """ΔW of module ``path`` on ``index`` along native axis ``axis``; ``values`` = ΔW.index_select(axis, index)."""

    path: str
    axis: int
    index: torch.Tensor
    values: torch.Tensor

    def scaled(self, w: float) -> SparseDelta:
        """The same delta times ``w``."""
        return SparseDelta(self.path, self.axis, self.index, self.values * w)

    @property
    def numel(self) -> int:
        """Stored values."""
        return self.values.numel()


@dataclass
class SparseAdapter:
    """A named sparse update and the base fingerprints ``[(paths, digest)]`` it applies to; ``base`` is the base
    model's name as its config records it (None when unknown)."""

    name: str
    deltas: list[SparseDelta]
    fingerprints: list[tuple[list[str], str]] = field(default_factory=list)
    base: str | None = None

    @property
    def paths(self) -> list[str]:
        """Modules the adapter touches, in order of first appearance."""
        return list(dict.fromkeys(d.path for d in self.deltas))

    @property
    def numel(self) -> int:
        """Stored values over all deltas."""
        return sum(d.numel for d in self.deltas)


def _hf_of(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a TaskModel / PeftModel / tuner (or the model itself)."""
    model = getattr(model, "peft_model", None) or model
    for attr in ("base_model", "model"):
        inner = getattr(model, attr, None)
        if inner is not None and hasattr(inner, "peft_config") and hasattr(inner, "model"):
            return inner.model
    return getattr(model, "hf", model)


def extract(model: nn.Module, name: str = "adapter") -> SparseAdapter:
    """The trained S2FT update of ``model`` (TaskModel or PeftModel) as a sparse adapter on the original base."""
    peft_model = getattr(model, "peft_model", None) or model
    tuner = getattr(peft_model, "base_model", None)
    if tuner is None or not hasattr(tuner, "s2ft_permutations"):
        raise TangentError("extract: the model carries no S2FT adapter (use extract_diff for a merged model)")
    adapter_name = tuner.active_adapters[0]
    config = tuner.peft_config[adapter_name]
    deltas = []
    for path, module in tuner.model.named_modules():
        if isinstance(module, S2FTLayer) and adapter_name in module.s2ft_delta:
            spec = module.s2ft_spec[adapter_name]
            values = spec.to_native(module.s2ft_delta[adapter_name].detach()).clone()
            deltas.append(SparseDelta(path, spec.axis, spec.original_index.clone(), values))
    return SparseAdapter(name, deltas, [(list(config.fingerprint_modules or config.target_modules),
                                         config.base_fingerprint)])


@torch.no_grad()
def extract_diff(base: nn.Module, tuned: nn.Module, paths: list[str], name: str = "adapter") -> SparseAdapter:
    """ΔW = W_tuned − W_base on ``paths``, kept on whichever axis has fewer changed rows/columns (exact)."""
    base_hf, tuned_hf = _hf_of(base), _hf_of(tuned)
    deltas = []
    for path in paths:
        d = tuned_hf.get_submodule(path).weight - base_hf.get_submodule(path).weight
        nz = d != 0
        rows, cols = nz.any(1).nonzero().flatten(), nz.any(0).nonzero().flatten()
        if rows.numel() == 0:
            continue
        axis, index = (0, rows) if rows.numel() * d.shape[1] <= cols.numel() * d.shape[0] else (1, cols)
        deltas.append(SparseDelta(path, axis, index, d.index_select(axis, index).clone()))
    return SparseAdapter(name, deltas, [(list(paths), modules_fingerprint(base_hf, list(paths)))])


def _key(path: str, kind: str, j: int) -> str:
    return f"{PEFT_PREFIX}{path}.s2ft_{kind}" + (f".{j}" if j else "")


def save_adapter(adapter: SparseAdapter, out_dir: str | Path, made: list[str] | None = None) -> Path:
    """Write ``adapter`` as ``adapter_config.json`` (tangentft-sparse) + ``adapter_model.safetensors`` + a
    README.md model card (``made``: how it was made, one line each)."""
    out_dir = Path(out_dir)
    tensors, seen = {}, {}
    for d in adapter.deltas:
        j = seen[d.path] = seen.get(d.path, -1) + 1
        tensors[_key(d.path, "index", j)] = d.index.long()
        tensors[_key(d.path, "axis", j)] = torch.tensor([d.axis], dtype=torch.long)
        tensors[_key(d.path, "delta", j)] = d.values
    save_safetensors(out_dir / "adapter_model.safetensors", tensors)
    write_json(out_dir / "adapter_config.json", {
        "format": SPARSE_FORMAT, "name": adapter.name,
        "fingerprints": [[list(p), fp] for p, fp in adapter.fingerprints],
    })
    from .card import write_card

    write_card(out_dir, title=f"tangentft sparse adapter: {adapter.name}",
               made=made or [f"{adapter.numel:,} values over {len(adapter.paths)} modules"])
    return out_dir


def base_model_name(path: str | Path) -> str | None:
    """The ``base_model_name_or_path`` an adapter folder's config records, if any."""
    return read_json(Path(path) / "adapter_config.json", AdapterConfig).base_model_name_or_path


def load_adapter(path: str | Path, name: str | None = None) -> SparseAdapter:
    """Read an S2FT adapter folder (PEFT ``save_pretrained`` output or :func:`save_adapter` output)."""
    folder = Path(path)
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        raise TangentError(f"{folder}: not an adapter folder (needs adapter_config.json and adapter_model.safetensors)")
    return read_sparse(folder, read_json(cfg_file, AdapterConfig), name)


def read_sparse(folder: Path, cfg: AdapterConfig, name: str | None = None) -> SparseAdapter:
    """The S2FT adapter in ``folder`` whose ``adapter_config.json`` was already read as ``cfg``."""
    cfg_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise TangentError(f"{folder}: not an adapter folder (needs adapter_config.json and adapter_model.safetensors)")
    if cfg.format == SPARSE_FORMAT:
        fingerprints = [(list(p), fp) for p, fp in cfg.fingerprints]
    elif (cfg.peft_type or "").upper() == "S2FT":
        fingerprints = [(list(cfg.fingerprint_modules or cfg.target_modules), cfg.base_fingerprint)]
    else:
        kind = f"peft_type {cfg.peft_type!r}" if cfg.peft_type else f"format {cfg.format!r}"
        raise TangentError(f"{cfg_file}: {kind} is not an S2FT sparse adapter")
    tensors = load_safetensors(weights)
    deltas = []
    for key in tensors:
        stem, sep, suffix = key.partition(".s2ft_delta")
        if not sep:
            continue
        j = suffix.lstrip(".")
        tail = f".{j}" if j else ""
        axis, index = tensors.get(f"{stem}.s2ft_axis{tail}"), tensors.get(f"{stem}.s2ft_index{tail}")
        values = tensors[key]
        if axis is None or index is None or axis.numel() != 1 or int(axis[0]) not in (0, 1) or values.dim() != 2 \
                or index.dim() != 1 or values.shape[int(axis[0])] != index.numel():
            raise TangentError(f"{weights}: the S2FT delta '{key}' has no matching axis/index tensors of the right shape")
        deltas.append(SparseDelta(stem.removeprefix(PEFT_PREFIX), int(axis[0]), index.long(), values))
    if not deltas:
        raise TangentError(f"{weights}: holds no S2FT deltas")
    # A run keeps its adapter in RUN/adapter: the run's name says which adapter it is.
    default = folder.resolve().parent.name if folder.name == "adapter" else folder.name
    return SparseAdapter(name or cfg.name or default, deltas, fingerprints, cfg.base_model_name_or_path)
