"""An adapter folder read for serving: its kind (LoRA or S2FT), the run it came from (base fingerprint, task
spec for classification) and its weights, in one value that a holder attaches to a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.tasks import get_builtin_spec
from ..data.types import TaskSpec
from ..errors import TangentError
from ..io import safetensors_metadata
from ..schemas import AdapterConfig, AdapterProvenance, TaskSpecRecord, read_json
from .sparse import SparseAdapter, read_sparse


@dataclass
class AdapterFolder:
    """A read adapter folder. ``weights`` holds an S2FT adapter's deltas; a LoRA's weights stay on disk for
    PEFT to read from ``path``, so its ``weights`` has no deltas, only the base fingerprints they carry."""

    name: str
    path: Path
    kind: str  # "lora" | "s2ft"
    task: TaskSpec | None
    base_fingerprint: str | None  # the base the run was trained on, when its config.json says
    weights: SparseAdapter


def read_folder(path: str | Path, name: str) -> AdapterFolder:
    """Read the adapter folder ``path`` to be served as ``name``; every fault is one TangentError naming its file."""
    path = Path(path)
    if not path.is_dir():
        raise TangentError(f"adapter path {path}: no such folder")
    cfg_file = path / "adapter_config.json"
    cfg = read_json(cfg_file, AdapterConfig, missing=f"{path}: not an adapter folder (no adapter_config.json)")
    if cfg.peft_type == "LORA":
        kind, weights = "lora", SparseAdapter(name, [], lora_fingerprints(path / "adapter_model.safetensors"))
    elif cfg.peft_type == "S2FT" or cfg.format == "tangentft-sparse":
        kind, weights = "s2ft", read_sparse(path, cfg, name)
    else:
        raise TangentError(f"{cfg_file}: peft_type {cfg.peft_type!r}: the server serves LoRA and S2FT adapters")
    run = provenance(path)
    task = task_spec(run.task_spec) if run.task_spec is not None else None
    return AdapterFolder(name, path, kind, task, run.base_fingerprint, weights)


def provenance(path: Path) -> AdapterProvenance:
    """The ``config.json`` of the tangentft training run an adapter folder belongs to (empty if none)."""
    for folder in (path, path.parent):
        f = folder / "config.json"
        if f.is_file():
            info = read_json(f, AdapterProvenance)
            if info.train is not None or info.task_spec is not None:  # else a model's own config.json
                return info
    return AdapterProvenance()


def task_spec(record: TaskSpecRecord) -> TaskSpec:
    """The task spec a run was trained for, as its config.json records it (label values from the built-in task)."""
    builtin = get_builtin_spec(record.name)
    values = (record.model_extra or {}).get("label_values") or (builtin.label_values if builtin else [])
    classes = len(record.label_words) if record.kind == "classification" else 1
    return TaskSpec(record.name, record.kind, record.template, list(record.label_words), list(values), classes)


def lora_fingerprints(weights: Path) -> list[tuple[list[str], str]]:
    """Base fingerprints a LoRA written by ``tangentft s2ft to-lora`` carries in its safetensors metadata."""
    if not weights.is_file():
        return []
    raw = safetensors_metadata(weights).get("tangentft_fingerprints")
    if not raw:
        return []
    try:
        return [(list(p), str(fp)) for p, fp in json.loads(raw)]
    except (json.JSONDecodeError, TypeError, ValueError):
        raise TangentError(f"{weights}: metadata 'tangentft_fingerprints' is not a list of [modules, fingerprint]") from None
