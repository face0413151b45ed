"""The trainer: pull toward θ0, weight decay, schedule, early stopping, resume, checkpoints and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_task_model, toy_examples
from tangentft.errors import TangentError
from tangentft.methods.base import get_method
from tangentft.train.checkpoint import load_checkpoint
from tangentft.train.config import TrainConfig
from tangentft.train.loop import TrainData, Trainer
from tangentft.train.regularization import PullToInit
from tangentft.train.schedule import warmup_linear_factor


# -- the pull toward θ0 --------------------------------------------------------------------------------------
def _toy_problem(seed=0):
    """Four tensors moved away from θ0 and a loss whose gradient agrees with θ − θ0 on some, not others."""
    gen = torch.Generator().manual_seed(seed)
    theta0 = {f"w{i}": torch.randn(3, 4, generator=gen) for i in range(4)}
    params = {n: torch.nn.Parameter(t + torch.randn(3, 4, generator=gen)) for n, t in theta0.items()}
    signs = {"w0": 1.0, "w1": -1.0, "w2": 1.0, "w3": -1.0}
    # ∇R = s·(θ − θ0) + noise: R pulls back toward θ0 where s > 0 (∇R·(θ−θ0) > 0), away where s < 0.
    noise = {n: 0.1 * torch.randn(3, 4, generator=gen) for n in params}
    return theta0, params, signs, noise


def _step(mode, lam, per_element=False, lr=0.1):
    theta0, params, signs, noise = _toy_problem()
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = PullToInit(torch.optim.SGD(list(params.values()), lr=lr), params, theta0, mode=mode, lam=lam,
                     per_element=per_element)
    for n, p in params.items():
        p.grad = signs[n] * (p.detach() - theta0[n]) + noise[n]
    grads = {n: p.grad.clone() for n, p in params.items()}
    opt.step()
    return theta0, before, grads, {n: p.detach() for n, p in params.items()}, opt


def test_selective_pull_touches_exactly_the_tensors_with_nonnegative_gradient_alignment():
    lam, lr = 2.0, 0.1
    theta0, before, grads, after, opt = _step("selective", lam, lr=lr)
    _, _, _, plain, _ = _step("none", 0.0, lr=lr)
    pulled = 0
    for n in theta0:
        d = before[n] - theta0[n]
        align = float((grads[n] * d).sum())
        if align >= 0:
            pulled += 1
            assert torch.allclose(after[n], plain[n] - lr * lam * d, atol=1e-6), n
            assert opt.pull_counts[n] == 1
        else:
            assert torch.equal(after[n], plain[n]), n
            assert opt.pull_counts[n] == 0
    assert 0 < pulled < len(theta0)  # the toy problem has both cases


def test_selective_pull_per_element():
    lam, lr = 2.0, 0.1
    theta0, before, grads, after, opt = _step("selective", lam, per_element=True, lr=lr)
    _, _, _, plain, _ = _step("none", 0.0, lr=lr)
    for n in theta0:
        d = before[n] - theta0[n]
        mask = (grads[n] * d) >= 0
        assert torch.allclose(after[n][mask], (plain[n] - lr * lam * d)[mask], atol=1e-6)
        assert torch.equal(after[n][~mask], plain[n][~mask])
        assert opt.pull_counts[n] == pytest.approx(float(mask.double().mean()))


def test_plain_pull_moves_every_tensor_toward_theta0():
    lam, lr = 2.0, 0.1
    theta0, before, _, after, opt = _step("l2", lam, lr=lr)
    _, _, _, plain, _ = _step("none", 0.0, lr=lr)
    for n in theta0:
        assert not torch.equal(after[n], plain[n])
        assert torch.allclose(after[n], plain[n] - lr * lam * (before[n] - theta0[n]), atol=1e-6)
    assert opt.pull_fraction() == {n: 1.0 for n in theta0}


def test_pull_rejects_overshooting_step_and_bad_mode():
    theta0, params, _, _ = _toy_problem()
    with pytest.raises(TangentError, match="overshoot"):
        PullToInit(torch.optim.SGD(list(params.values()), lr=0.5), params, theta0, mode="l2", lam=10.0)
    with pytest.raises(TangentError, match="unknown regularization"):
        PullToInit(torch.optim.SGD(list(params.values()), lr=0.5), params, theta0, mode="l1", lam=1.0)


# -- the trainer ---------------------------------------------------------------------------------------------
def _trainer(tmp_path, method="lora", params="lora(r=4):q,v@all", model="tiny-llama", callback=None, **kw):
    tm = tiny_task_model(model)
    ex = toy_examples(24, seed=3)
    cls = get_method(method)
    m = cls(cls.config_class.from_options(method, {"params": params}))
    base = dict(method=method, lr=2e-2, max_steps=6, batch_size=4, grad_accum=2, eval_every=2, probe_size=6)
    cfg = TrainConfig(**{**base, **kw})
    data = TrainData(ex[:16], ex[16:20], ex[20:], ex[:6])
    return Trainer(tm, m, data, cfg, tmp_path, callback)


def _trained(trainer):
    return {n: p.detach().clone() for n, p in trainer.method.trainable_parameters(trainer.model).items()}


def test_weight_decay_and_pull_change_the_trained_weights(tmp_path):
    runs = {}
    for name, kw in {"plain": {}, "wd": {"weight_decay": 0.5}, "l2": {"reg": "l2", "lam": 20.0},
                     "sel": {"reg": "selective", "lam": 20.0}}.items():
        t = _trainer(tmp_path / name, method="full", params="q,v@all", **kw)
        runs[name] = (t.fit(), _trained(t))
    dist = {k: s["last"]["theta_dist"] for k, (s, _) in runs.items()}
    for k in ("wd", "l2", "sel"):
        assert any(not torch.equal(runs[k][1][n], runs["plain"][1][n]) for n in runs["plain"][1]), k
    assert dist["l2"] < dist["plain"]  # the pull keeps θ closer to θ0 (linearization paper, Table 1 trend)
    assert dist["l2"] <= dist["sel"] + 1e-9
    assert 0 < sum(runs["sel"][0]["pull_fraction"].values())


def test_schedule_warms_up_then_decays_linearly():
    f = [warmup_linear_factor(s, 100, 0.06) for s in range(100)]
    assert f[0] > 0 and all(a < b for a, b in zip(f[:6], f[1:7], strict=True))
    assert max(f) == pytest.approx(1.0) and f.index(max(f)) == 6
    assert all(a > b for a, b in zip(f[6:-1], f[7:], strict=True)) and f[-1] == pytest.approx(1 / 94)


def test_resume_after_interruption_is_bit_identical(tmp_path):
    full = _trainer(tmp_path / "a", reg="selective", lam=5.0, max_steps=8, seed=3)
    full.fit()
    ref = _trained(full)

    def kill(step, total, info):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "b", reg="selective", lam=5.0, max_steps=8, seed=3, callback=kill).fit()
    assert load_checkpoint(tmp_path / "b").state.step == 4
    resumed = _trainer(tmp_path / "b", reg="selective", lam=5.0, max_steps=8, seed=3)
    resumed.fit(resume=True)
    got = _trained(resumed)
    assert all(torch.equal(got[n], ref[n]) for n in ref)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    strip = ("wall_s", "peak_rss_gb")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows] == \
        [{k: v for k, v in r.items() if k not in strip} for r in rows_b]
    ca, cb = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert ca.optimizer_state["pull_counts"] == cb.optimizer_state["pull_counts"]
    assert all(torch.equal(ca.optimizer_state["optimizer"]["state"][i]["exp_avg"],
                           cb.optimizer_state["optimizer"]["state"][i]["exp_avg"])
               for i in ca.optimizer_state["optimizer"]["state"])


def test_early_stopping_restores_the_best_weights(tmp_path):
    t = _trainer(tmp_path, method="full", params="q,v,up,down@all", lr=3.0, max_steps=12, eval_every=1,
                 early_stop=2, warmup_ratio=0.0)
    summary = t.fit()
    assert summary["stopped_early"] and summary["steps"] < 12 and summary["restored_best"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["val_loss"])
    assert summary["best_step"] == best["step"]
    assert t.evaluate(t.data.val)[0] == pytest.approx(best["val_loss"], rel=1e-5)


# -- the CLI -------------------------------------------------------------------------------------------------
runner = CliRunner()


def _cli(*args):
    from tangentft.cli.main import app

    return runner.invoke(app, ["train", *args])


def test_cli_train_writes_every_artifact(tmp_path, data_dir):
    out = tmp_path / "run"
    res = _cli("--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--method", "lora", "--params",
               "lora(r=4):q,v@0", "--reg", "selective", "--lam", "1", "--lr", "1e-2", "--n-train", "16",
               "--n-eval", "8", "--max-steps", "3", "--out", str(out))
    assert res.exit_code == 0, res.output
    for f in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "summary.md", "summary.json",
              "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "figures/training.png",
              "figures/linearization.png"):
        assert (out / f).is_file(), f
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {"step", "epoch", "train_loss", "eval_loss", "eval_metric", "eval_metric_name", "theta_dist", "lin_gap",
            "lin_kl", "output_shift", "wall_s", "peak_rss_gb"}
    assert keys <= set(rows[-1]) and rows[-1]["step"] == 3
    assert json.loads((out / "config.json").read_text())["train"]["method_options"]["params"] == "lora(r=4):q,v@0"
    # --resume reads config.json back; on a finished run it only rewrites the same artifacts.
    adapter = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    res = _cli("--resume", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    res = _cli("--resume", str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "no config.json" in res.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--lr", "0"], "learning rate must be positive"),
        (["--lr", "-1"], "learning rate must be positive"),
        (["--lora-r", "0"], "rank must be positive"),
        (["--method", "sft"], "unknown method 'sft'"),
        (["--params", "qq@0"], "unknown module type 'qq'"),
        (["--reg", "l1"], "unknown reg 'l1'"),
    ],
)
def test_cli_bad_hyperparameters_are_one_line_exit_2(tmp_path, args, needle):
    res = _cli("--model", "tiny-llama", "--task", str(tmp_path / "t.tsv"), "--out", str(tmp_path / "o"), *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_kernel_rule_caps_the_steps_at_t_hat(tmp_path, data_dir):
    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    cfg = TrainConfig(model="tiny-llama", task=str(data_dir / "sst2"), method="lora",
                      method_options={"params": "lora(r=2):q@0"}, n_train=16, max_steps=40, n_eval=8,
                      lr=1e-3, stop_at="kernel-rule", probe_size=4, optimizer="sgd", loss="mse")
    summary = run_training(cfg, tmp_path)
    rule = json.loads((tmp_path / "kernel_rule.json").read_text())
    assert rule["step_size_from"].startswith("2·lr") and rule["step_size"] == 2e-3
    assert summary["total_steps"] == max(1, min(40, rule["T_hat"])) == summary["steps"]
    assert "T̂ =" in (tmp_path / "summary.md").read_text()
    # a resumed run reads T̂ back instead of recomputing it; a small T̂ cuts the run short
    capped = tmp_path / "capped"  # a run killed after computing T̂, before its first checkpoint
    capped.mkdir()
    (capped / "config.json").write_text((tmp_path / "config.json").read_text())
    (capped / "kernel_rule.json").write_text(json.dumps({**rule, "T_hat": 3}))
    assert run_training(cfg, capped, resume=True)["steps"] == 3


def test_cli_train_takes_template_and_label_words(tmp_path, data_dir):
    out = tmp_path / "run"
    res = _cli("--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--template", "Text: {sentence}\\nMood:",
               "--label-words", " bad, good", "--params", "lora(r=2):q@0", "--n-train", "8", "--n-eval", "4",
               "--max-steps", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task_spec"]["template"] == "Text: {sentence}\nMood:"
    assert cfg["task_spec"]["label_words"] == [" bad", " good"] == cfg["train"]["label_words"]


ROUND_TRIP = [
    TrainConfig(model="tiny-llama", task="data/sst2"),
    TrainConfig(model="tiny-bert", task="data/my task", template="Review: {sentence}\nIt's", label_words=[" bad", " good"],
                columns={"sentence": "text", "label": "y"}, method="lora",
                method_options={"params": "lora(r=4):q,v@0;lora(r=4):o@1", "lora_r": 8, "lora_alpha": 16.0},
                reg="selective", lam=0.5, reg_per_element=True, weight_decay=0.01, optimizer="sgd", lr=0.0123,
                warmup_ratio=0.0, epochs=3, max_steps=7, batch_size=4, grad_accum=2, loss="mse", n_train=16, n_eval=8,
                eval_every=2, early_stop=2, val_fraction=0.2, probe_size=4, eval_batch_size=5, seed=3,
                stop_at="kernel-rule", num_labels=3, score_range=[0.0, 5.0], device="cpu", dtype="bfloat16",
                grad_checkpointing=True),
    TrainConfig(model="tiny-llama", task="t.tsv", method="s2ft",
                method_options={"types": "o:0.5,down:0.25", "strategy": "R", "calibration_size": "4"}),
    TrainConfig(model="tiny-llama", task="t.tsv", method="full", method_options={"params": "q,v@all;norm@1"},
                lr=1e-5, n_eval=0),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP, ids=["defaults", "every-field", "s2ft", "full"])
def test_command_line_reads_back_as_the_same_config(cfg, monkeypatch, tmp_path):
    """TrainConfig.command_line is the train command's inverse: the real CLI parses it back to an equal config."""
    import shlex

    import tangentft.predict.launch
    import tangentft.train.run

    seen = {}

    def fake_run(c, out_dir, **kw):
        seen.update(cfg=c, out=out_dir, predict=False)
        return {"steps": 0, "last": {}}

    def fake_predicted_run(c, out_dir, **kw):
        seen.update(cfg=c, out=out_dir, predict=True)
        return {"steps": 0, "last": {}}

    monkeypatch.setattr(tangentft.train.run, "run_training", fake_run)
    monkeypatch.setattr(tangentft.predict.launch, "train_with_prediction", fake_predicted_run)
    args = shlex.split(cfg.command_line(tmp_path / "out", predict=True))
    assert args[:2] == ["tangentft", "train"] and args[-2:] == ["--out", str(tmp_path / "out")]
    res = _cli(*args[2:])
    assert res.exit_code == 0, res.output
    assert seen["cfg"] == cfg and seen["out"] == tmp_path / "out" and seen["predict"]


def test_command_line_flags_are_the_train_options_and_unsayable_values_are_refused():
    import typer.main

    from tangentft.cli.main import app

    options = {o for p in typer.main.get_command(app).commands["train"].params for o in p.opts}
    for name in ("lr", "max_steps", "n_train", "reg_per_element", "label_words", "score_range", "grad_checkpointing"):
        assert TrainConfig.flag(name) in options, name
    with pytest.raises(TangentError, match="field n_eval is None"):
        TrainConfig(n_eval=None).command_line("o")
    assert TrainConfig(method_options={"lora_r": "8"}).method_options == {"lora_r": 8}  # stored typed
    assert "--method-opt calibration_size=4" in ROUND_TRIP[2].command_line("o")
