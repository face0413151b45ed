"""``tangentft sweep``: pick the configuration to fine-tune from a space, on Optuna (:mod:`tangentft.sweep`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..io import format_number
from .common import console, friendly, progress_by_stage


@friendly
def sweep(
    model: str = typer.Option(..., "--model", "-m", help="Model registry name, folder or hub id."),
    task: str = typer.Option(..., "--task", "-t", help="Task folder, data file or dataset id."),
    space: Path = typer.Option(..., "--space", help="The search space (TOML; see examples/space.toml)."),
    budget: str = typer.Option(..., "--budget", help="Full-run equivalents (6, 2.5) or training time (90s, 30m, 2h), "
                               "summed over all trials of the study."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: study.db, runs/, report.md, report.json."),
    storage: str = typer.Option(None, "--storage", help="SQLAlchemy URL of the Optuna study (default: sqlite:///OUT/study.db); "
                                "start the same command on several processes or machines to share it."),
    study: str = typer.Option("sweep", "--study", help="Study name inside the storage."),
    kernel_cache: Path = typer.Option(None, "--kernel-cache", help="Kernel cache folder, reused across sweeps "
                                      "(default: $TANGENTFT_CACHE/kernels, ~/.cache/tangentft/kernels)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the TPE sampler (default: random, so parallel workers differ)."),
) -> None:
    """Prescreen every configuration of the space from one kernel per parameter set, then train the most promising
    ones as Optuna trials (prescreen's best first, pruned by their forecast) until the budget is spent.

    Killed, the same command continues the study; report.md names the chosen configuration and its train command.
    Browse the study with: optuna-dashboard sqlite:///OUT/study.db"""
    import optuna

    from ..sweep import Budget, load_space, run_sweep

    # the bar and the report say what Optuna's log lines would (a failed trial: its error in report.md)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    plan = Budget.parse(budget)
    spec = load_space(space, model, task)
    with progress_by_stage() as update:

        def progress(stage: str, done: float, total: float, what: str | None) -> None:
            update(stage, done, total, description=f"{stage} {what}" if what else None)

        rep = run_sweep(spec, model, task, out, plan, storage=storage, study_name=study, cache=kernel_cache,
                        seed=seed, progress=progress)
    c = rep["chosen"]
    comp = rep["compute"]
    console.print(rep["prescreen"]["ranking"]["verdict"], highlight=False)
    if c is None:
        console.print(f"no trial finished yet; see {out}/report.md", highlight=False)
        return
    console.print(f"[bold]chosen[/] trial {c['trial']}: {c['config']} — real {rep['metric']} {format_number(c['real'])}, "
                  f"predicted {format_number(c['predicted'])}; trained {100 * comp['fraction_of_grid']:.1f} % of the "
                  f"grid's compute → {out}/report.md", highlight=False)
    console.print(c["command"], highlight=False, soft_wrap=True)
