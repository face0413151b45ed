"""tangentft taskvec compare/add/negate on tiny LoRA runs trained on two shared tasks."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tangentft.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for task in ("sst2", "cola"):
        cfg = TrainConfig(model="tiny-llama", task=str(data_dir / task), method="lora",
                          method_options={"params": "lora(r=4):q,v@all"}, n_train=24, max_steps=4, n_eval=16,
                          eval_every=4, lr=1e-2, batch_size=8, probe_size=4)
        run_training(cfg, root / task)
        out[task] = root / task
    return out


def test_compare_writes_matrices_and_heatmap(runs, tmp_path):
    res = runner.invoke(app, ["taskvec", "compare", str(runs["sst2"]), str(runs["cola"]), "--out", str(tmp_path),
                              "--n-kernel", "4"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "result.json").read_text())
    cos, align = result["cosine"], result["kernel_alignment"]
    assert cos[0][0] == 1.0 and cos[0][1] == cos[1][0] and abs(cos[0][1]) < 1
    assert align[0][0] == 1.0 and align[0][1] == align[1][0] and 0 < align[0][1] < 1
    assert (tmp_path / "similarity.png").stat().st_size > 1000


def test_add_with_given_alphas_writes_a_merged_peft_adapter(runs, tmp_path):
    res = runner.invoke(app, ["taskvec", "add", str(runs["sst2"]), str(runs["cola"]), "--alpha", "0.5,1",
                              "--n-eval", "8", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["alphas"] == [0.5, 1.0] and result["artifact"] == "merged_adapter"
    assert {r["own_run"] for r in result["tasks"]} == {"sst2", "cola"}
    for row in result["tasks"]:
        assert row["normalized"] == pytest.approx(row["merged"] / row["own_finetune"])
    assert (tmp_path / "merged_adapter" / "adapter_model.safetensors").is_file()
    assert "| sst2 | accuracy |" in (tmp_path / "result.md").read_text()


def test_add_searches_alphas_on_validation(runs, tmp_path):
    res = runner.invoke(app, ["taskvec", "add", str(runs["sst2"]), str(runs["cola"]), "--n-eval", "8",
                              "--n-val", "8", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["alpha_search"]) >= 5 and all(a in (0.2, 0.4, 0.6, 0.8, 1.0) for a in result["alphas"])
    best = max(t["objective"] for t in result["alpha_search"])
    assert any(t["alphas"] == result["alphas"] and t["objective"] == best for t in result["alpha_search"])


def test_negation_increases_the_task_loss(runs):
    from tangentft.data import load_task
    from tangentft.taskvec.runs import applied, load_runs, task_model_for
    from tangentft.train.config import load_config
    from tangentft.train.loop import split_data

    (run,), base = load_runs([runs["sst2"]])
    tm = task_model_for(run, base)
    ex = split_data(load_task(run.task), load_config(run.path)).train  # the examples the run fitted
    labels = torch.tensor([e.label for e in ex])

    def loss(alpha):
        with applied(base.model, run.vector, alpha):
            return float(torch.nn.functional.cross_entropy(tm.predict(ex), labels))

    assert loss(1.0) < loss(0.0) < loss(-1.0)


def test_runs_on_different_bases_are_refused(runs, tmp_path, data_dir):
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((runs["sst2"] / "config.json").read_text())
    cfg["train"]["seed"] = 7  # tiny models are drawn from the seed: another base
    (other / "config.json").write_text(json.dumps(cfg))
    res = runner.invoke(app, ["taskvec", "compare", str(runs["sst2"]), str(other), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "different base models" in res.output
    res = runner.invoke(app, ["taskvec", "negate", str(tmp_path / "nothing"), "--out", str(tmp_path / "n")])
    assert res.exit_code == 2 and "not a tangentft train output folder" in res.output


def test_add_of_s2ft_runs_writes_a_fused_sparse_adapter(tmp_path, data_dir):
    from tangentft.adapters.sparse import load_adapter
    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    for task in ("sst2", "cola"):
        run_training(TrainConfig(model="tiny-llama", task=str(data_dir / task), method="s2ft",
                                 method_options={"types": "o:0.5,down:0.25", "strategy": "R"}, n_train=16,
                                 max_steps=2, n_eval=8, lr=1e-2, probe_size=4), tmp_path / task)
    res = runner.invoke(app, ["taskvec", "add", str(tmp_path / "sst2"), str(tmp_path / "cola"), "--alpha", "1",
                              "--n-eval", "8", "--out", str(tmp_path / "add")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "add" / "result.json").read_text())["artifact"] == "merged_sparse_adapter"
    fused = load_adapter(tmp_path / "add" / "merged_sparse_adapter")
    assert fused.numel > 0
