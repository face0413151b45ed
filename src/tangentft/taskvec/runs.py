"""Task vectors from ``tangentft train`` output folders, and evaluating a base model with task vectors applied.

A run folder holds config.json and the method's artifact: a PEFT LoRA ``adapter/``, an S2FT ``adapter/``,
or ``trained.safetensors`` keyed by TaskModel parameter name. The task vector covers the base model's
parameters (``hf.*``); an encoder's head is task-specific, so it travels beside the vector and is put on
when that task is evaluated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data import Example, TaskSpec
from ..errors import TangentError
from ..io import load_safetensors
from ..models.fingerprint import base_weights_fingerprint
from ..models.registry import LoadedModel, load_model
from ..models.task_model import TaskModel
from ..schemas import AdapterConfig, read_json
from .sources import from_lora_adapter, from_state_dict
from .vector import TaskVector, _param_map

if TYPE_CHECKING:
    from ..train.config import TrainConfig


@dataclass
class Run:
    """A finished training run: where it is, what it trained, and its task vector once built."""

    path: Path
    model: str
    seed: int
    task: str
    method: str
    spec: TaskSpec
    recorded_base: str | None
    config: TrainConfig  # the run's own config: its task is rebuilt from it (TrainConfig.load_task)
    dtype: str = "float32"  # the dtype the run's base was loaded in
    vector: TaskVector | None = None
    head: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def read_run(path: str | Path) -> Run:
    """Read a run folder's config.json (one clear line when it is not a finished run)."""
    from ..train.config import load_run_config

    path = Path(path)
    cfg, train = load_run_config(path)
    return Run(path, train.model, train.seed, train.task, train.method, train.load_task().spec, cfg.base_fingerprint,
               train, dtype=train.dtype)


def _artifact_state(run: Run) -> dict[str, torch.Tensor]:
    for name in ("trained.safetensors", "extra.safetensors"):
        f = run.path / name
        if f.is_file():
            return load_safetensors(f)
    return {}


def build_vector(run: Run, base: LoadedModel) -> TaskVector:
    """The run's task vector against ``base`` (checked against the base fingerprint the run recorded)."""
    fingerprint = base_weights_fingerprint(base.model)
    if run.recorded_base and run.recorded_base != fingerprint:
        raise TangentError(
            f"{run.path}: trained on base {run.recorded_base}, but {base.name} has fingerprint {fingerprint}"
        )
    state = _artifact_state(run)
    run.head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    adapter = run.path / "adapter"
    if (adapter / "adapter_config.json").is_file():
        peft_type = read_json(adapter / "adapter_config.json", AdapterConfig).peft_type or ""
        if peft_type.upper() == "LORA":
            vec = from_lora_adapter(adapter, base.model, name=run.name)
        else:
            from .sources import from_s2ft_adapter

            vec = from_s2ft_adapter(adapter, base.model, name=run.name)
    else:
        body = {k.removeprefix("hf."): v for k, v in state.items() if k.startswith("hf.")}
        if not body and not run.head:
            raise TangentError(f"{run.path}: no trained weights found (adapter/ or trained.safetensors)")
        vec = from_state_dict(body, base.model, name=run.name, source=str(run.path))
    vec.meta.update({"method": run.method, "task": run.task})
    run.vector = vec
    return vec


def load_runs(paths: list[str | Path], *, device: str = "auto", dtype: str | None = None) -> tuple[list[Run], LoadedModel]:
    """Read runs, load their common base once (on ``device``, in ``dtype`` or else the dtype the first run
    trained in, so its base fingerprint matches), build every task vector; refuse mixed bases."""
    runs = [read_run(p) for p in paths]
    if not runs:
        raise TangentError("no run folders given")
    first = runs[0]
    for r in runs[1:]:
        if (r.model, r.seed if r.model.startswith("tiny-") else 0) != (first.model, first.seed if first.model.startswith("tiny-") else 0):
            raise TangentError(
                f"runs fine-tune different base models: {first.name} uses {first.model}, {r.name} uses {r.model}"
                + (f" (seed {first.seed} vs {r.seed})" if r.model == first.model else "")
            )
    base = load_model(first.model, seed=first.seed, device=device, dtype=dtype or first.dtype)
    for r in runs:
        build_vector(r, base)
    return runs, base


@contextlib.contextmanager
def applied(model: torch.nn.Module, vector: TaskVector | None, alpha: float = 1.0) -> Iterator[None]:
    """Temporarily θ ← θ + α·τ; the touched tensors are restored bit-exactly on exit."""
    if vector is None:
        yield
        return
    params = _param_map(model)
    saved = {k: params[k].detach().clone() for k in vector.deltas if k in params}
    from .vector import apply

    try:
        apply(model, vector, alpha)
        yield
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                params[k].copy_(v)


def task_model_for(run: Run, base: LoadedModel) -> TaskModel:
    """A TaskModel for the run's task on the shared base, with the run's trained head when it has one."""
    tm = TaskModel(base, run.spec, head_seed=run.seed)
    if run.head and tm.head is not None:
        tm.head.load_state_dict(run.head)
    return tm


def evaluate(tm: TaskModel, examples: list[Example], batch_size: int = 32) -> tuple[str, float]:
    """(metric name, value) of the task model on examples: accuracy, or Pearson r for regression."""
    from ..data.scoring import task_metric

    outputs = tm.predict(examples, batch_size=batch_size)
    return task_metric(outputs, [e.label for e in examples], tm.spec.kind)
