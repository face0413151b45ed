"""LoRA in the NTK regime (``linearized`` with ``factor_rank``): f̄ = f(θ0) + J(θ0)·vec(B·A), the LoRA-NTK paper's model.

Checks on tiny seeded models: the step-0 model is f(θ0); f̄ is exactly linear in B·A (against a Jacobian from
reverse-mode autograd, including GPT-2's fused q,k,v slices); at r ≥ min(out, in) the factored model spans the
full linearized one; training, save → load and resume behave like every other method (test_conformance.py);
bad selections are one-line errors; and the theorem on a tiny model: with r(r+1)/2 > K·N, full-batch
training of the factors reaches the linearized full fine-tune's loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_task_model, toy_examples
from tangentft.analysis.lora_rank import min_rank
from tangentft.errors import TangentError
from tangentft.methods.base import get_method
from tangentft.methods.linearized import FactoredLinearizedModel, LinearizedMethod, linearized_outputs
from tangentft.train.checkpoint import load_checkpoint
from tangentft.train.config import TrainConfig
from tangentft.train.loop import TrainData, Trainer

PARAMS = "q,v@0.weight"


def _method(params: str = PARAMS, **opts) -> LinearizedMethod:
    cls = get_method("linearized")
    return cls(cls.config_class.from_options("linearized", {"params": params, **opts}))


def _outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"]).detach()


def _randomize(method, model, seed: int = 0, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.trainable_parameters(model).values():
            p.copy_(scale * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_step_zero_is_f_at_theta0_even_at_full_rank(model_name):
    tm = tiny_task_model(model_name)
    tm.eval()
    batch = tm.encode(toy_examples(5, seed=7))
    untouched = _outputs(tm, batch)
    method = _method(factor_rank=32)  # ≥ min(out, in) of every tiny q, v matrix
    model = method.prepare(tm)
    assert isinstance(model, FactoredLinearizedModel)
    factors = method.trainable_parameters(model)
    assert all(float(p.abs().sum()) == 0 for n, p in factors.items() if n.endswith("lora_B"))
    assert all(float(p.abs().sum()) > 0 for n, p in factors.items() if n.endswith("lora_A"))
    assert torch.equal(_outputs(model, batch), untouched)
    net, theta = method.nonlinear(model)
    assert net is tm and all(torch.equal(theta[n], model.theta0[n]) for n in theta)


def _jacobian(tm, names, batch):
    """J (n·K × P) of f w.r.t. the named parameters, one output at a time with reverse-mode autograd."""
    params = dict(tm.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    out = tm(batch["input_ids"], batch["attention_mask"]).reshape(-1)
    rows = []
    for i in range(out.numel()):
        grads = torch.autograd.grad(out[i], [params[n] for n in names], retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return out.detach(), torch.stack(rows)


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_f_bar_is_exactly_linear_in_the_product_BA(model_name):
    tm = tiny_task_model(model_name)
    tm.eval()
    batch = tm.encode(toy_examples(3, seed=2))
    method = _method(factor_rank=3)
    model = method.prepare(tm)
    _randomize(method, model)
    got = _outputs(model, batch)
    f0, jac = _jacobian(tm, model.names, batch)
    # The tangent B·A built independently, from the factors and each block's place in its tensor.
    named = dict(tm.named_parameters())
    factors = method.trainable_parameters(model)
    delta = {n: torch.zeros_like(named[n]) for n in model.names}
    for b in method._selected.blocks:
        label = next(k[: -len(".lora_A")] for k in factors if k.startswith(b.name) and k.endswith(".lora_A")
                     and (k == f"{b.name}.lora_A" or f"[{b.role}]" in k))
        ba = (factors[f"{label}.lora_B"] @ factors[f"{label}.lora_A"]).detach()
        if b.out_idx is None:
            delta[b.name] += ba
        else:  # GPT-2's Conv1D stores (in, out): the block is a range of columns
            assert b.transposed
            delta[b.name][:, list(b.out_idx)] += ba
    if model_name == "tiny-gpt2":
        d = delta[model.names[0]]
        assert 0 < int((d != 0).sum()) < d.numel()  # q and v columns of the fused c_attn, k untouched
    vec = torch.cat([delta[n].reshape(-1) for n in model.names])
    assert torch.allclose(got, (f0 + jac @ vec).reshape(3, -1), atol=1e-5, rtol=1e-4)
    # and by the JVP itself with that tangent: f̄ − f0 = J·vec(B·A) exactly, whatever the factors' scale
    _, jv = linearized_outputs(tm, {n: named[n].detach() for n in model.names}, delta, batch["input_ids"],
                               batch["attention_mask"])
    assert torch.allclose(got - f0.reshape(3, -1), jv.detach(), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, f0.reshape(3, -1), atol=1e-3)


def test_full_rank_factors_span_the_linearized_full_model():
    tm = tiny_task_model("tiny-llama")
    tm.eval()
    batch = tm.encode(toy_examples(4, seed=3))
    full = _method()
    full_model = full.prepare(tm)
    _randomize(full, full_model, scale=0.05)
    fac = _method(factor_rank=32)
    fac_model = fac.prepare(tiny_task_model("tiny-llama"))
    factors = fac.trainable_parameters(fac_model)
    with torch.no_grad():
        for n, d in full_model.delta().items():  # ΔW = U S Vᵀ = (U S) · Vᵀ, zero-padded to rank 32
            u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
            k = s.numel()
            factors[f"{n}.lora_B"].zero_()[:, :k] = (u * s).float()
            factors[f"{n}.lora_A"].zero_()[:k] = vh.float()
    assert torch.allclose(_outputs(fac_model, batch), _outputs(full_model, batch), atol=1e-5)


def _trainer(out: Path, rank: int = 3, steps: int = 4, callback=None, model_name: str = "tiny-llama",
             **cfg_kw) -> Trainer:
    tm = tiny_task_model(model_name)
    ex = toy_examples(8, seed=1)
    cfg = TrainConfig(method="linearized", lr=1e-2, max_steps=steps, batch_size=4, eval_every=2, probe_size=4, seed=1,
                      warmup_ratio=0.0, **cfg_kw)
    return Trainer(tm, _method(factor_rank=rank, seed=1), TrainData(ex, [], ex, ex[:4]), cfg, out, callback)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("factored")
    trainer = _trainer(out)
    trainer.fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return trainer, rows, out


def test_training_lowers_the_loss_and_measures_the_linearization(trained):
    trainer, rows, _ = trained
    assert rows[0]["theta_dist"] == 0 and rows[0]["lin_gap"] == 0 and rows[0]["output_shift"] == 0
    assert rows[-1]["step"] == 4 and rows[-1]["eval_loss"] < rows[0]["eval_loss"] - 1e-4
    # lin_gap compares f(θ0 + B·A) with f̄: nonzero once B·A ≠ 0, since f is not linear in q, v
    assert rows[-1]["lin_gap"] > 0 and rows[-1]["output_shift"] > 0
    assert set(trainer.method.trainable_parameters(trainer.model)) == {
        f"hf.model.layers.0.self_attn.{m}_proj.weight.lora_{f}" for m in "qv" for f in "AB"}


def test_save_then_load_gives_the_trained_outputs(trained):
    from safetensors.torch import load_file

    trainer, _, out = trained
    batch = trainer.task_model.encode(toy_examples(5, seed=7))
    expected = _outputs(trainer.model, batch)
    tm = tiny_task_model("tiny-llama")
    state = load_file(str(out / "trained.safetensors"))
    theta0 = {n: p.detach() for n, p in tm.named_parameters() if n in state}
    assert set(state) == set(trainer.model.names)
    f0, jv = linearized_outputs(tm, theta0, {n: state[n] - theta0[n] for n in state}, batch["input_ids"],
                                batch["attention_mask"])
    assert torch.allclose(f0 + jv, expected, atol=1e-5)
    # the factors alone rebuild the model: load them into a freshly prepared one
    factors = load_file(str(out / "factors.safetensors"))
    fresh = _method(factor_rank=3, seed=5)
    model = fresh.prepare(tiny_task_model("tiny-llama"))
    fresh.load_checkpoint_state(model, factors)
    assert torch.equal(_outputs(model, batch), expected)
    assert json.loads((out / "selection.json").read_text())["spec"] == PARAMS


def test_resume_is_bit_identical(trained, tmp_path):
    trainer, _, _ = trained

    def kill(step, total, info):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, callback=kill).fit()
    assert load_checkpoint(tmp_path).state.step == 2
    resumed = _trainer(tmp_path)
    resumed.fit(resume=True)
    ref = trainer.method.checkpoint_state(trainer.model)
    got = resumed.method.checkpoint_state(resumed.model)
    assert set(got) == set(ref) and all(torch.equal(got[n], ref[n]) for n in ref)


def test_bad_selections_and_options_are_one_line_errors():
    tm = tiny_task_model("tiny-llama")
    with pytest.raises(TangentError, match=r"also selects .*bias|also selects .*norm"):
        _method("q,v@0;norm@0", factor_rank=2).prepare(tm)
    with pytest.raises(TangentError, match="needs params"):
        _method(None, factor_rank=2).prepare(tiny_task_model("tiny-llama"))
    with pytest.raises(TangentError, match="lora"):
        _method("lora(r=2):q@0", factor_rank=2).prepare(tiny_task_model("tiny-llama"))
    with pytest.raises(TangentError, match="factor_rank must be positive"):
        _method(factor_rank=0)
    with pytest.raises(TangentError, match="nuclear-prox .* no factor_rank"):
        get_method("nuclear-prox").config_class.from_options("nuclear-prox", {"factor_rank": "2"})
    method = _method(factor_rank=2)
    method.prepare(tiny_task_model("tiny-llama"))
    with pytest.raises(TangentError, match="kernel stopping rule"):
        getattr(method, "selected", None)
    plain = _method()
    assert getattr(plain, "selected", None) is None  # not prepared yet: no selection, as for every method
    plain.prepare(tiny_task_model("tiny-llama"))
    assert plain.selected.spec == PARAMS


def test_lora_ntk_theorem_rank_r_star_reaches_the_linearized_full_fine_tune():
    # LoRA-NTK paper, Theorem 4.1 on a tiny linearized model: N = 8 examples, K = 2 outputs, r* with
    # r*(r*+1)/2 > K·N. The linearized full fine-tune's optimum is exact (least squares on J); full-batch
    # training of B·A at rank r* from the B = 0 start ends at that loss: no spurious local minimum on the way.
    r_star = min_rank(2, 8)
    assert r_star == 6
    ex = toy_examples(8, seed=1)
    tm = tiny_task_model("tiny-llama")
    tm.eval()
    batch = tm.encode(ex)
    y = tm.targets(ex).double().reshape(-1)
    method = _method("down@1.weight", factor_rank=r_star)
    model = method.prepare(tm)
    f0, jac = _jacobian(tm, model.names, batch)
    for p in tm.parameters():
        p.requires_grad_(False)
    f0, jac = f0.double(), jac.double()
    init = float(((f0 - y) ** 2).mean())
    best = torch.linalg.pinv(jac) @ (y - f0)
    full = float(((f0 + jac @ best - y) ** 2).mean())
    assert full < 1e-12 * init  # 16 constraints, 1536 free entries: the linearized full fine-tune interpolates
    steps = 150
    opt = torch.optim.Adam(method.trainable_parameters(model).values(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
    for _ in range(steps):
        loss = ((model(batch["input_ids"], batch["attention_mask"]).double().reshape(-1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    out = _outputs(model, batch).double().reshape(-1)
    lora = float(((out - y) ** 2).mean())
    assert lora <= full + 1e-3 * init, (lora, full, init)
