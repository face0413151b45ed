"""``tangentft train``: fine-tune a model on a task with any registered method.

Every option that sets a :class:`~tangentft.train.config.TrainConfig` field takes its flag, default and
help text from that field (:func:`_field`), so the description of an option exists once, in the config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from ..io import format_number
from ..methods.base import METHODS, MethodConfig
from ..methods.lora import LoraMethodConfig
from ..train.config import TrainConfig
from .common import (
    console,
    err_console,
    extrapolation_note,
    friendly,
    nproc_option,
    progress_by_stage,
    relaunch,
    task_columns,
    task_options,
)


def _field(name: str, *aliases: str, default=dataclasses.MISSING, extra: str = "") -> typer.models.OptionInfo:
    """The option for config field ``name``: ``--name-with-dashes``, the field's default and help text."""
    value = TrainConfig.default(name) if default is dataclasses.MISSING else default
    return typer.Option(value, TrainConfig.flag(name), *aliases, help=TrainConfig.help(name) + extra)


def _method_field(name: str, config: type[MethodConfig] = MethodConfig) -> typer.models.OptionInfo:
    """The option for method-config field ``name`` (collected into ``method_options``); help from the field."""
    return typer.Option(None, TrainConfig.flag(name), help=config.help()[name])


def _method_opts(pairs: list[str] | None) -> dict[str, str]:
    from ..errors import TangentError

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise TangentError(f"--method-opt '{pair}': write key=value")
        k, v = (s.strip() for s in pair.split("=", 1))
        out[k.replace("-", "_")] = v
    return out


def _explicit(ctx: typer.Context) -> set[str]:
    """The options the user gave (not left at their defaults)."""
    given = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # by name: typer carries its own copy of click
    return {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", None) in given}


def _options(params, lora_r, lora_alpha, method_opt) -> dict:
    opts = {"params": params, "lora_r": lora_r, "lora_alpha": lora_alpha, **_method_opts(method_opt)}
    return {k: v for k, v in opts.items() if v is not None}


def _config(values: dict, typed: set[str], resume: Path | None, out: Path | None,
            overwrite: bool) -> tuple[TrainConfig, Path]:
    """The run's config and folder from the config ``values`` the options give: a new run's config, or
    (``--resume``) the stored one with the ``typed`` options applied (:func:`tangentft.train.run.resume_config`
    checks they may change)."""
    from ..errors import TangentError
    from ..train.run import resume_config

    if resume is not None:
        if overwrite:
            raise TangentError("--resume continues a run and --overwrite replaces it: give one of them")
        if out is not None and out.resolve() != resume.resolve():
            raise TangentError(f"--resume {resume} writes into that folder; drop --out {out}")
        return resume_config(resume, {k: v for k, v in values.items() if k in typed}), resume
    if not values["model"] or not values["task"] or out is None:
        raise TangentError("train needs --model, --task and --out (or --resume DIR)")
    return TrainConfig(**values), out


@friendly
def train(
    ctx: typer.Context,
    model: str = _field("model", "-m", default=None),
    task: str = _field("task", "-t", default=None),
    template: str = _field("template"),
    label_words: str = _field("label_words"),
    method: str = _field("method", extra=f" One of: {', '.join(sorted(METHODS))}."),
    params: str = _method_field("params"),
    lora_r: int = _method_field("lora_r", LoraMethodConfig),
    lora_alpha: float = _method_field("lora_alpha", LoraMethodConfig),
    method_opt: list[str] = typer.Option(None, "--method-opt", help="Any method config field, key=value (repeatable)."),
    reg: str = _field("reg"),
    lam: float = _field("lam"),
    reg_per_element: bool = _field("reg_per_element"),
    weight_decay: float = _field("weight_decay"),
    optimizer: str = _field("optimizer"),
    loss: str = _field("loss"),
    epochs: int = _field("epochs"),
    lr: float = _field("lr"),
    warmup_ratio: float = _field("warmup_ratio"),
    batch_size: int = _field("batch_size"),
    grad_accum: int = _field("grad_accum"),
    max_steps: int = _field("max_steps"),
    n_train: int = _field("n_train"),
    n_eval: int = _field("n_eval"),
    eval_every: int = _field("eval_every"),
    early_stop: int = _field("early_stop"),
    stop_at: str = _field("stop_at"),
    val_fraction: float = _field("val_fraction"),
    probe_size: int = _field("probe_size"),
    eval_batch_size: int = _field("eval_batch_size"),
    seed: int = _field("seed"),
    num_labels: int = _field("num_labels"),
    score_range: str = _field("score_range", extra=" Give it as low,high."),
    text_column: str = typer.Option(None, "--text-column", help="Name of the task's text column (default: sentence)."),
    label_column: str = typer.Option(None, "--label-column", help="Name of the task's label column (default: label)."),
    device: str = _field("device"),
    dtype: str = _field("dtype"),
    grad_checkpointing: bool = _field("grad_checkpointing"),
    nproc: int = nproc_option(),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this output folder; --max-steps, "
                                "--epochs, --device or --grad-checkpointing may change, any other option must match "
                                "the run's config."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out, as a whole."),
    predict: bool = typer.Option(False, "--predict", help="Predict the run's curve from the kernel at θ0 first "
                                 "(prediction.json), then compare with the real run (figures, summary.md)."),
    predict_n: int = typer.Option(None, "--predict-n", help="Kernel examples for --predict (default: up to 256)."),
    refresh: int = typer.Option(None, "--refresh", help="With --predict: every this many steps (at the next eval "
                                "step), re-take the kernel at the trained weights on the same kernel sample and "
                                "re-forecast the rest of the run (prediction.json 'refreshes')."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (refused if it holds a run, unless --overwrite)."),
) -> None:
    """Fine-tune and record metrics.jsonl, checkpoints, the trained weights/adapter, figures and summary.md.

    Runs through accelerate: ``--nproc N``, ``torchrun`` or ``accelerate launch`` (with the user's DDP,
    DeepSpeed or FSDP config) start several ranks; ``--batch-size`` is per rank; rank 0 writes."""
    if relaunch(ctx, nproc):
        return
    from .. import distributed
    from ..errors import TangentError

    if predict_n is not None and not predict:
        raise TangentError("--predict-n sets the kernel sample of --predict; add --predict (or drop --predict-n)")
    if refresh is not None and not predict:
        raise TangentError("--refresh re-forecasts a predicted run; add --predict (or drop --refresh)")
    scores = task_options(num_labels, score_range)["score_range"]
    typed = _explicit(ctx)
    values = dict(
        model=model, task=task, template=template.replace("\\n", "\n") if template else None,
        label_words=label_words.split(",") if label_words else None, method=method,
        method_options=_options(params, lora_r, lora_alpha, method_opt), reg=reg, lam=lam,
        reg_per_element=reg_per_element, weight_decay=weight_decay, optimizer=optimizer, loss=loss, epochs=epochs,
        lr=lr, warmup_ratio=warmup_ratio, batch_size=batch_size, grad_accum=grad_accum, max_steps=max_steps,
        n_train=n_train, n_eval=n_eval, eval_every=eval_every, early_stop=early_stop, stop_at=stop_at,
        val_fraction=val_fraction, probe_size=probe_size, eval_batch_size=eval_batch_size, seed=seed,
        num_labels=num_labels, score_range=list(scores) if scores else None, device=device, dtype=dtype,
        grad_checkpointing=grad_checkpointing, columns=task_columns(text_column, label_column))
    typed |= {"columns"} if typed & {"text_column", "label_column"} else set()
    typed |= {"method_options"} if typed & {"params", "lora_r", "lora_alpha", "method_opt"} else set()
    cfg, out_dir = _config(values, typed, resume, out, overwrite)
    main = distributed.is_main()
    try:
        summary = _launch(cfg, out_dir, main, predict, resume=resume is not None, overwrite=overwrite,
                          n=predict_n, refresh=refresh)
    finally:
        distributed.shutdown()
    if main:
        _print_summary(cfg, out_dir, summary)


def _launch(cfg: TrainConfig, out_dir: Path, main: bool, predict: bool, *, resume: bool, overwrite: bool,
            n: int | None, refresh: int | None) -> dict:
    """The run (:func:`tangentft.predict.launch.launch_run`) under a progress bar that starts with its first step
    (a run refused while loading prints its one error line only); the run's summary."""
    from ..predict.launch import launch_run

    loading = err_console.status(f"{cfg.method}: loading model and data")
    with progress_by_stage(disable=not main) as update:

        def on_step(step: int, total: int, info: dict) -> None:
            loading.stop()
            extra = " ".join(f"{k} {v:.4g}" for k, v in info.items())
            update(cfg.method, step, total, description=f"{cfg.method} {extra}")

        # AdamW's curve comes from the SignGD kernel ⟨∇f(x), sign ∇f(x')⟩: the sign needs every example's gradient
        # materialized (no Gram shortcut) and both triangles, so it costs several times the eNTK analyze computes
        # for the same parameters.
        kernel = "SignGD kernel (AdamW; materializes every example's gradient)" if cfg.optimizer == "adamw" else "eNTK (SGD)"

        def on_kernel(stage: str, done: int, total: int) -> None:
            loading.stop()
            update("predict", done, total, description=f"predicting the curve: {stage} passes, {kernel}")

        if main:
            loading.start()
        try:
            return launch_run(cfg, out_dir, predict, resume=resume, overwrite=overwrite, callback=on_step,
                              n=n, refresh=refresh, progress=on_kernel)
        finally:
            loading.stop()


def _print_summary(cfg: TrainConfig, out_dir: Path, summary: dict) -> None:
    """The run's last evaluation, distance from θ0 and linearization gap, and its prediction against the real run."""
    last = summary.get("last") or {}
    name = last.get("eval_metric_name", "metric")
    evaluated = (f"eval_loss {last['eval_loss']:.4f}  {name} {last['eval_metric']:.4f}"
                 if last.get("eval_loss") is not None else "no eval examples")
    console.print(
        f"[bold]{cfg.method}[/] {summary['steps']} steps  {evaluated}  ‖θ−θ0‖ {last.get('theta_dist', 0):.4g}  "
        f"lin_gap {last.get('lin_gap', 0):.4g}  → {out_dir}",
        highlight=False,
    )
    cmp = summary.get("prediction")
    if cmp and cmp.get("steps"):
        console.print(f"predicted best {format_number(cmp['predicted_best'])} (step {cmp['predicted_best_step']})"
                      f"{extrapolation_note(cmp)}, real {format_number(cmp['real_best'])} (step "
                      f"{cmp['real_best_step']}); see {out_dir}/summary.md")
