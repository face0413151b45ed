"""`tangentft analyze`: bad input is one line with exit code 2; a tiny end-to-end run writes a full report."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tangentft.cli.main import app
from tangentft.io import format_number

runner = CliRunner()


def _one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, res.output


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--candidates", " "], "candidates is empty"),
        (["--sigma", "0"], "sigma must be > 0"),
        (["--sigma", "-1"], "sigma must be > 0"),
        (["--n", "1"], "n must be ≥ 2"),
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


def test_end_to_end_tiny_model(tmp_path, data_dir):
    pytest.importorskip("tangentft.ntk")
    out = tmp_path / "run"
    res = runner.invoke(app, ["analyze", "--model", "tiny-llama", "--task", str(data_dir / "sst2"),
                              "--params", "lora(r=4):q,v@0", "--candidates", "o@all", "--n", "8", "--n-eval", "6",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert f"candidate ranking: {rep['candidate_uncertainty']['verdict']}" in " ".join(res.output.split())
    for key in ("model", "task", "params", "n", "K", "num_params", "eigenvalues", "lambda_max", "lambda_min",
                "condition_number", "effective_rank", "decay_beta", "decay_beta_stderr", "risk_bounds", "krr",
                "candidates", "stopping", "lora_min_rank", "lipschitz", "lambda_circ", "timings"):
        assert key in rep, key
    assert rep["n"] == 8 and rep["K"] == 2 and len(rep["eigenvalues"]) == 16
    assert {g for c in rep["candidates"] for g in c["groups"]} == {"L0.o", "L1.o"}
    assert rep["risk_bounds"]["brackets_krr"]
    # LoRA r=4 on q (32×32) and v (16×32) of layer 0: A is 4×32 for each, B is 32×4 and 16×4
    assert rep["num_params"] == 2 * 4 * 32 + 32 * 4 + 16 * 4
    for f in ("report.md", "spectrum.png", "candidates.png", "kernel.png", "bounds.png"):
        assert (out / f).is_file(), f
    res = runner.invoke(app, ["analyze", "--compare", str(out), str(out)], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and res.output.count("tiny-llama") == 2, res.output
    lo, hi = rep["run_prediction"]["metric_interval"]
    assert "no clear winner: the best's interval" in res.output and "★" not in res.output  # the same run twice
    assert f"[{format_number(lo)}, {format_number(hi)}]" in res.output
    # a second analysis whose predicted run is clearly better (its interval above the first's) leads, marked
    better = tmp_path / "better"
    shutil.copytree(out, better)
    data = json.loads((better / "report.json").read_text())
    data["run_prediction"].update(best_metric=hi + 0.2, metric_interval=[hi + 0.1, hi + 0.3])
    (better / "report.json").write_text(json.dumps(data))
    res = runner.invoke(app, ["analyze", "--compare", str(out), str(better)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    first = next(i for i, ln in enumerate(lines) if "tiny-llama" in ln)
    assert "★" in lines[first] and "better" in lines[first] and "★" not in "".join(lines[first + 1:])
    assert "is the best: its interval lies above the runner-up's" in res.output
    assert "no clear winner" not in res.output


def test_compare_ranking_verdicts():
    from tangentft.analysis.report import compare_ranking

    def row(run, metric, interval, name="accuracy"):
        return {"run": run, "metric": name, "run_metric": metric, "run_interval": interval}

    r = compare_ranking([row("a", 0.7, [0.6, 0.8]), row("b", 0.75, [0.65, 0.85]), row("old", None, None)])
    assert r["order"] == [1, 0, 2] and r["leader"] == "b" and r["runner_up"] == "a" and r["clear_winner"] is False
    assert r["verdict"].startswith("no clear winner: the best's interval (b 0.75 [0.65, 0.85]) overlaps")
    r = compare_ranking([row("a", 0.7, [0.6, 0.8]), row("b", 0.95, [0.9, 0.99])])
    assert r["clear_winner"] is True and r["leader"] == "b" and r["order"] == [1, 0]
    r = compare_ranking([row("a", 0.7, [0.6, 0.8]), row("old", None, None)])
    assert r["clear_winner"] is None and r["verdict"].startswith("nothing to rank: 1 of 2")
    r = compare_ranking([row("a", 0.7, [0.6, 0.8]), row("s", 0.5, [0.4, 0.6], "pearson")])
    assert r["clear_winner"] is None and "different metrics (accuracy, pearson)" in r["verdict"]


def test_without_params_uses_the_default_and_decides_with_a_train_command_that_runs(tmp_path, data_dir):
    import shlex

    out = tmp_path / "run"
    res = runner.invoke(app, ["analyze", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--n", "8",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["params"] == "lora(r=8):q,v@0,1" and rep["params_default"]  # tiny-llama has 2 layers
    md = (out / "report.md").read_text()
    assert "no params given: the default" in md
    # the seeded tiny model is predicted to gain nothing: the report and the CLI say so and what to try, and the
    # best run checked ends report.md as a reference (report.json's train_command), not printed as a recommendation
    command = rep["recommendation"]["train_command"]
    assert rep["recommendation"]["predicted_gain"] is False
    assert md.rstrip().endswith(f"```sh\n{command}\n```") and md.count("tangentft train") == 2
    assert md.rindex("## No run to launch") > md.index("### The theory's run") > md.index("## Conventions")
    assert "no candidate is predicted to beat" in md and "a smaller learning rate" in rep["recommendation"]["decision"]
    assert "decision: no candidate is predicted to beat" in " ".join(res.output.split())
    assert "train: " not in res.output and "--predict" in command and "--optimizer" not in command  # AdamW
    theory = rep["recommendation"]["theory_command"]
    assert "--optimizer sgd" in theory and "--loss mse" in theory and theory in md
    args = shlex.split(command)
    assert args[:2] == ["tangentft", "train"]
    args[args.index("--out") + 1] = str(tmp_path / "train")
    res = runner.invoke(app, args[1:])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["steps"] == rep["run_prediction"]["max_steps"] == rep["run_prediction"]["steps"][-1]
    assert json.loads((tmp_path / "train" / "prediction.json").read_text())["steps"] == rep["run_prediction"]["steps"]


def test_the_decision_launches_only_a_run_predicted_to_beat_not_training():
    from tangentft.analysis.result import AnalysisReport
    from tangentft.predict.recommend import decide

    rep = AnalysisReport.__new__(AnalysisReport)
    rep.task_kind = "classification"
    pred = {"metric_name": "accuracy", "best_metric": 0.8, "best_step": 6, "lr": 1e-4, "n": 16, "n_for_2_points": 400,
            "horizon": {"best_step": 6}, "baselines": {"zero_shot": 0.6, "majority": 0.5, "linear_probe": 0.9}}
    gain, text = decide(pred, rep)
    assert gain and text.startswith("launch it") and "zero-shot 0.6" in text
    gain, text = decide(pred | {"best_metric": 0.6, "best_step": 0, "horizon": {"best_step": 0}}, rep)
    assert not gain and "no candidate is predicted to beat zero-shot (0.6)" in text
    assert "smaller learning rate" in text and "--num-examples 64" in text and "linear probe" in text


def test_the_recommended_run_keeps_the_declared_classes(tmp_path):
    """--num-labels changes the task model (3 outputs where the files show 2 classes): the recommended run and the
    theory's run must train that model, so their commands carry it."""
    import shlex

    task = tmp_path / "three"
    task.mkdir()
    rows = "label\tsentence\n" + "".join(f"{i % 2}\tsentence number {i} is {'good' if i % 2 else 'bad'}\n" for i in range(24))
    (task / "train.tsv").write_text(rows)
    (task / "test.tsv").write_text(rows)
    out = tmp_path / "a"
    res = runner.invoke(app, ["analyze", "--model", "tiny-bert", "--task", str(task), "--n", "8",
                              "--params", "q@0;head", "--num-labels", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["task_options"] == {"num_labels": 3} and rep["K"] == 3
    for key in ("train_command", "theory_command"):
        args = shlex.split(rep["recommendation"][key])
        assert args[args.index("--num-labels") + 1] == "3", key
