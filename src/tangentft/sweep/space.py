"""The search space of a sweep, read from a TOML file and validated once (pydantic).

A space names parameter sets (a method and its ``params`` spec, ``--params`` grammar), LoRA ranks, a log range
of learning rates (with the number of log-spaced points the prescreen predicts), steps, batch sizes and pulls
toward θ0, plus the run settings every configuration shares (``[train]``: any :class:`TrainConfig` field the
space does not vary); ``top`` is how many of the prescreen's best configurations are enqueued first, ``draws``
the bootstrap resamples behind each predicted interval, ``predict_n`` the kernel sample's cap. Every combination is one configuration of the grid (:meth:`Space.grid`); the Optuna
search draws the same dimensions (:meth:`Space.suggest`) with the learning rate continuous on its log range.
Every bad entry is refused in one line naming its key (``sets[1].params``, ``lr.low``, ``train.n_eval``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import TangentError
from ..io import fingerprint
from ..methods.base import get_method
from ..schemas import parse
from ..train.config import TrainConfig
from ..train.regularization import REG_MODES

# TrainConfig fields a space varies (its own keys), so [train] cannot also fix them.
VARIED = ("model", "task", "method", "method_options", "lr", "max_steps", "batch_size", "reg", "lam")


class LrRange(BaseModel):
    """A log range of learning rates; ``points`` log-spaced values of it make the prescreen's grid."""

    model_config = ConfigDict(extra="forbid")
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    points: int = Field(3, ge=1, le=50)

    @model_validator(mode="after")
    def _ordered(self) -> LrRange:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high < self.low:
            raise ValueError(f"needs finite 0 < low ≤ high, got low={self.low:g}, high={self.high:g}")
        if self.points == 1 and self.high != self.low:
            raise ValueError("points = 1 needs low = high")
        return self

    def values(self) -> list[float]:
        """The grid's learning rates: ``points`` log-spaced values from low to high (4 significant digits)."""
        return [float(f"{v:.4g}") for v in np.geomspace(self.low, self.high, self.points)]


class ParamSet(BaseModel):
    """One trained-parameter set: a method, its ``params`` spec and other method options; ``lr`` overrides the
    space's range for this set (a head wants larger steps than full fine-tuning)."""

    model_config = ConfigDict(extra="forbid")
    method: str
    params: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    lr: LrRange | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """The set's name in trials and reports: ``name``, or its method and params."""
        return self.name or " ".join(p for p in (self.method, self.params) if p)

    def takes_rank(self) -> bool:
        """Whether the method has a LoRA rank (``lora_r``), so the space's ``ranks`` apply to this set."""
        return "lora_r" in {f.name for f in fields(get_method(self.method).config_class)}


def parse_pull(text: str) -> tuple[str, float]:
    """``none``, ``l2:LAM`` or ``selective:LAM`` as (reg, lam)."""
    mode, _, lam = text.partition(":")
    if mode not in REG_MODES:
        raise ValueError(f"unknown pull '{text}': write none, l2:LAM or selective:LAM")
    if mode == "none":
        if lam:
            raise ValueError(f"pull 'none' takes no λ, got '{text}'")
        return "none", 0.0
    try:
        value = float(lam)
    except ValueError:
        raise ValueError(f"pull '{text}': λ must be a number (write {mode}:LAM)") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"pull '{text}': λ must be a finite number ≥ 0")
    return mode, value


class Space(BaseModel):
    """A sweep's search space (module docstring)."""

    model_config = ConfigDict(extra="forbid")
    sets: list[ParamSet] = Field(min_length=1)
    lr: LrRange
    steps: list[int] = Field(min_length=1)
    batch_size: list[int] = Field(default_factory=lambda: [8], min_length=1)
    ranks: list[int] = Field(default_factory=lambda: [8], min_length=1)
    pull: list[str] = Field(default_factory=lambda: ["none"], min_length=1)
    top: int = Field(3, ge=0)
    predict_n: int | None = Field(None, ge=2)
    draws: int = Field(20, ge=2, le=1000)
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("steps", "batch_size", "ranks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [x for x in v if x < 1]
        if bad:
            raise ValueError(f"every entry must be ≥ 1, got {bad[0]}")
        if len(set(v)) != len(v):
            raise ValueError("entries repeat")
        return v

    @field_validator("pull")
    @classmethod
    def _pulls(cls, v: list[str]) -> list[str]:
        for p in v:
            parse_pull(p)
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(TrainConfig)}
        for key in v:
            if key in VARIED:
                raise ValueError(f"'{key}' is set by the space itself (sets, lr, steps, batch_size, pull) or the sweep")
            if key not in known:
                raise ValueError(f"unknown run setting '{key}'")
        return v

    # -- the grid -----------------------------------------------------------------------------------------
    def lr_range(self, s: ParamSet) -> LrRange:
        """The learning-rate range of parameter set ``s``: its own, or the space's."""
        return s.lr or self.lr

    def grid(self) -> list[dict]:
        """Every configuration as its Optuna parameters (``set``, ``rank`` for sets with one, ``lr``, ``steps``,
        ``batch_size``, ``pull``), in a fixed order."""
        out = []
        for s in self.sets:
            for rank in self.ranks if s.takes_rank() else [None]:
                for lr in self.lr_range(s).values():
                    for steps in self.steps:
                        for batch in self.batch_size:
                            for pull in self.pull:
                                p = {"set": s.label, "lr": lr, "steps": steps, "batch_size": batch, "pull": pull}
                                out.append(p if rank is None else {**p, "rank": rank})
        return out

    def suggest(self, trial) -> dict:
        """Draw one configuration's parameters on an Optuna ``trial`` (learning rate continuous, log scale)."""
        label = trial.suggest_categorical("set", [s.label for s in self.sets])
        s = self.set_of(label)
        p = {"set": label}
        if s.takes_rank():
            p["rank"] = trial.suggest_categorical("rank", self.ranks)
        rng = self.lr_range(s)
        p["lr"] = trial.suggest_float("lr", rng.low, rng.high, log=True)
        p["steps"] = trial.suggest_categorical("steps", self.steps)
        p["batch_size"] = trial.suggest_categorical("batch_size", self.batch_size)
        p["pull"] = trial.suggest_categorical("pull", self.pull)
        return p

    def set_of(self, label: str) -> ParamSet:
        """The parameter set named ``label``."""
        for s in self.sets:
            if s.label == label:
                return s
        raise TangentError(f"the space has no parameter set '{label}'")

    def config(self, params: dict, model: str, task: str) -> TrainConfig:
        """The :class:`TrainConfig` of one configuration (``params`` as :meth:`grid` or :meth:`suggest` give)."""
        s = self.set_of(params["set"])
        options = dict(s.options)
        if s.params:
            options["params"] = s.params
        if params.get("rank") is not None:
            options["lora_r"] = int(params["rank"])
        reg, lam = parse_pull(params["pull"])
        return parse(TrainConfig, {**self.train, "model": model, "task": task, "method": s.method,
                                   "method_options": options, "lr": float(params["lr"]), "max_steps": int(params["steps"]),
                                   "batch_size": int(params["batch_size"]), "reg": reg, "lam": lam}, f"set '{s.label}'")

    def fingerprint(self) -> str:
        """A digest of the configurations the space holds (a study of another space is refused); ``top``,
        ``draws`` and ``predict_n`` change how it is searched, not what, and are left out."""
        return fingerprint(self.model_dump(mode="json", exclude={"top", "draws", "predict_n"}))


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_space(path: str | Path, model: str = "tiny-llama", task: str = "") -> Space:
    """Read and validate a space file; every bad entry is named in the one-line TangentError (``key: why``).
    Each parameter set is checked by building its run config for ``model`` (method known, params parse)."""
    path = Path(path)
    if not path.is_file():
        raise TangentError(f"{path}: no such space file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TangentError(f"{path}: not a TOML file ({exc})") from None
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_key(e['loc']) or 'space'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise TangentError(f"{path}: " + "; ".join(problems)) from None
    problems = []
    try:
        parse(TrainConfig, {**space.train, "model": model, "task": task}, "train")
    except TangentError as exc:
        problems.append(exc.message)
    train_bad = bool(problems)
    labels = [s.label for s in space.sets]
    for i, s in enumerate(space.sets):
        if labels.count(s.label) > 1:
            problems.append(f"sets[{i}]: the label '{s.label}' repeats (give the set a name)")
            continue
        try:
            space.config({"set": s.label, "lr": space.lr_range(s).low, "steps": space.steps[0],
                          "batch_size": space.batch_size[0], "pull": space.pull[0],
                          "rank": space.ranks[0] if s.takes_rank() else None}, model, task)
        except TangentError as exc:
            if not train_bad:  # a bad [train] entry fails every set too: it is named once, above
                problems.append(f"sets[{i}]: {exc.message}")
    if problems:
        raise TangentError(f"{path}: " + "; ".join(problems))
    return space


@dataclass(frozen=True)
class Budget:
    """How much a sweep may spend: ``runs`` full-run equivalents (one = the grid's mean configuration) or
    ``seconds`` of training wall time, summed over trials (so resumed and parallel workers share it)."""

    runs: float | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``6`` or ``2.5`` (full-run equivalents) or ``90s`` / ``30m`` / ``2h`` (training wall time)."""
        t = str(text).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:]) if t else None
        try:
            value = float(t[:-1] if scale else t)
        except ValueError:
            raise TangentError(f"budget '{text}': write a number of full runs (6) or a time (90s, 30m, 2h)") from None
        if not (math.isfinite(value) and value > 0):
            raise TangentError(f"budget '{text}' must be a positive number")
        return cls(seconds=value * scale) if scale else cls(runs=value)

    def describe(self) -> str:
        """The budget in words."""
        return f"{self.runs:g} full-run equivalents" if self.runs is not None else f"{self.seconds:g} s of training"
