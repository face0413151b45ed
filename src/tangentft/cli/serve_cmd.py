"""``tangentft serve``: an OpenAI-compatible server for a base model and its LoRA / S2FT adapters."""

from __future__ import annotations

import typer

from .common import console, friendly


@friendly
def serve(
    model: str = typer.Option(..., "--model", "-m", help="Base model (registry name, folder or hub id)."),
    adapter: list[str] = typer.Option([], "--adapter", "-a", help="NAME=PATH of a LoRA or S2FT adapter (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", "-p"),
    api_key: str = typer.Option(None, "--api-key", envvar="TANGENTFT_API_KEY",
                                help="Require 'Authorization: Bearer KEY' on every route but /health."),
    max_batch: int = typer.Option(16, "--max-batch", help="Rows decoded together at most."),
    max_queue: int = typer.Option(64, "--max-queue", help="Waiting requests at most; more get HTTP 429."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="How long an idle server collects requests."),
    max_adapters: int = typer.Option(None, "--max-adapters", help="Adapters kept in memory at most; the others are "
                                     "read from disk when asked for, evicting the least recently used (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tiny test models."),
) -> None:
    """Serve the base and adapters over HTTP (/v1/completions, /v1/chat/completions, /v1/classify, ...)."""
    from ..serve.server import build_app, run

    with console.status(f"loading {model} and {len(adapter)} adapters"):
        app, engine = build_app(model, adapter, seed=seed, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                                batch_wait_ms=batch_wait_ms, max_resident=max_adapters)
    for a in engine.adapters.values():
        where = "" if a.name in engine.resident else ", on disk until asked for"
        console.print(f"adapter [bold]{a.name}[/] ({a.kind}, {a.parameters:,} parameters{where}) from {a.path}")
    console.print(f"serving {engine.name} on http://{host}:{port}/v1 (models: {', '.join(engine.model_names())})")
    run(app, host=host, port=port)
