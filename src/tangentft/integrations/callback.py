"""``TangentCallback``: tangentft's training diagnostics inside a ``transformers.Trainer``.

At the start of training (θ0) and every ``every`` optimizer steps it logs, through ``Trainer.log`` (so the
values reach ``state.log_history``, TensorBoard, W&B … the usual way):

* ``theta_dist`` = ‖θt − θ0‖₂ over the trainable tensors (float64);
* on a fixed probe batch X, the linearization paper's Table 1 columns — ``lin_gap`` = ‖f_θt(X) − f̄_θt(X)‖₂
  with f̄_θt = f_θ0 + J_θ0(θt − θ0) (exact, by ``torch.func.jvp``), ``lin_kl`` = mean KL(softmax f ‖ softmax f̄)
  and ``output_shift`` = ‖f_θt(X) − f_θ0(X)‖₂ — computed by :class:`tangentft.train.measures.LinearizationProbe`,
  the code behind ``tangentft train``'s metrics.jsonl;
* with ``pull_lam > 0``, the fraction of steps the (selective) pull toward θ0 was applied.

It optionally attaches a :class:`~tangentft.integrations.SelectivePull` to the Trainer's optimizer and
stops training at ``stop_at_step`` — e.g. the kernel rule's T̂ from :func:`kernel_rule_step` or from
``tangentft analyze``'s report (early-stopping paper §3.5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import TrainerCallback

from ..errors import TangentError
from ..train.measures import LinearizationProbe, theta_dist
from .pull import SelectivePull

OutputsFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """f(x) of a model: its output tensor, or the ``logits`` of its output dict / ``ModelOutput``."""
    out = model(**batch)
    return out if isinstance(out, torch.Tensor) else out["logits"]


class _Outputs(nn.Module):
    """f(x; θ) as a module taking (input_ids, attention_mask), for ``functional_call`` and ``jvp``."""

    def __init__(self, model: nn.Module, outputs: OutputsFn):
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, input_ids, attention_mask):
        return self.outputs(self.model, {"input_ids": input_ids, "attention_mask": attention_mask})


class _View:
    """What :class:`LinearizationProbe` asks of a method: the network and its trained values θt."""

    def __init__(self, net: _Outputs, names: list[str]):
        self.net, self.names = net, names

    def nonlinear(self, model):
        params = dict(self.net.model.named_parameters())
        return self.net, {f"model.{n}": params[n] for n in self.names}


def kernel_rule_step(task_model, selection, examples, *, lr: float, optimizer: str = "adamw", loss: str | None = None,
                     seed: int = 0, max_examples: int = 64) -> int:
    """T̂ of the eNTK early-stopping rule (early-stopping paper §3.5) for training ``selection`` of a tangentft
    task model on ``examples`` — the step ``tangentft train --stop-at kernel-rule`` stops at."""
    from ..analysis.kernel_rule import kernel_rule_for_selection

    loss = loss or ("mse" if task_model.spec.kind == "regression" else "ce")
    rule = kernel_rule_for_selection(task_model, selection, examples, optimizer=optimizer, loss=loss, lr=lr, seed=seed,
                                     max_examples=max_examples)
    return max(1, int(rule["T_hat"]))


class TangentCallback(TrainerCallback):
    """Log ‖θt − θ0‖ and the linearization gap on ``probe`` into a Trainer's logs; optionally pull toward θ0
    and stop at a given step. Use ``TangentCallback(...).attach(trainer)`` before ``trainer.train()``.

    ``probe``: a tokenized batch (``input_ids``, ``attention_mask``) of training inputs, fixed for the run;
    ``None`` logs only ``theta_dist``. ``outputs(model, batch)`` gives f(x) (default: the model's logits).
    ``every``: log every so many optimizer steps (default: the Trainer's ``logging_steps``).
    θ0 is the model as training begins: a Trainer resumed from its checkpoint measures from that checkpoint.
    """

    def __init__(self, probe: dict[str, torch.Tensor] | None = None, *, outputs: OutputsFn = logits_of,
                 pull_lam: float = 0.0, pull_mode: str = "selective", per_element: bool = False,
                 stop_at_step: int | None = None, every: int | None = None):
        if stop_at_step is not None and stop_at_step < 1:
            raise TangentError(f"TangentCallback.stop_at_step must be ≥ 1, got {stop_at_step}")
        if every is not None and every < 1:
            raise TangentError(f"TangentCallback.every must be ≥ 1, got {every}")
        if probe is not None and not {"input_ids", "attention_mask"} <= set(probe):
            raise TangentError("TangentCallback.probe must be a tokenized batch with input_ids and attention_mask")
        self.probe_batch = probe
        self.outputs = outputs
        self.pull_lam, self.pull_mode, self.per_element = float(pull_lam), pull_mode, per_element
        self.stop_at_step = stop_at_step
        self.every = every
        self.trainer = None
        self.pull: SelectivePull | None = None
        self.history: list[dict] = []

    def attach(self, trainer) -> TangentCallback:
        """Register with ``trainer`` (``add_callback``) and log through its ``log``; returns self."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    # -- events ----------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.trainer is None:
            raise TangentError("TangentCallback is not attached: use TangentCallback(...).attach(trainer)")
        self.model = model
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if self.pull_lam > 0:
            if optimizer is None:
                raise TangentError("TangentCallback: the Trainer passed no optimizer to attach the pull to")
            self.pull = SelectivePull(optimizer, self.pull_lam, self.pull_mode, per_element=self.per_element,
                                      named_parameters=model.named_parameters())
            self.theta0 = self.pull.reference
        else:
            self.theta0 = {n: p.detach().clone() for n, p in self.params.items()}
        self.probe = None
        if self.probe_batch is not None:
            device = next(iter(self.params.values())).device
            batch = {k: self.probe_batch[k].to(device) for k in ("input_ids", "attention_mask")}
            net = _Outputs(model, self.outputs)
            view = _View(net, list(self.theta0))
            self.probe = LinearizationProbe(view, model, batch, {f"model.{n}": t for n, t in self.theta0.items()})
        if state.global_step == 0:
            self._log(state)

    def on_step_end(self, args, state, control, **kwargs):
        every = self.every or max(1, int(args.logging_steps))
        stop = self.stop_at_step is not None and state.global_step >= self.stop_at_step
        if state.global_step % every == 0 or state.global_step >= state.max_steps or stop:
            self._log(state)
        if stop:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.pull is not None:
            self.pull.remove()  # the optimizer outlives the run; its later steps are its own

    # -- measurement -----------------------------------------------------------------------------------------
    def measure(self) -> dict[str, float | None]:
        """``theta_dist`` and (with a probe) ``lin_gap``, ``lin_kl``, ``output_shift`` at the current θt."""
        row: dict[str, float | None] = {"theta_dist": theta_dist(self.params, self.theta0)}
        if self.probe is not None:
            row.update(self.probe.measure(self.model))
        if self.pull is not None:
            fractions = list(self.pull.pull_fraction().values())
            row["pull_fraction"] = sum(fractions) / len(fractions)
        return row

    def _log(self, state) -> None:
        row = self.measure()
        self.history.append({"step": state.global_step, **row})
        # Trainer.log's on_log event clears control.should_log; keep the Trainer's own pending loss row.
        pending = self.trainer.control.should_log
        self.trainer.log({k: v for k, v in row.items() if v is not None})
        self.trainer.control.should_log = pending
