"""The CLI: real commands, one-line errors with exit code 2."""

from __future__ import annotations

from typer.testing import CliRunner

from tangentft.cli.main import app

runner = CliRunner()


def test_models_lists_registry():
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    assert "smollm2-135m" in res.output and "minilm" in res.output and "tiny-llama" in res.output


def test_data_inspect_real_task(data_dir):
    res = runner.invoke(app, ["data", "inspect", str(data_dir / "sst2"), "--model", "tiny-llama", "--json"])
    assert res.exit_code == 0, res.output
    assert '"size": 6920' in res.output and '"p50"' in res.output


def test_data_inspect_bad_path_is_one_line_exit_2(tmp_path):
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert "missing" in res.output and "Traceback" not in res.output


def test_data_inspect_bad_label_names_file_and_line(tmp_path):
    (tmp_path / "train.tsv").write_text("label\tsentence\n1\tok\nx\tbad row\n")
    res = runner.invoke(app, ["data", "inspect", str(tmp_path)])
    assert res.exit_code == 2
    assert "train.tsv:3" in res.output and "'x'" in res.output
