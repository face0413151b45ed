"""``tangentft analyze``: the eNTK analysis before training, or a comparison table of earlier analyses."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..io import format_number
from ..models.spec import DEFAULT_LORA_RANK, Spec
from .common import (
    NUM_LABELS_HELP,
    SCORE_RANGE_HELP,
    console,
    device_option,
    dtype_option,
    extrapolation_note,
    friendly,
    nproc_option,
    progress_by_stage,
    relaunch,
    task_options,
)


@friendly
def analyze(
    ctx: typer.Context,
    dirs: list[Path] = typer.Argument(None, help="With --compare: analysis folders to tabulate."),
    model: str = typer.Option(None, "--model", "-m", help="Model name (tangentft models), folder or hub id."),
    task: str = typer.Option(None, "--task", "-t", help="Task folder or file, e.g. ../shared/data/sst2."),
    params: str = typer.Option(None, "--params", "-p", help="Trained parameters, e.g. 'lora(r=8):q,v@0,15,29' "
                               f"(default: LoRA r={DEFAULT_LORA_RANK} on q,v of the first, middle and last layers, plus an encoder's head)."),
    candidates: str = typer.Option(None, "--candidates", "-c", help="Candidate groups to rank, e.g. 'o@::5'."),
    n: int = typer.Option(32, "--num-examples", "--n", help="Training examples in the kernel, balanced per class when possible (--n is the old spelling)."),
    n_eval: int = typer.Option(None, "--n-eval", help="Eval examples for the kernel-ridge prediction (default: n)."),
    seed: int = typer.Option(0, "--seed", help="Sampling and initialization seed."),
    sigma: float = typer.Option(1e-4, "--sigma", help="σ for κ(K+σI) and candidate ranking (linearization paper §4)."),
    step_size: float = typer.Option(None, "--step-size", help="Step size for the stopping rule (default 1/λ̂max)."),
    noise: float = typer.Option(None, "--noise", help="Label noise level (default: from the kernel-ridge residual)."),
    template: str = typer.Option(None, "--template", help="Override the prompt template ({sentence} or {sentence1}/{sentence2})."),
    label_words: str = typer.Option(None, "--label-words", help="Override the label words, comma-separated."),
    num_labels: int = typer.Option(None, "--num-labels", help=NUM_LABELS_HELP),
    score_range: str = typer.Option(None, "--score-range", help=SCORE_RANGE_HELP),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder for report.json, report.md and figures."),
    compare: bool = typer.Option(False, "--compare", help="Tabulate κ, β and predicted metrics of analysis folders, best "
                                 "predicted run first, with bootstrap intervals and whether there is a clear winner."),
    against: Path = typer.Option(None, "--against", help="A finished train run: predict its curve from the kernel at "
                                 "θ0 with its own settings and compare (prediction.json, against.md, figures/)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    nproc: int = nproc_option(),
) -> None:
    """Analyse fine-tuning before training: spectrum, bounds, predicted metric, candidate layers, steps, rank."""
    from ..errors import TangentError

    if compare:
        from ..analysis.report import compare_ranking, compare_rows

        rows = compare_rows(dirs or [])
        ranking = compare_ranking(rows)
        table = Table(title="analyses, best predicted run first")
        for col in ("", "run", "model", "task", "params", "n", "κ(K+σI)", "β", "metric", "ridge limit", "zero-shot",
                    "train loss", "T̂", "predicted run", "95% interval", "best step"):
            table.add_column(col, justify="left" if col in ("", "run", "model", "task", "params", "metric") else "right")
        for i in ranking["order"]:
            r = rows[i]
            mark = "★" if ranking["clear_winner"] and r["run"] == ranking["leader"] else ""
            interval = "[{}, {}]".format(*map(format_number, r["run_interval"])) if r["run_interval"] else "–"
            table.add_row(mark, Path(r["run"]).name, r["model"], r["task"], r["params"], format_number(r["n"]),
                          format_number(r["kappa"]), format_number(r["beta"]), r["metric"],
                          format_number(r["predicted"]), format_number(r["zero_shot"]), format_number(r["train_loss"]),
                          format_number(r["T_hat"]), format_number(r["run_metric"]), interval,
                          format_number(r["run_best_step"]))
        console.print(table)
        console.print(ranking["verdict"], highlight=False, soft_wrap=True)
        return
    if dirs:
        raise TangentError(f"unexpected argument {dirs[0]}: folders are only taken with --compare")
    if against is not None:
        _against(against, out, n)
        return
    missing = [f for f, v in (("--model", model), ("--task", task), ("--out", out)) if v is None]
    if missing:
        raise TangentError(f"analyze needs {', '.join(missing)}")
    if relaunch(ctx, nproc):
        return
    from .. import distributed
    from ..device import resolve_device
    from ..io import check_out_dir
    from ..predict.recommend import analyze_and_recommend

    check_out_dir(out)
    params, candidates = _specs(params, candidates)
    distributed.init(resolve_device(device))
    main = distributed.is_main()
    try:
        with progress_by_stage(disable=not main) as report_progress:
            rep = analyze_and_recommend(model, task, params, candidates, n=n, out=out if main else None,
                                        progress=report_progress, n_eval=n_eval, seed=seed, sigma=sigma,
                                        step_size=step_size, noise=noise,
                                        template=template.replace("\\n", "\n") if template else None,
                                        label_words=label_words.split(",") if label_words else None,
                                        task_options=task_options(num_labels, score_range), device=device,
                                        dtype=dtype)
    finally:
        distributed.shutdown()
    if not main:
        return
    kr, rec, rp = rep.krr, rep.recommendation, rep.run_prediction
    console.print(f"[bold]{model}[/] on [cyan]{rep.task_name}[/] ({rep.params}): κ(K+σI) = {format_number(rep.condition_number['value'])}, "
                  f"β = {format_number(rep.decay_beta)}, predicted {kr['eval_metric_name']} {format_number(kr['eval_metric'])} "
                  f"(zero-shot {format_number(kr.get('zero_shot_metric'))})")
    console.print(f"recommend: LoRA r = {rec.lora_rank}, λ = {format_number(rec.regularization)}, ~{rec.steps} steps"
                  + (f", add {', '.join(rec.candidate_groups)}" if rec.candidate_groups else ""))
    if rep.candidate_uncertainty:
        console.print(f"candidate ranking: {rep.candidate_uncertainty['verdict']}", highlight=False, soft_wrap=True)
    console.print(f"predicted run: best {rp['metric_name']} {format_number(rp['best_metric'])} "
                  f"[{format_number(rp['metric_interval'][0])}, {format_number(rp['metric_interval'][1])}] at step "
                  f"{rp['best_step']}", highlight=False)
    console.print(f"decision: {rec.decision}", highlight=False, soft_wrap=True)
    if rec.predicted_gain:
        console.print(f"train: {rec.train_command}", highlight=False, soft_wrap=True)
    console.print(f"report: {out / 'report.md'}")


def _specs(params: str | None, candidates: str | None) -> tuple[Spec | None, Spec | None]:
    """--params and --candidates parsed here, where their text enters; they travel down as values."""
    from ..errors import TangentError

    if candidates is not None and not candidates.strip():
        raise TangentError("--candidates is empty: give a selection spec such as 'o@::5'")
    return tuple(None if text is None else Spec.parse(text) for text in (params, candidates))


def _against(run_dir: Path, out: Path | None, n: int) -> None:
    from ..errors import TangentError
    from ..predict.against import predict_against

    if out is None:
        raise TangentError("analyze --against needs --out")
    with progress_by_stage() as update:
        pred, cmp = predict_against(run_dir, out, n=n, progress=update)
    console.print(f"predicted best {pred['metric_name']} {format_number(cmp.get('predicted_best'))} (step "
                  f"{cmp.get('predicted_best_step')}){extrapolation_note(cmp)}, real {format_number(cmp.get('real_best'))} (step "
                  f"{cmp.get('real_best_step')}); report: {out / 'against.md'}")
