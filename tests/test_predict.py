"""Predicted learning curves: function-space dynamics vs the linearized trainer, prediction files, the sketch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_task_model, toy_examples
from tangentft.analysis.dynamics import StepPlan, simulate
from tangentft.errors import TangentError
from tangentft.methods.base import get_method
from tangentft.ntk import empirical_ntk_pair
from tangentft.predict.curve import j_theta0, remaining_plan, step_plan
from tangentft.train.config import TrainConfig
from tangentft.train.loop import TrainData, Trainer


def _linearized_run(tmp_path, loss, **cfg_kw):
    tm = tiny_task_model("tiny-llama")
    train, evals = toy_examples(12), toy_examples(10, seed=5)
    cfg = TrainConfig(model="tiny-llama", method="linearized", method_options={"params": "q,v@0;o@1"},
                      optimizer="sgd", loss=loss, batch_size=4, max_steps=9, eval_every=3, seed=3, **cfg_kw)
    m = get_method(cfg.method)(cfg.method_config())
    Trainer(tm, m, TrainData(train, [], evals, train[:4]), cfg, tmp_path).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kt, kc = empirical_ntk_pair(tm, m.selected, train, evals)
    f0, f0e = tm.predict(train).double().numpy(), tm.predict(evals).double().numpy()
    y, ye = tm.targets(train).double().numpy(), tm.targets(evals).double().numpy()
    jt = (j_theta0(tm, m.selected, train), j_theta0(tm, m.selected, evals))
    curve = simulate(kt.matrix, kc.matrix, f0, f0e, y, ye, step_plan(cfg, len(train)), loss=loss, optimizer="sgd",
                     task_kind="classification", weight_decay=cfg.weight_decay, pull=cfg.reg, lam=cfg.lam,
                     j_theta0=jt)
    return rows, curve


@pytest.mark.parametrize("loss,kw", [("mse", {"lr": 2.0}), ("ce", {"lr": 1.0}),
                                     ("ce", {"lr": 1.0, "reg": "l2", "lam": 0.3, "weight_decay": 0.1})])
def test_function_space_replay_equals_the_linearized_trainer(tmp_path, loss, kw):
    rows, curve = _linearized_run(tmp_path, loss, **kw)
    assert curve.steps == [r["step"] for r in rows] == [0, 3, 6, 9]
    real_eval = np.array([r["eval_loss"] for r in rows])
    assert np.allclose(curve.eval_loss, real_eval, rtol=2e-5, atol=1e-7)
    assert abs(real_eval[-1] - real_eval[0]) > 1e-3 * abs(real_eval[0])  # the run really moved
    assert curve.eval_metric == [r["eval_metric"] for r in rows]
    assert np.allclose(curve.train_loss[1:], [r["train_loss"] for r in rows[1:]], rtol=2e-5, atol=1e-7)


def test_step_plan_follows_the_trainer_schedule_and_order():
    cfg = TrainConfig(lr=0.1, batch_size=3, grad_accum=2, max_steps=5, warmup_ratio=0.2, seed=1)
    plan = step_plan(cfg, 10)
    assert [len(b) for b in plan.batches] == [6, 4, 6, 4, 6]  # micro-batches 3,3 | 3,1 per epoch of 10
    assert sorted(plan.batches[0] + plan.batches[1]) == list(range(10))
    assert plan.lrs[0] < plan.lrs[1] and plan.lrs[-1] < plan.lrs[1]
    assert plan.eval_steps == [0, 1, 2, 3, 4, 5]


def test_simulate_refuses_bad_settings():
    k = np.eye(4)
    plan = StepPlan([0.1], [[0]], [0, 1])
    f = np.zeros((2, 2))
    with pytest.raises(TangentError, match="unknown loss"):
        simulate(k, k, f, f, f, f, plan, loss="hinge", optimizer="sgd", task_kind="classification")
    with pytest.raises(TangentError, match="expected"):
        simulate(np.eye(3), k, f, f, f, f, plan, loss="ce", optimizer="sgd", task_kind="classification")


def _train_with_prediction(run, data_dir, method_args: list[str]):
    """``train … --predict`` on tiny-llama/sst2 (12 examples, 6 steps, eval every 2): (prediction, metrics rows)."""
    from typer.testing import CliRunner

    from tangentft.cli.main import app

    args = ["train", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), *method_args, "--n-train", "12",
            "--n-eval", "10", "--max-steps", "6", "--eval-every", "2", "--batch-size", "4", "--lr", "0.01",
            "--predict", "--out", str(run)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    pred = json.loads((run / "prediction.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert pred["steps"] == [r["step"] for r in rows if "eval_metric" in r] == [0, 2, 4, 6]
    return pred, rows


def test_cli_train_predict_and_analyze_against(tmp_path, data_dir):
    from typer.testing import CliRunner

    from tangentft.cli.main import app

    run = tmp_path / "run"
    pred, rows = _train_with_prediction(run, data_dir, ["--method", "lora", "--params", "lora(r=2):q,v@0",
                                                         "--refresh", "3"])
    assert len(pred["eval_loss"]) == len(pred["eval_metric"]) == 4
    # --refresh 3: one refresh, at the first eval step after step 3, starting from the run's own f_t there
    (r,) = pred["refreshes"]
    assert r["step"] == 4 and r["steps"] == [4, 6] and r["kernel_s"] > 0
    assert r["eval_metric"][0] == rows[2]["eval_metric"]
    assert r["eval_loss"][0] == pytest.approx(rows[2]["eval_loss"], rel=1e-4)
    assert pred["kernel"] == "signgd" and pred["n"] == 12
    lo, hi = pred["metric_interval"]
    assert lo <= pred["best_metric"] <= hi and pred["best_step"] in pred["steps"]
    for r in pred["refreshes"]:
        assert r["metric_interval"][0] <= r["best_metric"] <= r["metric_interval"][1]
        assert r["final_interval"][0] <= r["final_metric"] <= r["final_interval"][1]
    assert pred["eval_metric"][0] == pytest.approx(rows[0]["eval_metric"])  # same eval examples, same f0
    assert pred["eval_loss"][0] == pytest.approx(rows[0]["eval_loss"], rel=1e-4)
    assert (run / "figures" / "prediction.png").is_file()
    assert "Predicted vs real" in (run / "summary.md").read_text()
    assert "| 4 |" in (run / "summary.md").read_text().split("Kernel refreshes")[1]
    res = CliRunner().invoke(app, ["analyze", "--against", str(run), "--n", "8", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "a" / "prediction.json").read_text())
    assert again["steps"] == pred["steps"] and again["n"] == 8
    assert (tmp_path / "a" / "against.md").is_file()
    res = CliRunner().invoke(app, ["analyze", "--against", str(tmp_path), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "not a finished train run" in res.output
    res = CliRunner().invoke(app, ["train", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--refresh",
                                   "2", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "add --predict" in res.output and not (tmp_path / "c").exists()


# -- the RPCholesky Nyström sketch ----------------------------------------------------------------------------
def test_rp_cholesky_recovers_a_low_rank_kernel_and_feeds_the_dynamics():
    from tangentft.ntk.sketch import rp_cholesky

    rng = np.random.default_rng(0)
    n, K, r = 60, 2, 10
    feats = rng.normal(size=(n * K, r))
    k = feats @ feats.T
    sk = rp_cholesky(np.diag(k), lambda u: k[:, (u[:, None] * K + np.arange(K)).ravel()], 8, outputs=K, block=3)
    assert len(set(sk.pivots)) == len(sk.pivots) <= 8
    assert np.allclose(sk.low_rank().dense(), k, atol=1e-6 * np.abs(k).max())  # 8 units · 2 outputs ≥ rank 10
    f0, y = rng.normal(size=(n, K)), np.eye(K)[rng.integers(0, K, n)]
    plan = StepPlan([0.01] * 5, [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9], [1, 5]], [0, 5])
    kw = dict(loss="ce", optimizer="sgd", task_kind="classification")
    dense = simulate(k, k, f0, f0, y, y, plan, **kw)
    low = simulate(sk.low_rank(), sk.low_rank(), f0, f0, y, y, plan, **kw)
    assert np.allclose(dense.eval_loss, low.eval_loss, rtol=1e-6)
    with pytest.raises(TangentError, match="rank"):
        rp_cholesky(np.diag(k), lambda u: k, 0, outputs=K)


@pytest.mark.slow
def test_ntk_sketch_against_the_exact_kernel_at_n_1024():
    from tangentft.analysis.krr import krr_predict
    from tangentft.models.selection import resolve
    from tangentft.ntk import empirical_ntk
    from tangentft.ntk.sketch import ntk_sketch

    tm = tiny_task_model("tiny-llama")
    sel = resolve(tm, "q,v@0")
    x, xe = toy_examples(1024, seed=1), toy_examples(16, seed=9)
    with pytest.warns(UserWarning):  # the tiny model's kernel has rank < n
        k = empirical_ntk(tm, sel, x).matrix
    sk, cols = ntk_sketch(tm, sel, x, 32, block=16)
    approx = sk.low_rank().dense()
    ev, ea = np.linalg.eigvalsh(k)[::-1][:5], np.linalg.eigvalsh(approx)[::-1][:5]
    assert np.all(np.abs(ea - ev) / ev < 0.05)
    cross_exact = empirical_ntk(tm, sel, xe, x).matrix
    cross = sk.cross(cols(xe)).dense()
    y = tm.targets(x).double().numpy()
    f0, f0e = tm.predict(x).double().numpy(), tm.predict(xe).double().numpy()
    sigma = 0.1 * np.trace(k) / len(k)
    p_exact = krr_predict(k, y, f0, sigma, cross_exact, f0e).eval_pred
    p_sketch = krr_predict(approx, y, f0, sigma, cross, f0e).eval_pred
    assert np.linalg.norm(p_sketch - p_exact) / np.linalg.norm(p_exact - f0e) < 0.1


# -- analyze: uncertainty, LoRA candidates, the run to launch ------------------------------------------------
def test_ranking_says_no_clear_winner_for_equal_candidates_and_names_a_clear_one():
    from tangentft.analysis.uncertainty import ranking_uncertainty, sigma_spread

    rng = np.random.default_rng(0)
    n = 20
    a = rng.normal(size=(n, 5))
    k = a @ a.T
    b = rng.normal(size=(n, 3))
    same = {"L1.o": b @ b.T, "L2.o": b @ b.T * (1 + 1e-9)}
    tie = ranking_uncertainty(k, same, n, 1e-4, draws=30)
    assert not tie["clear_winner"] and tie["verdict"].startswith("no clear winner")
    clear = ranking_uncertainty(k, {"big": 10 * (b @ b.T), "small": 0.01 * (b @ b.T)}, n, 1e-4, draws=30)
    assert clear["clear_winner"] and clear["leader"] == "big"
    sp = sigma_spread(k, np.eye(2)[rng.integers(0, 2, n)], np.zeros((n, 2)), draws=5)
    assert sp["draws"] == 5 and sp["min"] <= sp["median"] <= sp["max"]


def test_lora_candidates_get_the_lora_kernel_and_the_report_ends_with_the_run(tmp_path, data_dir):
    from typer.testing import CliRunner

    from tangentft.cli.main import app
    from tangentft.models.spec import Spec

    def trained_like(params: str, candidates: str) -> str:
        return str(Spec.parse(params).trained_like(Spec.parse(candidates)))

    assert trained_like("lora(r=4):q,v@0", "o@1;head") == "lora(r=4):o@1;head"
    assert trained_like("q,v@0", "o@1") == "o@1"
    out = tmp_path / "an"
    res = CliRunner().invoke(app, ["analyze", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--params",
                                   "lora(r=4):q,v@0", "--candidates", "o@1", "--n", "8", "--n-eval", "8",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["num_params_candidates"] == {"L1.o": 2 * 4 * 32}  # the LoRA factors of o@1, not its 32×32 weight
    # The candidate's kernel is the LoRA (B-only at init) kernel of o@1 on the same examples.
    from tangentft.data import load_task, run_examples
    from tangentft.models.selection import ParamSelection, select
    from tangentft.ntk import Kernel, empirical_ntk

    task = load_task(str(data_dir / "sst2"))
    x, _ = run_examples(task, 8, 8, 0)
    tm = tiny_task_model("tiny-llama", task.spec)
    sel = select(tm, "lora(r=4):q,v@0;lora(r=4):o@1")
    cand = ParamSelection([b for b in sel if ".o_proj." in b.name], "o")
    k_saved = Kernel.load(out / "kernel")
    assert np.allclose(k_saved.blocks["L1.o"], empirical_ntk(tm, cand, x).matrix, rtol=1e-6, atol=1e-10)
    assert rep["candidate_uncertainty"]["candidates"][0]["name"] == "L1.o"
    md = (out / "report.md").read_text()
    # the report ends with its decision: the run to launch, or no run predicted to gain with the best one checked
    tail = md[md.index("## The run to launch" if rep["recommendation"]["predicted_gain"] else "## No run to launch"):]
    assert "tangentft train --model tiny-llama" in tail and "--predict" in tail and "| step |" in tail
    # the recommended candidate is trained as it was analysed: a LoRA adapter of o in layer 1
    assert rep["recommendation"]["candidate_groups"] == ["L1.o"]
    assert "--params 'lora(r=4):q,v@0;lora(r=4):o@1'" in rep["recommendation"]["train_command"]
    assert rep["run_prediction"]["steps"][-1] == rep["run_prediction"]["best_step"] or rep["run_prediction"]["best_step"] == 0
    assert "linear probe" in md and "majority" in md


def test_probe_kernel_is_the_head_kernel_with_dropout_on_in_the_model():
    from tangentft.analysis.baselines import probe_kernels
    from tangentft.models.selection import select

    tm = tiny_task_model("tiny-bert")
    for m in tm.modules():  # a model left in train mode with dropout must not change the frozen features
        if isinstance(m, __import__("torch").nn.Dropout):
            m.p = 0.5
    tm.train()
    x, xe = toy_examples(6), toy_examples(4, seed=2)
    for sg in (False, True):
        kt, kc = empirical_ntk_pair(tm, select(tm, "head"), x, xe, signgd=sg)
        pt, pc = probe_kernels(tm, x, xe, signgd=sg)
        assert np.allclose(kt.matrix, pt, rtol=1e-5, atol=1e-6 * np.abs(pt).max())
        assert np.allclose(kc.matrix, pc, rtol=1e-5, atol=1e-6 * np.abs(pc).max())
    assert tm.training


# -- S2FT runs: the kernel of their weight slices ------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert", "tiny-gpt2"])
def test_s2ft_kernel_selection_is_the_adapters_trainable_slice(name):
    """The S2FT kernel selection, on the un-permuted model, has exactly the S2FT run's trainable count, and its
    eNTK/SignGD kernel equals the per-example autograd oracle over the injected (co-permuted) adapter's own
    trainable parameters — the dense deltas and an encoder's head."""
    from s2ft_helpers import ALL_TYPES
    from tangentft.models.selection import ParamBlock, ParamSelection
    from tangentft.ntk import empirical_ntk
    from tangentft.ntk.reference import reference_ntk

    cls = get_method("s2ft")

    def method(seed):
        types = ",".join(f"{r}:{v}" for r, v in ALL_TYPES[name].items())  # rows and columns of every role
        return cls(cls.config_class.from_options("s2ft", {"types": types, "seed": seed}))

    tm = tiny_task_model(name)
    sel = method(1).kernel_selection(tm)
    assert getattr(tm, "peft_model", None) is None  # computed on the unchanged base, nothing injected
    adapted = tiny_task_model(name)
    method(1).prepare(adapted)
    trained = {n: p for n, p in adapted.named_parameters() if p.requires_grad}
    assert any(".s2ft_delta." in n for n in trained)
    assert sel.num_params(tm) == sum(p.numel() for p in trained.values())
    own = ParamSelection([ParamBlock(n, n.rsplit(".", 1)[0], n.rsplit(".", 1)[1], "linear", "all") for n in trained])
    other = method(2).kernel_selection(tiny_task_model(name))  # other units: the check can tell selections apart
    x, x2 = toy_examples(5), toy_examples(3, seed=3)
    for signgd in (False, True):
        ref = reference_ntk(adapted, own, x, x2, signgd=signgd).matrix
        k = empirical_ntk(tm, sel, x, x2, signgd=signgd).matrix
        assert np.abs(k - ref).max() < 1e-5 * np.abs(ref).max()
        assert np.abs(empirical_ntk(tm, other, x, x2, signgd=signgd).matrix - ref).max() > 1e-3 * np.abs(ref).max()


def test_s2ft_weight_decay_has_no_theta0_term_on_its_slices():
    from tangentft.models.selection import select

    cls = get_method("s2ft")
    tm = tiny_task_model("tiny-bert")
    m = cls(cls.config_class.from_options("s2ft", {"types": "o:0.5,down:0.25"}))
    sel = m.kernel_selection(tm)
    decayed = m.decay_selection(sel)  # the deltas start at 0: only the whole head decays toward 0
    assert {b.name for b in decayed} == {b.name for b in select(tm, "head")}
    no_head = cls(cls.config_class.from_options("s2ft", {"types": "o:0.5"}))
    assert no_head.decay_selection(no_head.kernel_selection(tiny_task_model("tiny-llama"))) is None


def test_cli_train_s2ft_predict(tmp_path, data_dir):
    run = tmp_path / "run"
    pred, rows = _train_with_prediction(run, data_dir, ["--method", "s2ft", "--method-opt", "types=o:0.5,down:0.25",
                                                        "--method-opt", "strategy=A", "--refresh", "3"])
    assert pred["kernel"] == "signgd" and pred["n"] == 12
    # --refresh 3: the deltas at step 4 merged into the un-adapted model give the run's own f_t there
    (r,) = pred["refreshes"]
    assert r["step"] == 4 and r["steps"] == [4, 6] and r["kernel_s"] > 0
    assert r["eval_metric"][0] == rows[2]["eval_metric"]
    assert r["eval_loss"][0] == pytest.approx(rows[2]["eval_loss"], rel=1e-4)
    assert r["eval_loss"][0] != pytest.approx(rows[0]["eval_loss"], rel=1e-4)  # the run had moved by then
    assert "| 4 |" in (run / "summary.md").read_text().split("Kernel refreshes")[1]
    assert pred["selection"]["spec"].startswith("s2ft: o: 1/2 units")
    # tiny-llama: 2 layers; o: 1 KV group of 2 (2 query heads × 8 = 16 columns × 32 rows), down: 12 of 48 columns
    named = {b["name"]: b for b in pred["selection"]["blocks"]}
    assert sum(len(b["in_idx"]) * 32 for b in named.values()) == 2 * (16 * 32 + 12 * 32)
    # the kernel's columns are the ones the run trained (strategy A ranks on the run's own training examples)
    from safetensors.torch import load_file

    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    trained = {k[k.index("layers."):].removesuffix(".s2ft_index"): sorted(v.tolist())
               for k, v in saved.items() if k.endswith(".s2ft_index")}
    assert len(trained) == 4 and trained == {n[n.index("layers."):].removesuffix(".weight"): list(b["in_idx"])
                                             for n, b in named.items()}
    assert pred["eval_metric"][0] == pytest.approx(rows[0]["eval_metric"])  # same eval examples, same f0
    assert pred["eval_loss"][0] == pytest.approx(rows[0]["eval_loss"], rel=1e-4)
    assert "Predicted vs real" in (run / "summary.md").read_text()


def test_lora_under_adamw_is_flagged_before_the_run_when_its_a_factors_travel_far(data_dir):
    import torch

    from tangentft.models.selection import select
    from tangentft.predict.curve import NONLINEAR_RATIO, lora_a_rms, predict_run

    base = dict(model="tiny-llama", task=str(data_dir / "sst2"), method="lora",
                method_options={"params": "lora(r=4):q,v@0"}, n_train=8, n_eval=8, batch_size=4, seed=0)
    far = predict_run(TrainConfig(**base, optimizer="adamw", lr=1e-2, max_steps=20), draws=2)
    near = predict_run(TrainConfig(**base, optimizer="adamw", lr=1e-5, max_steps=4), draws=2)
    sgd = predict_run(TrainConfig(**base, optimizer="sgd", lr=1e-2, max_steps=20), draws=2)
    flagged = [any("B·ΔA" in w for w in p["warnings"]) for p in (far, near, sgd)]
    assert far["lora_a_travel"] > NONLINEAR_RATIO > near["lora_a_travel"] > 0
    assert sgd["lora_a_travel"] is None  # SGD moves A in proportion to its gradient, which starts at 0
    assert flagged == [True, False, False]

    tm = tiny_task_model("tiny-llama")
    select(tm, "lora(r=4):q,v@0")
    a = [p for n, p in tm.named_parameters() if "lora_A" in n]
    assert lora_a_rms(tm) == pytest.approx(min(float(p.detach().double().pow(2).mean().sqrt()) for p in a))
    with torch.no_grad():  # a started adapter (B ≠ 0) has ∂f/∂A ≠ 0 at θ0: the kernel already holds A's term
        next(p for n, p in tm.named_parameters() if "lora_B" in n).fill_(0.1)
    assert lora_a_rms(tm) is None
    assert lora_a_rms(tiny_task_model("tiny-llama")) is None


def test_the_prediction_sees_the_task_the_run_trains(tmp_path, data_dir):
    """Issue #26 §0: with a custom template and label words, the prediction's step 0 is the run's step-0 evaluation
    exactly (metric, loss and the outputs at θ0). The prediction once loaded the task without them."""
    import torch

    from tangentft.predict.curve import predict_with, run_kernels
    from tangentft.train.loop import split_data

    cfg = TrainConfig(model="tiny-llama", task=str(data_dir / "sst2"), template="Text: {sentence}\nMood:",
                      label_words=[" bad", " good"], method="lora", method_options={"params": "lora(r=2):q,v@0"},
                      n_train=8, n_eval=12, max_steps=2, eval_every=2, batch_size=4, lr=0.01)
    rk = run_kernels(cfg, n=8)
    pred = predict_with(rk, cfg, draws=2)

    task = cfg.load_task()  # as train.run.run_training builds the run
    assert task.spec.template == cfg.template and task.spec.label_words == cfg.label_words
    data = split_data(task, cfg)
    trainer = Trainer(tiny_task_model("tiny-llama", task.spec), get_method(cfg.method)(cfg.method_config()), data,
                      cfg, tmp_path)
    trainer.setup()  # the run's model at θ0
    loss, _, metric = trainer.evaluate(data.eval)  # the evaluation the loop writes as step 0
    assert pred["steps"][0] == 0 and pred["eval_metric"][0] == metric
    assert pred["eval_loss"][0] == pytest.approx(loss, rel=1e-6)
    with torch.no_grad():
        enc = trainer.task_model.encode(data.eval)
        run_outputs = trainer.model(enc["input_ids"], enc["attention_mask"]).double().cpu().numpy()
    assert np.allclose(rk.f0_eval, run_outputs, rtol=0, atol=1e-6)


def test_the_bootstrap_interval_is_centered_on_the_prediction():
    """Resamples with replacement learn less than the full sample, so their percentile interval can lie below the
    prediction it qualifies (a realistic MiniLM row: best 0.760, plain interval [0.703, 0.755]); the interval moved
    by the bootstrap's bias holds it, keeps its width and stays within the metric's range."""
    import numpy as np

    from tangentft.predict.curve import centered_interval

    draws = np.linspace(0.70, 0.755, 101)  # median 0.7275, all below the full-sample prediction 0.76
    plain = np.nanpercentile(draws, [2.5, 97.5])
    assert not plain[0] <= 0.76 <= plain[1]
    lo, hi = centered_interval(draws, 0.76, "accuracy")
    assert lo <= 0.76 <= hi and hi - lo == pytest.approx(plain[1] - plain[0])
    assert centered_interval(np.linspace(0.9, 1.0, 11), 0.99, "accuracy")[1] == 1.0  # accuracy ends at 1


def test_sample_size_extrapolation_closes_most_of_the_gap_to_the_whole_training_set():
    """A replay on a sample of n of the N training examples learns from fewer examples than the run, so it ends
    low; extrapolated from sub-samples (n/4, n/2, n) to N, it lands near the replay on all N (here a linear
    classifier's kernel, SGD: the replay is exact, so the whole-set replay is the truth for this model)."""
    from dataclasses import replace

    from tangentft.predict.curve import RunKernels, predict_with, sample_size_extrapolation

    rng = np.random.default_rng(0)
    d, big, m = 30, 512, 2000
    w = rng.normal(size=d)

    def data(k):
        x = rng.normal(size=(k, d))
        return x, np.eye(2)[(x @ w + 0.5 * rng.normal(size=k) > 0).astype(int)]

    def kernel(a, b):
        return np.kron(a @ b.T / d, np.eye(2))  # full layout, K = 2 outputs

    (x, y), (xe, ye) = data(big), data(m)
    cfg = TrainConfig(model="tiny-llama", task="x", method="head", optimizer="sgd", lr=0.5, max_steps=200,
                      batch_size=16, seed=0)
    kw = dict(loss="ce", optimizer="sgd", task_kind="classification")
    whole = simulate(kernel(x, x), kernel(xe, x), np.zeros((big, 2)), np.zeros((m, 2)), y, ye, step_plan(cfg, big),
                     **kw)
    truth = whole.best_metric
    n = 128
    xs, ys = x[:n], y[:n]
    args = (kernel(xs, xs), kernel(xe, xs), np.zeros((n, 2)), np.zeros((m, 2)), ys, ye)
    sample = simulate(*args, step_plan(cfg, n), **kw)
    rk = RunKernels(k_train=args[0], k_cross=args[1], kp_train=None, kp_cross=None, f0=args[2], f0_eval=args[3],
                    y=ys, y_eval=ye, j_theta0=None, kind="classification", signgd=False, n_train=big, selection={},
                    seeded_head=False, timings={})
    ext = sample_size_extrapolation(rk, cfg, "ce", sample, 0)
    assert ext["n"] == [32, 64, 128] and ext["best_metric"][-1] == sample.best_metric
    assert ext["best_metric"][0] < ext["best_metric"][1] < ext["best_metric"][2]  # more data, better replay
    best = max(ext["eval_metric"])
    assert sample.best_metric < best <= 1.0
    assert abs(best - truth) < 0.3 * abs(sample.best_metric - truth)
    # The whole curve, step by step: never below the sample's, nearer the whole set's replay than the sample's.
    at, own, real = (np.asarray(v) for v in (ext["eval_metric"], sample.eval_metric, whole.eval_metric))
    assert at.shape == own.shape and (at >= own).all()
    assert np.abs(at - real)[1:].mean() < 0.5 * np.abs(own - real)[1:].mean()
    assert sample_size_extrapolation(replace(rk, n_train=n), cfg, "ce", sample, 0) is None
    # The prediction is the extrapolated curve; the sample's own replay stays beside it, inside the interval.
    pred = predict_with(replace(rk, kp_train=rk.k_train, kp_cross=rk.k_cross), cfg, draws=4)
    assert pred["eval_metric"] == ext["eval_metric"] and pred["best_metric"] == best
    assert pred["eval_loss"] == sample.eval_loss  # the loss is not extrapolated
    assert pred["sample_size"]["eval_metric_by_n"][-1] == sample.eval_metric
    assert pred["metric_interval"][0] <= sample.best_metric < best <= pred["metric_interval"][1]
    # From a step inside the run (a refresh): only the steps left are replayed.
    later = simulate(*args, remaining_plan(step_plan(cfg, n), 100), **kw)
    part = sample_size_extrapolation(rk, cfg, "ce", later, 0, start=100)
    assert len(part["eval_metric"]) == len(later.eval_metric) < len(sample.eval_metric)


def test_the_interval_reaches_the_extrapolation_to_n_train():
    """The bootstrap interval is the sample's spread; the run learns from n_train examples, so the interval keeps
    the sample's lower bound and reaches as far above the extrapolated value as it reached above the sample's."""
    from tangentft.predict.curve import interval_to_n_train

    assert interval_to_n_train([0.70, 0.76], 0.74, None, "accuracy") == [0.70, 0.76]
    assert interval_to_n_train([0.70, 0.76], 0.74, 0.80, "accuracy") == pytest.approx([0.70, 0.82])
    assert interval_to_n_train([0.70, 0.76], 0.74, 0.74, "accuracy") == pytest.approx([0.70, 0.76])
    assert interval_to_n_train([0.90, 0.99], 0.95, 0.99, "accuracy")[1] == 1.0  # accuracy ends at 1


def test_run_kernels_subset_is_the_kernel_of_that_sample(data_dir):
    """The harness predicts from a sample and from every training example with one kernel pass: the sample's
    block of the whole set's kernels is what ``run_kernels`` computes on that sample."""
    from tangentft.data.sampling import sample_indices
    from tangentft.predict.curve import predict_with, run_kernels

    cfg = TrainConfig(model="tiny-llama", task=str(data_dir / "sst2"), method="lora", optimizer="adamw",
                      method_options={"params": "lora(r=2):q,v@0"}, n_train=16, n_eval=8, max_steps=4,
                      batch_size=4, lr=1e-3, seed=0)
    whole = run_kernels(cfg, n=16)
    part = whole.subset(sample_indices(whole.n_train, 8, cfg.seed))
    direct = run_kernels(cfg, n=8)
    for name in ("k_train", "k_cross", "kp_train", "kp_cross", "f0", "f0_eval", "y", "y_eval"):
        assert np.allclose(getattr(part, name), getattr(direct, name), rtol=1e-5, atol=1e-8), name
    assert predict_with(part, cfg, draws=2)["best_metric"] == predict_with(direct, cfg, draws=2)["best_metric"]


def test_the_report_shows_the_kernel_samples_own_replay_beside_the_extrapolated_prediction():
    from tangentft.predict.against import compare, comparison_markdown

    pred = {"steps": [0, 10], "eval_metric": [0.5, 0.7], "eval_loss": [0.7, 0.6], "best_metric": 0.7, "best_step": 10,
            "metric_interval": [0.65, 0.75], "metric_name": "accuracy", "kernel": "signgd", "n": 256,
            "baselines": {"zero_shot": 0.5, "majority": 0.5, "linear_probe": 0.6}}
    rows = [{"step": 0, "eval_metric": 0.5, "eval_loss": 0.7}, {"step": 10, "eval_metric": 0.78, "eval_loss": 0.5}]
    plain = comparison_markdown(pred, compare(pred, rows))
    assert "extrapolated" not in plain
    pred["sample_size"] = {"n": [64, 128, 256], "best_metric": [0.6, 0.66, 0.68], "n_train": 1024}
    text = comparison_markdown(pred, compare(pred, rows))
    assert "extrapolated to the run's 1024 (replays on 64 and 128)" in text
    assert "| the kernel sample's own replay (n = 256) | 0.68 | – |" in text
    assert compare(pred, rows)["predicted_best_sample"] == 0.68
