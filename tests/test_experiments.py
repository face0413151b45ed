"""Every reproduction script's quick mode, on a tiny seeded model for one training step, so none of them rots.

Each run writes its claim.json (a verdict from the script's own rule) and figure into a temporary results
root; a second run must come entirely from the per-configuration cache. Marked slow: a script is several
model builds, eNTK passes and evaluations (seconds each on a quiet machine, minutes on a busy one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# (script, tiny model standing in for its real one): encoders for the MiniLM claims, LLaMA for the decoder ones.
SCRIPTS = [
    ("claim1_kappa", "tiny-bert"),
    ("claim4_cost", "tiny-bert"),
    ("claim5_beta", "tiny-bert"),
    ("lambda_sweep", "tiny-bert"),
    ("claim3_layer_choice", "tiny-bert"),
    ("claim6_lora_rank", "tiny-bert"),
    ("claim7a_s2ft_generalization", "tiny-llama"),
    ("claim8_taskvec_alignment", "tiny-llama"),
    ("claim7b_s2ft_efficiency", "tiny-llama"),
]


@pytest.fixture()
def experiments(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(REPO)
    import importlib

    return lambda name: importlib.import_module(f"experiments.{name}")


def _run(module, tmp_path: Path, model: str) -> dict:
    return module.main(["--quick", "--model", model, "--steps", "1", "--out", str(tmp_path / "results"),
                        "--runs", str(tmp_path / "runs")])


@pytest.mark.slow
@pytest.mark.parametrize(("name", "model"), SCRIPTS)
def test_quick_mode_on_tiny_model(experiments, data_dir, tmp_path, name, model):
    module = experiments(name)
    claim = _run(module, tmp_path, model)
    out = tmp_path / "results" / name / "quick"
    written = json.loads((out / "claim.json").read_text())
    assert written["verdict"] in ("holds", "partly", "does not", "not testable")
    assert written["mode"] == "quick" and written["model"] == model
    assert (out / f"{name}.png").stat().st_size > 1000
    assert written["our_figure"] == claim["our_figure"]
    configs = sorted((tmp_path / "results").rglob("configs/*.json"))
    assert configs, "no per-configuration cache written"
    stamps = {p: p.stat().st_mtime_ns for p in configs}
    again = _run(module, tmp_path, model)  # resumable: everything comes from the cache
    assert again["data"] == claim["data"]
    assert {p: p.stat().st_mtime_ns for p in configs} == stamps


def test_cache_key_changes_with_config_and_cached_skips_compute(experiments, tmp_path):
    common = experiments("common")
    assert common.key_of("a", {"x": 1}) != common.key_of("a", {"x": 2})
    assert common.key_of("a b/c", {"x": 1}).startswith("a_b_c-")
    ctx = common.Context("t", True, "tiny-bert", None, 0, tmp_path, tmp_path / "runs", tmp_path)
    calls = []
    first = common.cached(ctx, "one", {"x": 1}, lambda: calls.append(1) or {"value": 3})
    second = common.cached(ctx, "one", {"x": 1}, lambda: calls.append(1) or {"value": 4})
    assert calls == [1] and first["value"] == second["value"] == 3


def test_spearman_and_curve_area(experiments):
    common = experiments("common")
    assert common.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert common.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert common.spearman([1, 2], [1, 2]) is None  # too few pairs
    assert common.spearman([1, 2, None, 4], [1, 1, 1, 1]) is None  # one side constant
    rec = {"metrics": [{"step": 0, "eval_loss": 1.0}, {"step": 2, "eval_loss": 0.0}, {"step": 4}]}
    assert common.curve_area(rec) == pytest.approx(0.5)
    assert common.best_eval_step(rec) == 2


def test_table_from_claims_replaces_only_the_marked_block(experiments, tmp_path):
    table = experiments("table")
    claim = {"claim": "1", "script": "experiments/claim1_kappa.py", "paper": "linearization", "where": "Table 2",
             "paper_claim": "κ predicts | accuracy", "paper_figure": "negative", "our_figure": "ρ = -0.4",
             "verdict": "partly", "why": "only within tasks", "mode": "quick", "model": "minilm", "figure": "x.png"}
    (tmp_path / "claim1_kappa" / "quick").mkdir(parents=True)
    (tmp_path / "claim1_kappa" / "quick" / "claim.json").write_text(json.dumps(claim))
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n## Reproductions\n\n" + table.START + "\nstale-table-row\n" + table.END + "\n\n## Next\n")
    assert table.main(["--results", str(tmp_path), "--readme", str(readme), "--check"]) == 1
    assert table.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale-table-row" not in text and text.endswith("## Next\n") and text.startswith("# title")
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert "quick mode only" in row and "**partly**" in row and "κ predicts \\| accuracy" in row
    assert "| 3 | — | not run yet (`python -m experiments.claim3_layer_choice`)" in text
    assert table.main(["--results", str(tmp_path), "--readme", str(readme), "--check"]) == 0


def test_bad_arguments_exit_with_one_line(experiments, tmp_path, capsys):
    module = experiments("claim6_lora_rank")
    with pytest.raises(SystemExit) as exc:
        module.main(["--quick", "--steps", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        module.main(["--quick", "--data", str(tmp_path)])
    assert "no sst2/ task folder" in capsys.readouterr().err



@pytest.mark.slow
@pytest.mark.parametrize(("model", "tiny"), [("minilm", "tiny-bert"), ("smollm2-135m", "tiny-llama")])
def test_predict_vs_real_s2ft_row_runs_end_to_end(experiments, data_dir, tmp_path, monkeypatch, model, tiny):
    """Each model's S2FT configuration of the calibration harness, on the tiny stand-in of its architecture."""
    from argparse import Namespace

    harness = experiments("predict_vs_real")
    conf = next(c for c in harness.CONFIGS[model] if c[1] == "s2ft")
    args = Namespace(data=data_dir, runs=tmp_path / "runs", regime="cheap", n_train=8, n_eval=8, steps=4,
                     batch_size=4, eval_every=2, seed=0)
    res = harness.run_one(tiny, "sst2", conf, harness.sizes_for(tiny, args), args)
    assert res["method"] == "s2ft" and res["method_options"] == harness.method_options(conf)
    assert "types" in res["method_options"] and res["prediction"]["kernel"] == "signgd"
    assert res["prediction"]["steps"] == [s for s, m in zip(res["real"]["steps"], res["real"]["eval_metric"],
                                                            strict=True) if m is not None] == [0, 2, 4]
    row = harness.summarize([res])["rows"][0]
    assert row["config"] == conf[0] and row["interval"][0] <= row["interval"][1]
    assert set(row["forecasts"]) == {"10%", "25%"} and row["forecasts"]["10%"]["step"] == 2


def test_predict_vs_real_realistic_grid(experiments):
    """The realistic grid (issue #26 §1): ≥ 16 MiniLM configurations per task with a LoRA lr sweep a decade apart,
    SmolLM2 on two tasks with ≥ 8 on sst2; the cheapest informative rows (one per method per MiniLM task) first."""
    from argparse import Namespace
    from collections import Counter

    harness = experiments("predict_vs_real")
    plan = harness.realistic_plan(["minilm", "smollm2-135m"], list(harness.TASKS))
    per = Counter((m, t) for m, t, _ in plan)
    assert all(per["minilm", t] >= 16 for t in harness.TASKS)
    assert per["smollm2-135m", "sst2"] >= 8 and per["smollm2-135m", "cr"] >= 4
    assert len({harness.key(m, t, c[0]) for m, t, c in plan}) == len(plan)
    first = plan[: 4 * len(harness.TASKS)]
    assert {m for m, _, _ in first} == {"minilm"} and {c[1] for _, _, c in first} == {"head", "lora", "full", "s2ft"}
    lora_lrs = sorted(c[3] for m, t, c in plan if m == "minilm" and t == "cr" and c[0].startswith("lora q,v@all"))
    assert lora_lrs == [1e-4, 1e-3, 1e-2]
    sizes = harness.REALISTIC_SIZES
    assert sizes["minilm"]["n_train"] >= 1024 and sizes["minilm"]["steps"] >= 300 and sizes["minilm"]["n_eval"] >= 512
    assert sizes["smollm2-135m"]["n_train"] >= 512 and sizes["smollm2-135m"]["steps"] >= 150
    for s in sizes.values():  # the forecasts' refreshes land on eval steps
        assert all(round(f * s["steps"]) % s["eval_every"] == 0 for f in harness.FORECAST_FRACTIONS)
    from tangentft.train.config import TrainConfig

    args = Namespace(regime="realistic")
    assert harness.refresh_kwargs(TrainConfig(method="lora", max_steps=300), args) == {"refresh": [30, 75]}
    assert harness.refresh_kwargs(TrainConfig(method="s2ft", max_steps=300), args) == {"refresh": [30, 75]}
    assert harness.refresh_kwargs(TrainConfig(method="s2ft", max_steps=300), Namespace(regime="cheap")) == {}


def test_predict_vs_real_shards_split_the_remaining_rows(experiments):
    """``--shard I/N``: N processes started together take disjoint shares that cover the rows, each in plan order;
    a malformed share is refused in one line."""
    harness = experiments("predict_vs_real")
    plan = harness.realistic_plan(["minilm", "smollm2-135m"], list(harness.TASKS))
    shares = [harness.shard(plan, f"{i}/7") for i in range(7)]
    assert sorted(map(repr, sum(shares, []))) == sorted(map(repr, plan))
    assert all(share == [r for r in plan if r in share] for share in shares)
    for bad in ("7/7", "x/2", "1"):
        with pytest.raises(SystemExit, match="--shard"):
            harness.shard(plan, bad)
