"""The training run's configuration: every field with its help text, validated once, when it is built, written
as the ``train`` command that reads back to it (:meth:`TrainConfig.command_line`) and read back from a run folder's
config.json (:func:`load_config`).

Each field's ``metadata["help"]`` is the only copy of its description: the ``train`` command's option
help is generated from it. Errors name the field (``lr``, ``max_steps``), never a command-line flag, so
the library reads the same from Python as from the CLI.
"""

from __future__ import annotations

import math
import shlex
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TangentError
from ..models.spec import Spec
from ..schemas import RunConfig, parse, read_json
from .regularization import OPTIMIZERS, REG_MODES

if TYPE_CHECKING:
    from ..data import TaskData
    from ..methods.base import MethodConfig

CONFIG = "config.json"  # a run folder's config, its TrainConfig under "train"
LOSSES = ("ce", "mse")
STOP_RULES = ("kernel-rule",)
# Learning rates above which a run is legal but almost surely a mistake: Adam's step moves every trained
# weight by about lr, so lr > 1 moves each weight by more than its usual size at every step. SGD's step
# scales with the gradient, so no fixed threshold says "too large" for it.
LARGE_LR = {"adamw": 1.0}


def _h(text: str, default: Any = None, **kw):
    if "default_factory" in kw:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    """Everything that determines a run (written to config.json; a resumed run reads it back).

    Building one validates it (:meth:`__post_init__`): a ``TrainConfig`` that exists is a valid one.
    """

    model: str = _h("Model registry name, folder or hub id.", "tiny-llama")
    task: str = _h("Task folder, data file or dataset id (tangentft.data.load_task).", "")
    template: str | None = _h("Prompt template replacing the task's ({sentence} or {sentence1}/{sentence2}).", None)
    label_words: list[str] | None = _h("Label words replacing the task's, one per class (comma-separated).", None)
    columns: dict = _h("Task column names when they differ: {'sentence': TEXT, 'label': LABEL}.", default_factory=dict)
    method: str = _h("Fine-tuning method (registry name).", "lora")
    method_options: dict = _h("Method config fields (params, lora_r, ...).", default_factory=dict)
    reg: str = _h("Pull toward θ0: none, l2 or selective (linearization paper eq. 8).", "none")
    lam: float = _h("λ of the pull (λ/2)‖θ − θ0‖².", 0.0)
    reg_per_element: bool = _h("Selective pull decided per element instead of per tensor.", False)
    weight_decay: float = _h("Decoupled weight decay of the optimizer (toward 0).", 0.0)
    optimizer: str = _h("adamw or sgd.", "adamw")
    lr: float = _h("Peak learning rate (linear warmup, then linear decay to 0).", 1e-4)
    warmup_ratio: float = _h("Fraction of steps with linear warmup.", 0.06)
    epochs: int = _h("Epochs (ignored when max_steps is set).", 1)
    max_steps: int | None = _h("Optimizer steps (overrides epochs).", None)
    batch_size: int = _h("Examples per micro-batch.", 8)
    grad_accum: int = _h("Micro-batches per optimizer step.", 1)
    loss: str | None = _h("ce (cross-entropy over the K outputs) or mse; default ce, mse for regression.", None)
    n_train: int | None = _h("Training examples sampled from the train split (default all).", None)
    n_eval: int | None = _h("Evaluation examples sampled from dev/test.", 128)
    eval_every: int | None = _h("Evaluate every K steps (default: 5 evaluations per run).", None)
    early_stop: int = _h("Patience in evaluations on the validation loss (0: off).", 0)
    val_fraction: float | None = _h("Hold-out fraction of the training data (default 0.1 with early stopping).", None)
    probe_size: int = _h("Training examples in the fixed linearization probe set.", 32)
    eval_batch_size: int = _h("Batch size for evaluation.", 32)
    seed: int = _h("Seed for data sampling and order, initialisation and LoRA init.", 0)
    stop_at: str | None = _h("kernel-rule: stop at T̂ of the eNTK early-stopping rule (early-stopping paper §3.5).",
                             None)
    num_labels: int | None = _h("Classes of a classification task whose files do not show them all (labels 0..N-1).",
                                None)
    score_range: list[float] | None = _h("[low, high] range of a regression task's scores (STS-B: 0–5 built in).", None)
    device: str = _h("auto, cpu, cuda, cuda:N or mps (auto: CUDA when present; under a launcher, the local rank's GPU).",
                     "auto")
    dtype: str = _h("Frozen weights' dtype: float32, or bfloat16/float16 with autocast and fp32 master weights "
                    "for the trained parameters (float16 adds a gradient scaler).", "float32")
    grad_checkpointing: bool = _h("Recompute each layer's activations in the backward pass (less memory, more time).",
                                  False)

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        """One clear error, naming the field and its value, for the first out-of-range setting."""
        from ..methods.base import get_method

        method = get_method(self.method)
        # stored typed, so a config built from strings (``key=value`` options) equals the one built from values;
        # the spec's text is parsed here, once (config.json gets its text back from to_json)
        self.method_options = method.config_class.coerce_options(self.method, self.method_options)
        self.method_config()  # unknown options and bad values fail before any loading
        from ..device import dtype_name, resolve_dtype

        dtype = dtype_name(resolve_dtype(self.dtype))
        if method.dtypes is not None and dtype not in method.dtypes:
            raise TangentError(f"method '{self.method}' does not train with dtype {dtype} ({method.dtypes_why}); "
                               f"use dtype {' or '.join(method.dtypes)}")
        checks = [
            (self.lr > 0, f"learning rate must be positive, got lr={self.lr}"),
            (0 <= self.seed < 2**63, f"seed must be in 0 … 2**63−1 (torch's seed range), got {self.seed}"),
            (self.stop_at in (None, *STOP_RULES),
             f"unknown stop_at '{self.stop_at}': the only rule is {', '.join(STOP_RULES)}"),
            (self.lam >= 0, f"λ must be ≥ 0, got lam={self.lam}"),
            (self.reg in REG_MODES, f"unknown reg '{self.reg}': choose from {', '.join(REG_MODES)}"),
            # Options that act only through another one: given alone they would be recorded and do nothing.
            (self.reg != "none" or not self.lam,
             f"lam={self.lam} needs a pull toward θ0 to weigh, but reg is 'none': set reg to l2 or selective"),
            (self.reg == "selective" or not self.reg_per_element,
             f"reg_per_element decides the selective pull per element, but reg is '{self.reg}': set reg to selective"),
            (self.optimizer in OPTIMIZERS,
             f"unknown optimizer '{self.optimizer}': choose from {', '.join(OPTIMIZERS)}"),
            (self.weight_decay >= 0, f"weight decay must be ≥ 0, got weight_decay={self.weight_decay}"),
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be ≥ 1, got {self.max_steps}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be ≥ 1, got {self.eval_batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be ≥ 1, got {self.grad_accum}"),
            (self.loss in (None, *LOSSES), f"unknown loss '{self.loss}': choose from {', '.join(LOSSES)}"),
            (self.eval_every is None or self.eval_every >= 1, f"eval_every must be ≥ 1, got {self.eval_every}"),
            (self.early_stop >= 0, f"early_stop patience must be ≥ 0, got {self.early_stop}"),
            (self.val_fraction is None or 0 < self.val_fraction < 1,
             f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.n_train is None or self.n_train >= 1, f"n_train must be ≥ 1, got {self.n_train}"),
            (self.n_eval is None or self.n_eval >= 0, f"n_eval must be ≥ 0, got {self.n_eval}"),
            (self.probe_size >= 1, f"probe size must be ≥ 1, got probe_size={self.probe_size}"),
            (0 <= self.warmup_ratio < 1, f"warmup ratio must be in [0, 1), got warmup_ratio={self.warmup_ratio}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TangentError(msg)
        for name in ("lr", "lam", "weight_decay", "warmup_ratio", "val_fraction"):
            value = getattr(self, name)  # inf passes the range checks and trains to NaN weights
            if value is not None and not math.isfinite(value):
                raise TangentError(f"{name} must be a finite number, got {value}")
        large = LARGE_LR.get(self.optimizer)
        if large is not None and self.lr > large:
            warnings.warn(f"lr={self.lr:g} is unusually large for {self.optimizer}: each step moves every trained weight "
                          f"by about lr (usual values are 1e-5 to 1e-2)", stacklevel=4)

    def load_task(self) -> TaskData:
        """The run's task exactly as the run trains on it: :func:`tangentft.data.load_task` of ``task`` with this
        config's template, label words, columns, number of labels and score range. Every place that rebuilds a
        run (training, prediction, task vectors, the experiments) loads its task here, so they cannot disagree."""
        from ..data import load_task

        if not self.task:
            raise TangentError("no task given: the config's task field is empty")
        return load_task(self.task, template=self.template, label_words=self.label_words,
                         columns=self.columns or None, num_labels=self.num_labels,
                         score_range=tuple(self.score_range) if self.score_range is not None else None)

    def method_config(self) -> MethodConfig:
        """The run's method config: the method's config class built from ``method_options`` and the run's seed."""
        from ..methods.base import get_method

        return get_method(self.method).config_class.from_options(self.method, {"seed": self.seed, **self.method_options})

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field ``name`` (the single source of the ``train`` option help)."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default value of field ``name`` (None for fields built by a factory)."""
        f = next(f for f in fields(cls) if f.name == name)
        return None if f.default is MISSING else f.default

    @staticmethod
    def flag(name: str) -> str:
        """The ``train`` command's option for field ``name``: ``--name-with-dashes``."""
        return f"--{name.replace('_', '-')}"

    def command_line(self, out: str | Path, *, predict: bool = False) -> str:
        """The ``tangentft train`` command that runs this config into ``out`` (shell-quoted): model, task and every
        field that differs from its default, under the option :meth:`flag` names (``method_options``: ``params``
        as ``--params``, the rest as ``--method-opt key=value``; ``columns`` as ``--text-column``/``--label-column``);
        ``predict`` adds ``--predict`` (the run predicts its own curve first)."""
        args = ["tangentft", "train"]
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default is MISSING else f.default
            if value == default and f.name not in ("model", "task"):
                continue
            if value is None:
                raise TangentError(f"field {f.name} is None (default {default!r}): the train command cannot say that")
            if f.name == "method_options":
                for key, v in value.items():
                    args += ["--params", str(v)] if key == "params" else ["--method-opt", f"{key}={v}"]
            elif f.name == "columns":
                args += [a for key, opt in (("sentence", "--text-column"), ("label", "--label-column")) if key in value
                         for a in (opt, value[key])]
            elif isinstance(value, bool):
                args.append(self.flag(f.name))  # every bool field defaults to False: the option is a switch
            elif f.name == "template":
                args += [self.flag(f.name), value.replace("\n", "\\n")]
            elif isinstance(value, list):  # label_words, score_range
                args += [self.flag(f.name), ",".join(str(v) for v in value)]
            else:
                args += [self.flag(f.name), str(value)]
        if predict:
            args.append("--predict")
        return shlex.join([*args, "--out", str(out)])

    def to_json(self) -> dict:
        """The config as a plain dict (config.json's ``train`` entry): a spec as its text."""
        return asdict(self) | {"method_options": options_text(self.method_options)}

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """A config from :meth:`to_json` output; keys of older or newer versions that are not fields are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def options_text(method_options: dict) -> dict:
    """Method options as config.json holds them: a spec as its text, every other option as it is."""
    return {k: str(v) if isinstance(v, Spec) else v for k, v in method_options.items()}


def load_run_config(out_dir: Path) -> tuple[RunConfig, TrainConfig]:
    """The run's config.json, validated, and the TrainConfig it was started with."""
    path = Path(out_dir) / CONFIG
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise TangentError(f"{out_dir} is a file, not a tangentft train output folder")
    record = read_json(path, RunConfig, missing=f"{out_dir}: not a tangentft train output folder (no config.json)")
    return record, parse(TrainConfig, record.train, f"{path} field 'train'")


def load_config(out_dir: Path) -> TrainConfig:
    """The config a run in ``out_dir`` was started with (for ``--resume``)."""
    return load_run_config(out_dir)[1]
