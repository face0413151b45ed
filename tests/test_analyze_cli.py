"""`tangentft analyze`: bad input is one line with exit code 2; a tiny end-to-end run writes a full report."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tangentft.cli.main import app

runner = CliRunner()


def _one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, res.output


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--candidates", " "], "--candidates is empty"),
        (["--sigma", "0"], "--sigma must be > 0"),
        (["--sigma", "-1"], "--sigma must be > 0"),
        (["--n", "1"], "--n must be ≥ 2"),
    ],
)
def test_bad_input_one_line(tmp_path, data_dir, extra, needle):
    args = ["analyze", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--params", "q@0", "--out", str(tmp_path)]
    for i in range(0, len(extra), 2):
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += extra[i : i + 2]
    _one_line_error(runner.invoke(app, args), needle)


def test_one_class_task_one_line(tmp_path):
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.tsv").write_text("label\tsentence\n" + "".join(f"0\tsentence {i}\n" for i in range(8)))
    res = runner.invoke(app, ["analyze", "--model", "tiny-llama", "--task", str(task), "--params", "q@0",
                              "--n", "4", "--out", str(tmp_path / "o")])
    _one_line_error(res, "at least two classes")


def test_missing_options_and_compare_without_reports(tmp_path):
    _one_line_error(runner.invoke(app, ["analyze", "--model", "tiny-llama"]), "analyze needs --task")
    _one_line_error(runner.invoke(app, ["analyze", "--compare", str(tmp_path)]), "no analysis report")
