"""Entry point: ``tangentft <command>``. Each command lives in its own module under ``tangentft.cli``."""

from __future__ import annotations

import os

import typer

# Model loading must never reach for a hub at run time unless the user passes a hub id while online.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from . import (  # noqa: E402
    analyze_cmd,
    data_cmd,
    models_cmd,
    ntk_cmd,
    plan_cmd,
    s2ft_cmd,
    serve_cmd,
    sweep_cmd,
    taskvec_cmd,
    train_cmd,
)

app = typer.Typer(
    help="tangentft — predictable, cheap fine-tuning: eNTK analysis, LoRA/S2FT/linearized training, adapters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("models")(models_cmd.models)
app.add_typer(data_cmd.app, name="data")
app.command("ntk")(ntk_cmd.ntk)
app.command("analyze")(analyze_cmd.analyze)
app.command("plan")(plan_cmd.plan)
app.command("train")(train_cmd.train)
app.add_typer(taskvec_cmd.app, name="taskvec")
app.add_typer(s2ft_cmd.app, name="s2ft")
app.command("serve")(serve_cmd.serve)
app.command("sweep")(sweep_cmd.sweep)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
