"""``tangentft models``: the registry as a table."""

from __future__ import annotations

import typer
from rich.table import Table

from ..models.registry import REGISTRY
from .common import console, friendly


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 999_500 else f"{n / 1e3:.1f}K"


@friendly
def models(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List registry models with architecture, parameter count and source."""
    rows = []
    for entry in REGISTRY.values():
        try:
            count = entry.count_params()
            shown = _fmt_count(count)
        except Exception as exc:  # a missing model package must not hide the rest of the table
            count, shown = None, f"unavailable ({exc})"
        rows.append({"name": entry.name, "arch": entry.arch, "kind": entry.kind, "params": count,
                     "params_h": shown, "source": entry.source})
    if json_out:
        import json

        console.print_json(json.dumps([{k: v for k, v in r.items() if k != "params_h"} for r in rows]))
        return
    table = Table(title="tangentft models (plus any local folder or hub id)")
    for col in ("name", "arch", "kind", "params", "source"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in rows:
        table.add_row(r["name"], r["arch"], r["kind"], r["params_h"], r["source"])
    console.print(table)
