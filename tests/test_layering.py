"""No import runs back up: each package of tangentft imports only packages on lower floors.

The floors are the README's "Layers" table; :data:`FLOOR` is that table as the check reads it, and
:func:`test_readme_states_the_floors_the_check_enforces` keeps the two equal. Lazy imports inside functions count
too: a layer that needs a higher one has its work in the wrong place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tangentft"
FLOOR = {
    "__main__": 13,
    "cli": 12,
    "sweep": 11,
    "taskvec": 10, "integrations": 10,
    "predict": 9,
    "train": 8, "serve": 8,
    "analysis": 7, "adapters": 7,
    "ntk": 6,
    "methods": 5,
    "models": 4,
    "data": 3,
    "schemas": 2, "io": 2, "device": 2, "distributed": 2,
    "errors": 1,
}
FACE = {"__init__", "__version__"}  # the package's own face (version string, registrations)


def _imports(source: str, here: list[str]) -> set[str]:
    """The top-level tangentft packages a module in package ``here`` (inside tangentft) imports, relative or
    absolute, at any depth in its ``source``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            found |= {target[0]} if target else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tangentft."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tangentft.")}
    return found


def _package(path: Path) -> str:
    return path.relative_to(SRC).with_suffix("").parts[0]


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_back_up(path):
    own = _package(path)
    if own in FACE:
        return
    assert own in FLOOR, f"{own}: a new package needs its floor in FLOOR"
    imported = _imports(path.read_text(), list(path.relative_to(SRC).parts[:-1]))
    upward = sorted(p for p in imported - {own} - FACE if FLOOR.get(p, 0) >= FLOOR[own])
    assert not upward, f"{path.relative_to(SRC)} (floor {FLOOR[own]}) imports {upward} from the same floor or above"


def test_the_check_sees_relative_lazy_and_absolute_imports():
    lazy = "def f():\n    from ..train.config import TrainConfig\n"
    assert _imports(lazy, ["analysis"]) == {"train"}
    assert _imports("from . import report\nfrom .. import methods\n", ["analysis"]) == {"analysis", "methods"}
    assert _imports("import tangentft.cli.main\nfrom tangentft.ntk import api\n", ["methods", "s2ft"]) == {"cli", "ntk"}
    assert _imports("from ...models import selection\n", ["methods", "s2ft"]) == {"models"}


def _readme_floors() -> dict[str, int]:
    """The floor of each package as the README's "Layers" table states it (``NN  pkg/ pkg.py …  notes``)."""
    import re

    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layers"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    floors: dict[str, int] = {}
    for line in block.splitlines()[1:]:
        number, *tokens = line.split()
        for token in tokens:
            m = re.fullmatch(r"(\w+)(/|\.py)", token)
            if m is None:
                break
            floors[m.group(1)] = int(number)
    return floors


def test_readme_states_the_floors_the_check_enforces():
    assert _readme_floors() == FLOOR
    init = (SRC / "__init__.py").read_text()
    assert "README" in init and "errors" not in init  # the package points at the table instead of a copy of it
