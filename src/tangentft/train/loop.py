"""The trainer: one loop for every method, with the pull toward θ0, schedules, early stopping and resume.

Dropout is off during training (the model runs in eval mode): f(x; θ) is then the deterministic function
the eNTK theory describes, the linearization metrics compare like with like, and runs are reproducible.
Data order is a seeded permutation per epoch, so a resumed run needs only the step counters of its
:class:`~tangentft.train.checkpoint.TrainState` to continue exactly where a killed one stopped.

:meth:`Trainer.fit` is a sequence of named phases: :meth:`~Trainer.setup` (model, optimizer, schedule,
probe), :meth:`~Trainer.start_or_resume`, then :meth:`~Trainer.next_batch` → :meth:`~Trainer.step` until
:meth:`~Trainer.done`, with :meth:`~Trainer.eval_row` and the :meth:`~Trainer.stop_rule` every
``eval_every`` steps, and :meth:`~Trainer.finish`.

Devices, precision and processes are accelerate's (:class:`accelerate.Accelerator`): the model is placed and,
under ``torchrun``/``accelerate launch`` (or ``--nproc``), wrapped in DDP — or sharded by the DeepSpeed/FSDP
plugin of the user's accelerate config; ``dtype`` bfloat16/float16 runs the forward under autocast with fp32
master weights for the trained parameters (float16 with a gradient scaler). ``batch_size`` is per rank: a
global micro-batch of ``batch_size × ranks`` examples is cut from the same seeded permutation, so 2 ranks with
batch b follow the data order of 1 rank with batch 2b. Every rank evaluates (the numbers agree, so early
stopping agrees); only rank 0 writes files. The pull toward θ0 acts on DDP's all-reduced gradients, so its
selective mask is the same on every rank.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from .. import distributed
from ..data.sampling import epoch_order, run_examples, train_val_split
from ..data.scoring import task_metric
from ..errors import TangentError
from ..io import append_jsonl, atomic_write, write_json
from ..methods.base import FineTuneMethod
from ..schemas import MetricsRow, read_jsonl
from .checkpoint import TrainState, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .measures import LinearizationProbe, peak_rss_gb, theta_dist
from .regularization import PullToInit, build_optimizer
from .schedule import warmup_linear, warmup_linear_factor


def check_diverged(step: int, loss: float, params: dict[str, torch.Tensor], lr: float) -> None:
    """Stop a run at the first non-finite loss or trained weight: nothing after it could be saved as a
    result. Raises a one-line TangentError naming the step, and the tensor when it is the weights."""
    if not math.isfinite(loss):
        raise TangentError(f"training diverged at step {step}: the loss is {loss} (learning rate {lr:g}); "
                           "try a smaller learning rate")
    for name, p in params.items():
        if not bool(torch.isfinite(p).all()):
            raise TangentError(f"training diverged at step {step}: non-finite weights in {name} after the update "
                               f"(learning rate {lr:g}); try a smaller learning rate")


def check_row_finite(row: dict, lr: float) -> None:
    """An evaluation whose loss is not finite means the weights no longer compute anything: stop there."""
    for key in ("eval_loss", "val_loss"):
        if row.get(key) is not None and not math.isfinite(row[key]):
            raise TangentError(f"training diverged at step {row['step']}: {key} is {row[key]} "
                               f"(learning rate {lr:g}); try a smaller learning rate")


@dataclass
class TrainData:
    """The example lists of one run: train, validation (early stopping), evaluation, and the probe set."""

    train: list
    val: list
    eval: list
    probe: list


def split_data(task, cfg: TrainConfig) -> TrainData:
    """Train/validation/eval/probe lists for ``cfg``: seeded samples, validation held out of train."""
    train, evals = run_examples(task, cfg.n_train, cfg.n_eval, cfg.seed)
    if not evals and cfg.n_eval:  # n_eval 0 asks for no evaluation; a task without dev/test gets none unasked
        import warnings

        warnings.warn(f"task '{task.spec.name}' has no dev or test split: the run records no eval loss or metric "
                      "(its final line says so)", stacklevel=2)
    val: list = []
    if cfg.early_stop or cfg.val_fraction:
        train, val = train_val_split(train, cfg.val_fraction or 0.1, seed=cfg.seed)
    return TrainData(train, val, evals, train[: cfg.probe_size])


@dataclass
class Batch:
    """The data of one optimizer step: encoded micro-batches (gradient accumulation) and their example count.

    Each micro-batch holds ``input_ids``, ``attention_mask``, ``targets`` (N×K) and ``labels`` (class ids;
    None for regression).
    """

    micro: list[dict[str, torch.Tensor | None]]
    n_examples: int


def task_loss(outputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Summed loss over the batch: cross-entropy over the K outputs, or squared error averaged over K."""
    if loss == "ce":
        return F.cross_entropy(outputs, labels, reduction="sum")
    return ((outputs - targets) ** 2).mean(dim=-1).sum()


class Trainer:
    """Trains ``method`` on ``task_model`` with the data and (already validated) config given; see :meth:`fit`."""

    def __init__(self, task_model, method: FineTuneMethod, data: TrainData, cfg: TrainConfig, out_dir: Path,
                 callback: Callable[[int, int, dict], None] | None = None):
        if not data.train:
            raise TangentError("no training examples")
        self.task_model = task_model
        self.method = method
        # Evaluated in length order (TaskModel.length_order): less padding, the same numbers.
        self.data = TrainData(data.train, self._by_length(task_model, data.val),
                              self._by_length(task_model, data.eval), data.probe)
        self.cfg = cfg
        self.out = Path(out_dir)
        self.callback = callback
        self.kind = task_model.spec.kind
        self.loss_name = cfg.loss or ("mse" if self.kind == "regression" else "ce")
        if self.loss_name == "ce" and self.kind == "regression":
            raise TangentError("loss 'ce' needs a classification task; use loss 'mse' for regression")
        self._order: tuple[int, list[list[int]]] | None = None
        self.rank, self.ranks = 0, 1

    @staticmethod
    def _by_length(task_model, examples: list) -> list:
        return [examples[i] for i in task_model.length_order(examples)]

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    # -- phases --------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Train; returns the summary dict (also written as summary.json). ``resume`` continues from the
        checkpoint in ``out_dir`` and ends bit-identical (on CPU) to an uninterrupted run."""
        self.setup()
        state, last = self.start_or_resume(resume)
        while not self.done(state):
            loss = self.step(self.ddp_model, self.next_batch(state), state)
            if state.step % self.eval_every == 0 or state.step == self.total:
                last = self.eval_row(state)
            if self.callback:
                self.callback(state.step, self.total, {"loss": loss, **_brief(last)})
        return self.finish(state, last)

    def setup(self) -> None:
        """Seed, prepare the method's model at θ0, and build the optimizer (with the pull toward θ0), the step
        budget (capped by the kernel rule when asked), the schedule and the linearization probe."""
        cfg = self.cfg
        self.accelerator = _accelerator(self.task_model.device, cfg.dtype)
        _check_engine(self.accelerator, cfg.reg)
        self.rank, self.ranks = self.accelerator.process_index, self.accelerator.num_processes
        torch.manual_seed(cfg.seed)
        self.method.bind_data(self.data.train)
        self.model = self.method.prepare(self.task_model)
        self.model.eval()  # dropout off: see the module docstring
        self.params = self.method.trainable_parameters(self.model)
        if not self.params:
            raise TangentError(f"method '{self.method.name}' selected no trainable parameters")
        for p in self.params.values():  # fp32 master weights; the frozen rest stays in the load dtype
            if p.dtype != torch.float32:
                p.data = p.data.float()
        self.checkpointed = _checkpoint_layers(self.method.name, self.task_model.hf) if cfg.grad_checkpointing else []
        self.theta0 = self.method.reference_point(self.model)
        opt = build_optimizer(cfg.optimizer, list(self.params.values()), cfg.lr, cfg.weight_decay)
        # The schedule drives the torch optimizer; accelerate's wrapper adds the fp16 scaler around its step.
        self.ddp_model, self.accel_opt = self.accelerator.prepare(self.model, opt)
        # The pull hooks the torch optimizer's step, which accelerate's wrapper calls after unscaling fp16 grads.
        self.optimizer = PullToInit(opt, self.params, self.theta0, mode=cfg.reg, lam=cfg.lam,
                                    per_element=cfg.reg_per_element)
        n = len(self.data.train)
        self.micro_per_epoch = math.ceil(n / (cfg.batch_size * self.ranks))
        steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.total = cfg.max_steps or cfg.epochs * steps_per_epoch
        self.kernel_rule = None
        if cfg.stop_at == "kernel-rule":
            from ..analysis.kernel_rule import kernel_rule

            if distributed.is_main():
                self.out.mkdir(parents=True, exist_ok=True)
            self.kernel_rule = kernel_rule(self.task_model, self.method, self.data.train, optimizer=cfg.optimizer,
                                           loss=self.loss_name, lr=cfg.lr, seed=cfg.seed, out_dir=self.out)
            self.total = max(1, min(self.total, int(self.kernel_rule["T_hat"])))
        self.eval_every = cfg.eval_every or max(1, self.total // 5)
        self.scheduler = warmup_linear(opt, self.total, cfg.warmup_ratio)
        # The probe's θ0 is keyed like the network's values (method.nonlinear), which for a factored method
        # (linearized with factor_rank: θ0 + B·A) are not its trainable tensors.
        _, theta_at_0 = self.method.nonlinear(self.model)
        # The probe calls the method's network directly, not the prepared model accelerate runs under autocast:
        # with bfloat16/float16 weights and fp32 trained tensors it needs the same autocast to multiply them.
        with self.accelerator.autocast():
            self.probe = LinearizationProbe(self.method, self.model, self.task_model.encode(self.data.probe),
                                            {n: t.detach().clone() for n, t in theta_at_0.items()})

    def start_or_resume(self, resume: bool) -> tuple[TrainState, dict]:
        """A fresh :class:`TrainState` and the step-0 evaluation row, or the checkpoint's state loaded into
        the live objects and the last row already recorded."""
        if not resume:
            if distributed.is_main():
                self.out.mkdir(parents=True, exist_ok=True)
                if self.metrics_path.exists():
                    self.metrics_path.unlink()
            state = TrainState()
            self._t0 = time.perf_counter()
            return state, self.eval_row(state)
        ck = load_checkpoint(self.out)
        self.method.load_checkpoint_state(self.model, ck.model_state)
        self.optimizer.load_state_dict(ck.optimizer_state)
        self.scheduler.load_state_dict({**ck.scheduler_state, "lr_lambdas": [None]})
        self._continue_schedule()
        torch.set_rng_state(ck.rng["torch"])
        state = ck.state
        if distributed.is_main():
            self._truncate_metrics(self.metrics_path, state.step)
        self._t0 = time.perf_counter() - state.wall_s
        return state, self._last_row(self.metrics_path)

    def _continue_schedule(self) -> None:
        """Set the rate of the next step from the schedule of a run planned for ``self.total`` steps.

        The checkpoint holds the rate its own schedule gave the next step, which is 0 after the last step of a
        finished run: a run extended to T' steps would spend its first new step at rate 0 and change nothing.
        The extended run instead goes on as a T'-step run would at this step (linear decay toward 0 at step T',
        from the resumed step on); a run resumed with its own step budget gets back exactly the stored rate.
        """
        step = self.scheduler.last_epoch
        rates = [base * warmup_linear_factor(step, self.total, self.cfg.warmup_ratio) for base in self.scheduler.base_lrs]
        for group, rate in zip(self.scheduler.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        self.scheduler._last_lr = rates

    def done(self, state: TrainState) -> bool:
        """The step budget is spent or early stopping fired."""
        return state.step >= self.total or state.stopped_early

    def next_batch(self, state: TrainState) -> Batch:
        """The next ``grad_accum`` micro-batches of the epoch's seeded permutation, encoded; advances the data
        position in ``state`` (to the next epoch at the end of one)."""
        batches = self._epoch_batches(state.epoch)
        if state.batch_ptr >= len(batches):  # a checkpoint written at the very end of an epoch
            state.epoch, state.batch_ptr = state.epoch + 1, 0
            batches = self._epoch_batches(state.epoch)
        group = batches[state.batch_ptr : state.batch_ptr + self.cfg.grad_accum]
        state.batch_ptr += len(group)
        if state.batch_ptr >= len(batches):
            state.epoch, state.batch_ptr = state.epoch + 1, 0
        micro = []
        for idx in group:
            # This rank's share of the global micro-batch; a rank left without examples runs the first one
            # with weight 0, so every rank still takes part in DDP's gradient all-reduce.
            share = idx[self.rank * self.cfg.batch_size : (self.rank + 1) * self.cfg.batch_size]
            examples = [self.data.train[i] for i in (share or idx[:1])]
            enc = self.task_model.encode(examples)
            targets, labels = self._targets(examples)
            device = self.task_model.device
            micro.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                          "targets": targets.to(device), "labels": None if labels is None else labels.to(device),
                          "weight": 1.0 if share else 0.0})
        return Batch(micro, sum(len(b) for b in group))

    def step(self, model: torch.nn.Module, batch: Batch, state: TrainState) -> float:
        """One optimizer step on ``batch``: accumulate the mean loss's gradient over its micro-batches, pull
        toward θ0 and update, advance the schedule, let the method act (proximal steps); returns the loss."""
        step_loss = torch.zeros((), dtype=torch.float64)
        # DDP averages over ranks; scaling by the number of ranks makes the result Σ_examples loss / n_global.
        scale = self.ranks / batch.n_examples
        for i, mb in enumerate(batch.micro):
            last = i == len(batch.micro) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model), \
                    _checkpointing(self.checkpointed):
                out = model(mb["input_ids"], mb["attention_mask"])
                loss = task_loss(out.float(), mb["targets"], mb["labels"], self.loss_name) * (mb["weight"] * scale)
                self.accelerator.backward(loss)
            step_loss += float(loss.detach()) / self.ranks
        distributed.all_reduce_sum([step_loss], "summing the step loss")
        step_loss = float(step_loss)
        check_diverged(state.step + 1, step_loss, {}, self.cfg.lr)
        lr = self.optimizer.param_groups[0]["lr"]
        self.accel_opt.step()
        self.scheduler.step()
        self.method.after_step(model, lr)
        self.optimizer.zero_grad()
        state.step += 1
        check_diverged(state.step, step_loss, self.params, self.cfg.lr)
        state.loss_sum += step_loss
        state.loss_n += 1
        return step_loss

    def eval_row(self, state: TrainState) -> dict[str, Any]:
        """Evaluate, measure the linearization, append the metrics row, apply the stop rule and checkpoint."""
        row: dict[str, Any] = {
            "step": state.step,
            "epoch": round(state.epoch + state.batch_ptr / self.micro_per_epoch, 4),
            "train_loss": state.loss_sum / state.loss_n if state.loss_n else None,
        }
        state.loss_sum, state.loss_n = 0.0, 0
        if self.data.eval:
            row["eval_loss"], row["eval_metric_name"], row["eval_metric"] = self.evaluate(self.data.eval)
        if self.data.val:
            row["val_loss"], _, row["val_metric"] = self.evaluate(self.data.val)
        check_row_finite(row, self.cfg.lr)
        row["theta_dist"] = theta_dist(self.params, self.theta0)
        with self.accelerator.autocast():
            row.update(self.probe.measure(self.model))
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        state.wall_s = time.perf_counter() - self._t0
        row["wall_s"] = round(state.wall_s, 3)
        row["peak_rss_gb"] = round(peak_rss_gb(), 4)
        self.stop_rule(row, state)
        if distributed.is_main():
            append_jsonl(self.metrics_path, row)
            self._checkpoint(state)
        return row

    def stop_rule(self, row: dict[str, Any], state: TrainState) -> None:
        """Early stopping on the validation loss: keep the best weights, stop after ``early_stop`` evaluations
        without improvement. Off without a validation set or with patience 0."""
        if not (self.data.val and self.cfg.early_stop):
            return
        if state.best_loss is None or row["val_loss"] < state.best_loss:
            state.best_loss, state.best_step, state.bad_evals = row["val_loss"], state.step, 0
            state.best_weights = self.method.checkpoint_state(self.model)
        else:
            state.bad_evals += 1
            state.stopped_early = state.bad_evals >= self.cfg.early_stop

    def finish(self, state: TrainState, last: dict[str, Any]) -> dict:
        """Restore the best weights (early stopping), save the method's trained update and summary.json."""
        if state.best_weights is not None:
            self.method.load_checkpoint_state(self.model, state.best_weights)
        if distributed.is_main():
            self.method.save(self.model, self.out)
        summary = {
            "method": self.method.name,
            "steps": state.step,
            "total_steps": self.total,
            "stopped_early": state.stopped_early,
            "best_step": state.best_step,
            "restored_best": state.best_weights is not None,
            "trainable_params": int(sum(p.numel() for p in self.params.values())),
            "pull_fraction": self.optimizer.pull_fraction(),
            "kernel_rule": self.kernel_rule,
            "ranks": self.ranks,
            "dtype": self.cfg.dtype,
            "last": last,
        }
        if distributed.is_main():
            write_json(self.out / "summary.json", summary)
        distributed.barrier("finishing the run")
        return summary

    # -- pieces --------------------------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._order is None or self._order[0] != epoch:
            n = len(self.data.train)
            perm = epoch_order(n, self.cfg.seed, epoch)
            size = self.cfg.batch_size * self.ranks  # the global micro-batch
            self._order = (epoch, [perm[i : i + size] for i in range(0, n, size)])
        return self._order[1]

    def _targets(self, examples):
        labels = None if self.kind == "regression" else torch.tensor([int(e.label) for e in examples])
        return self.task_model.targets(examples), labels

    @torch.no_grad()
    def evaluate(self, examples) -> tuple[float, str, float]:
        """(mean loss, metric name, metric) of the current model on ``examples``."""
        outs = []
        for i in range(0, len(examples), self.cfg.eval_batch_size):
            enc = self.task_model.encode(examples[i : i + self.cfg.eval_batch_size])
            outs.append(self.model(enc["input_ids"], enc["attention_mask"]))
        out = torch.cat(outs).float().cpu()
        targets, labels = self._targets(examples)
        loss = float(task_loss(out, targets, labels, self.loss_name)) / len(examples)
        name, value = task_metric(out, [e.label for e in examples], self.kind)
        return loss, name, value

    def _checkpoint(self, state: TrainState) -> None:
        save_checkpoint(
            self.out,
            state,
            model_state=self.method.checkpoint_state(self.model),
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict(),
            rng={"torch": torch.get_rng_state()},
        )

    @staticmethod
    def _truncate_metrics(path: Path, step: int) -> None:
        # A run killed between its metrics line and its checkpoint wrote rows the resumed run will redo.
        if not path.exists():
            return
        keep = [r.model_dump() for r in read_jsonl(path, MetricsRow) if r.step <= step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))

    @staticmethod
    def _last_row(path: Path) -> dict:
        rows = read_jsonl(path, MetricsRow)
        return rows[-1].model_dump() if rows else {}


def _brief(row: dict) -> dict:
    out = {}
    if row.get("eval_metric") is not None:
        out[row.get("eval_metric_name", "metric")] = row["eval_metric"]
    return out


MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}
# Training through torch.func transforms: activation checkpointing does not compose with their jvp.
NO_CHECKPOINTING = ("linearized", "nuclear-prox")


def _accelerator(device: torch.device, dtype: str):
    """accelerate's Accelerator for the model's device and dtype, with tangentft's process-group timeout."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from ..device import dtype_name, resolve_dtype

    mixed = MIXED_PRECISION[dtype_name(resolve_dtype(dtype))]
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        # accelerate keeps one precision per process; a later run in the same process may ask for another
        AcceleratorState._reset_state()
    try:
        return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed,
                           kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=distributed.DEFAULT_TIMEOUT_S))])
    except (ValueError, RuntimeError) as exc:
        raise TangentError(f"dtype '{dtype}' on {device}: accelerate refuses it ({str(exc).splitlines()[0]})") from None


def _check_engine(accelerator, reg: str) -> None:
    """Refuse the engines whose parameter handling the trainer cannot follow (one clear line each).

    θ0, ‖θt − θ0‖, the pull and the linearization probe read whole parameter tensors on every rank, and the
    pull must act between the all-reduced gradient and the optimizer step. ZeRO-3 and FSDP shard the
    parameters; DeepSpeed steps its optimizer inside ``backward``, before any pull could act.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.state.distributed_type
    if kind == DistributedType.FSDP:
        raise TangentError("FSDP shards parameters, but θ0, the pull and the linearization probe need whole "
                           "tensors on every rank: use DDP (accelerate's MULTI_GPU/MULTI_CPU) or DeepSpeed ZeRO-1/2")
    if kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:
            raise TangentError("DeepSpeed ZeRO-3 shards parameters, but θ0, the pull and the linearization probe "
                               "need whole tensors on every rank: use ZeRO-1/2 or DDP")
        if reg != "none":
            raise TangentError(f"reg '{reg}' under DeepSpeed: its optimizer steps inside backward, before the pull "
                               "toward θ0 could act; use reg none with DeepSpeed, or DDP")


def _checkpoint_layers(method: str, hf: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer layers whose activations the training step recomputes (gradient checkpointing)."""
    if method in NO_CHECKPOINTING:
        raise TangentError(f"grad_checkpointing does not apply to method '{method}' (it trains through torch.func)")
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in hf.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise TangentError(f"grad_checkpointing: {type(hf).__name__} has no checkpointable layers")
    for m in layers:
        m._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    return layers


@contextlib.contextmanager
def _checkpointing(layers: list[torch.nn.Module]):
    """Checkpoint ``layers`` for one forward/backward. HF checkpoints a layer only in training mode; the
    trainer keeps the model in eval mode (dropout off), so only the layers' own flags are set, never their
    dropouts', and only here — evaluation and the linearization probe's jvp run plain."""
    for m in layers:
        m.gradient_checkpointing, m.training = True, True
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing, m.training = False, False
