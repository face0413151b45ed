"""tangentft.integrations: a real transformers.Trainer with the callback and the pull, checked against
tangentft's own trainer on the same data, seed and configuration."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_task_model, toy_examples
from tangentft.errors import TangentError
from tangentft.integrations import SelectivePull, TangentCallback, TaskModelForTrainer, task_collator
from tangentft.methods.base import get_method
from tangentft.train.loop import TrainConfig, TrainData, Trainer

N, STEPS, LR, LAM = 12, 4, 2e-2, 5.0
METHODS = {
    "lora": {"params": "lora(r=4):q,v,o@all"},
    "s2ft": {"types": "o:0.5,down:0.25"},
}


def _prepared(method: str, model: str, seed: int = 0):
    tm = tiny_task_model(model, seed=seed)
    m = get_method(method)
    torch.manual_seed(seed)  # as Trainer.fit does before preparing the method
    meth = m(m.config_class.from_options(method, {"seed": seed, **METHODS[method]}))
    meth.bind_data(toy_examples(N, seed=1))
    return tm, meth, meth.prepare(tm)


def _tangentft_rows(method: str, model: str, tmp_path, reg: str) -> list[dict]:
    import json

    tm = tiny_task_model(model, seed=0)
    m = get_method(method)
    meth = m(m.config_class.from_options(method, {"seed": 0, **METHODS[method]}))
    train = toy_examples(N, seed=1)
    cfg = TrainConfig(model=model, method=method, method_options=METHODS[method], reg=reg, lam=LAM, lr=LR,
                      warmup_ratio=0.0, max_steps=STEPS, batch_size=N, eval_every=1, seed=0, n_eval=None)
    Trainer(tm, meth, TrainData(train, [], [], train[:6]), cfg, tmp_path / "tangentft").fit()
    return [json.loads(line) for line in (tmp_path / "tangentft" / "metrics.jsonl").read_text().splitlines()]


def _hf_run(method: str, model: str, tmp_path, reg: str):
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    tm, _, prepared = _prepared(method, model)
    train = toy_examples(N, seed=1)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=N, max_steps=STEPS, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, optim="adamw_torch", max_grad_norm=0.0,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = HFTrainer(model=TaskModelForTrainer(prepared), args=args, train_dataset=train,
                        data_collator=task_collator(tm))
    cb = TangentCallback(tm.encode(train[:6]), pull_lam=LAM if reg != "none" else 0.0,
                         pull_mode=reg if reg != "none" else "selective").attach(trainer)
    trainer.train()
    return trainer, cb


@pytest.mark.parametrize("method,model,reg", [("lora", "tiny-llama", "selective"), ("s2ft", "tiny-llama", "l2"),
                                              ("lora", "tiny-bert", "selective")])
def test_trainer_callback_matches_tangentft_trainer(method, model, reg, tmp_path):
    ours = {r["step"]: r for r in _tangentft_rows(method, model, tmp_path, reg)}
    trainer, cb = _hf_run(method, model, tmp_path, reg)
    logged = [r for r in trainer.state.log_history if "theta_dist" in r]
    assert [r["step"] for r in logged] == list(range(STEPS + 1))  # θ0 row, then every step
    assert logged[0]["theta_dist"] == 0.0 and logged[0]["lin_gap"] == pytest.approx(0.0, abs=1e-6)
    for row in logged:
        want = ours[row["step"]]
        for key in ("theta_dist", "lin_gap", "output_shift", "lin_kl"):
            assert row[key] == pytest.approx(want[key], rel=2e-3, abs=1e-6), (row["step"], key)
    assert logged[-1]["theta_dist"] > 0 and logged[-1]["lin_gap"] > 0
    # the Trainer's own loss rows sit beside ours
    assert any("loss" in r for r in trainer.state.log_history)
    assert 0.0 < logged[-1]["pull_fraction"] <= 1.0


def test_callback_stops_at_the_given_step(tmp_path):
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    tm, meth, prepared = _prepared("lora", "tiny-llama")
    train = toy_examples(N, seed=1)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=20, logging_steps=5,
                             save_strategy="no", report_to="none", use_cpu=True, remove_unused_columns=False,
                             disable_tqdm=True)
    trainer = HFTrainer(model=TaskModelForTrainer(prepared), args=args, train_dataset=train,
                        data_collator=task_collator(tm))
    cb = TangentCallback(stop_at_step=3).attach(trainer)
    trainer.train()
    assert trainer.state.global_step == 3
    assert [r["step"] for r in cb.history] == [0, 3] and "lin_gap" not in cb.history[-1]


def test_kernel_rule_step_is_the_trainer_rule():
    from tangentft.analysis.kernel_rule import kernel_rule
    from tangentft.integrations.callback import kernel_rule_step

    tm, meth, _ = _prepared("lora", "tiny-llama")
    train = toy_examples(N, seed=1)
    t_hat = kernel_rule_step(tm, meth.selected, train, lr=LR, optimizer="sgd", loss="mse")
    rule = kernel_rule(tm, meth, train, optimizer="sgd", loss="mse", lr=LR, seed=0)
    assert t_hat == max(1, int(rule["T_hat"])) >= 1


def test_selective_pull_on_a_plain_torch_loop():
    """Any optimizer: the pull acts inside optimizer.step(), toward the values at construction."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.SGD([w], lr=0.1)
    pull = SelectivePull(opt, lam=2.0, mode="l2", named_parameters=[("w", w)])
    w0 = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)  # move away from θ0 without a gradient step
    w.grad = torch.zeros_like(w)
    opt.step()  # pull only: θ ← θ − lr·λ(θ − θ0)
    assert torch.allclose(w.detach(), w0 + 1.0 - 0.1 * 2.0 * 1.0)
    assert pull.pull_fraction() == {"w": 1.0}
    pull.remove()
    opt.step()
    assert pull.steps == 1


def test_selective_pull_skips_steps_where_the_pull_would_raise_the_loss():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.0 + 1e-9)
    pull = SelectivePull(opt, lam=1.0)
    with torch.no_grad():
        w.add_(1.0)
    w.grad = -torch.ones(3)  # ∇R·(θ − θ0) < 0: pulling back would increase R to first order
    opt.step()
    assert pull.pull_fraction()["group0.param0"] == 0.0
    w.grad = torch.ones(3)
    opt.step()
    assert pull.pull_fraction()["group0.param0"] == 0.5


def test_bad_arguments_are_one_line_errors():
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(TangentError, match="mode 'plain2'"):
        SelectivePull(torch.optim.SGD([w], lr=0.1), 1.0, mode="plain2")
    with pytest.raises(TangentError, match="overshoot"):
        SelectivePull(torch.optim.SGD([w], lr=0.5), 10.0)
    with pytest.raises(TangentError, match="torch.optim.Optimizer"):
        SelectivePull(object(), 1.0)
    with pytest.raises(TangentError, match="stop_at_step"):
        TangentCallback(stop_at_step=0)
    with pytest.raises(TangentError, match="input_ids"):
        TangentCallback({"ids": torch.zeros(1)})
