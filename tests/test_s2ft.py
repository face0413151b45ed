"""S2FT as a PEFT method: co-permutation, partial backprop, training sparsity, merge/unload, save/load,
base fingerprint, selection strategies — on tiny llama (GQA), bert and gpt2."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_MODELS, tiny_task_model, toy_examples
from s2ft_helpers import ALL_TYPES, batch, s2ft_model
from tangentft.errors import TangentError
from tangentft.methods.s2ft import S2FTConfig, S2FTLayer, S2FTMethod, pick_units
from tangentft.methods.s2ft.method import S2FTMethodConfig
from tangentft.methods.s2ft.selection import unit_width


@pytest.mark.parametrize("name", TINY_MODELS)
def test_copermutation_keeps_outputs(name):
    ref = tiny_task_model(name)
    enc = batch(ref)
    y0 = ref(**enc)
    tm, pm = s2ft_model(name)
    perms = pm.base_model.s2ft_permutations
    assert any(not torch.equal(p.index, torch.arange(p.index.numel())) for p in perms.values())
    assert (tm(**enc) - y0).abs().max() <= 1e-5
    # the permuted base differs from the original: the permutation really moved rows/columns
    moved = [p for p in perms if not torch.equal(tm.hf.get_submodule(p).get_base_layer().weight if isinstance(
        tm.hf.get_submodule(p), S2FTLayer) else tm.hf.get_submodule(p).weight, ref.hf.get_submodule(p).weight)]
    assert moved


def test_gqa_selects_whole_kv_groups():
    tm, pm = s2ft_model("tiny-llama", {"q": 0.5, "k": 0.5, "o": 0.5})
    smap = tm.structure
    assert smap.queries_per_kv == 2
    sel = pm.peft_config["default"].selection
    assert sel["counts"]["o"] == [1, 1] and all(len(r) == 1 for r in sel["attention"])
    o = tm.hf.get_submodule(smap.ref(0, "o").path)
    q = tm.hf.get_submodule(smap.ref(0, "q").path)
    k = tm.hf.get_submodule(smap.ref(0, "k").path)
    group = sel["attention"][0][0]
    assert o.s2ft_delta["default"].shape == (32, 2 * 8)  # both query heads of the group, head_dim 8
    assert q.s2ft_delta["default"].shape == (16, 32) and k.s2ft_delta["default"].shape == (8, 32)
    assert o.s2ft_spec["default"].original_index.tolist() == list(range(group * 16, group * 16 + 16))
    assert k.s2ft_spec["default"].original_index.tolist() == list(range(group * 8, group * 8 + 8))


def _loss(tm, enc):
    return tm(**enc).pow(2).sum()


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("nonzero", [False, True])
def test_delta_gradient_is_slice_of_full_gradient(name, nonzero):
    from tangentft.adapters import extract, merge

    tm, pm = s2ft_model(name, delta_seed=3 if nonzero else None)
    ref = tiny_task_model(name)
    merge(ref, extract(tm))  # the dense model at the same point θ0 + ΔW (original coordinates)
    enc = batch(tm)
    for p in ref.parameters():
        p.requires_grad_(False)
    layers = {p: m for p, m in tm.hf.named_modules() if isinstance(m, S2FTLayer)}
    for path in layers:
        ref.hf.get_submodule(path).weight.requires_grad_(True)
    _loss(tm, enc).backward()
    _loss(ref, enc).backward()
    for path, layer in layers.items():
        spec = layer.s2ft_spec["default"]
        full = ref.hf.get_submodule(path).weight.grad.index_select(spec.axis, spec.original_index)
        got = spec.to_native(layer.s2ft_delta["default"].grad)
        assert torch.allclose(got, full, atol=1e-5, rtol=1e-4), path


def test_partial_backprop_saves_only_the_slice():
    tm, _ = s2ft_model("tiny-llama", {"down": 0.25})
    layer = tm.hf.get_submodule(tm.structure.ref(0, "down").path)
    x = torch.randn(2, 5, 48, requires_grad=True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        layer(x).sum().backward()
    n = layer.s2ft_delta["default"].shape[1]
    assert (2, 5, n) in shapes and (2, 5, 48) not in shapes
    assert layer.get_base_layer().weight.grad is None and layer.s2ft_delta["default"].grad is not None


@pytest.mark.parametrize("name", TINY_MODELS)
def test_training_changes_only_selected_entries(name):
    tm, pm = s2ft_model(name)
    ref = tiny_task_model(name)
    params = [p for p in tm.hf.parameters() if p.requires_grad]
    assert params and all(".s2ft_delta." in n for n, p in tm.hf.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    enc = batch(tm)
    for _ in range(3):
        opt.zero_grad()
        _loss(tm, enc).backward()
        opt.step()
    specs = {p: m.s2ft_spec["default"] for p, m in tm.hf.named_modules() if isinstance(m, S2FTLayer)}
    merged = pm.merge_and_unload()
    before, after = dict(ref.hf.named_parameters()), dict(merged.named_parameters())
    for n, w in after.items():
        changed = w != before[n]
        path = n.rsplit(".", 1)[0]
        if path not in specs or n.endswith(".bias"):
            assert not changed.any(), n
            continue
        spec = specs[path]
        allowed = torch.zeros_like(changed)
        allowed.index_fill_(spec.axis, spec.original_index, True)
        assert changed.any() and not (changed & ~allowed).any(), n


@pytest.mark.parametrize("name", TINY_MODELS)
def test_merged_unmerged_unloaded_agree(name):
    tm, pm = s2ft_model(name, delta_seed=1)
    enc = batch(tm)
    y = tm(**enc)
    pm.merge_adapter()
    y_merged = tm(**enc)
    pm.unmerge_adapter()
    assert torch.equal(tm(**enc), y)
    assert (y_merged - y).abs().max() <= 1e-5
    with pm.disable_adapter():
        y_base = tm(**enc)
    tm2 = tiny_task_model(name)
    tm2.hf = pm.merge_and_unload()
    assert (tm2(**enc) - y).abs().max() <= 1e-5
    base_ref = tiny_task_model(name)
    assert (base_ref(**enc) - y_base).abs().max() <= 1e-5


def test_unload_restores_the_exact_base():
    tm, pm = s2ft_model("tiny-gpt2", delta_seed=2)
    ref = tiny_task_model("tiny-gpt2")
    pm.merge_adapter()
    hf = pm.unload()
    for (n, a), (_, b) in zip(hf.state_dict().items(), ref.hf.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("name", TINY_MODELS)
def test_save_fresh_base_load_identical(name, tmp_path):
    from peft import PeftModel

    tm, pm = s2ft_model(name, strategy="W", delta_seed=4)
    enc = batch(tm)
    y = tm(**enc)
    pm.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    fresh = tiny_task_model(name)
    loaded = PeftModel.from_pretrained(fresh.hf, str(tmp_path))
    assert torch.equal(fresh(**enc), y)
    assert loaded.peft_config["default"].selection == pm.peft_config["default"].selection
    # the file is expressed against the original base: index_add onto a plain fresh base gives the same model
    from tangentft.adapters import load_adapter, merge

    plain = tiny_task_model(name)
    merge(plain, load_adapter(tmp_path))
    assert (plain(**enc) - y).abs().max() <= 1e-5


def test_shortened_target_modules_still_check_the_base(tmp_path, monkeypatch):
    # PEFT rewrites target_modules as suffixes ('o_proj', ...) once there are 20 or more (SmolLM2 has 60):
    # the fingerprint must be checked against the full paths it was computed on.
    import peft.tuners.tuners_utils as tu
    from peft import PeftModel

    from tangentft.adapters import check_base, load_adapter

    monkeypatch.setattr(tu, "MIN_TARGET_MODULES_FOR_OPTIMIZATION", 1)
    tm, pm = s2ft_model("tiny-llama", strategy="W", delta_seed=4)
    pm.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert all("." not in m for m in cfg["target_modules"]), cfg["target_modules"]  # PEFT did shorten them
    adapter = load_adapter(tmp_path)
    check_base(tiny_task_model("tiny-llama").hf, adapter)
    with pytest.raises(TangentError, match="different base"):
        check_base(tiny_task_model("tiny-llama", seed=1).hf, adapter)
    assert isinstance(PeftModel.from_pretrained(tiny_task_model("tiny-llama").hf, str(tmp_path)), PeftModel)


def test_wrong_base_is_refused(tmp_path):
    from peft import PeftModel

    _, pm = s2ft_model("tiny-llama", delta_seed=1)
    pm.save_pretrained(str(tmp_path))
    other = tiny_task_model("tiny-llama", seed=1)
    with pytest.raises(TangentError, match="different base model"):
        PeftModel.from_pretrained(other.hf, str(tmp_path))


def test_bad_config_is_one_line():
    with pytest.raises(TangentError, match="unknown module type 'qq'"):
        S2FTConfig(ratios={"qq": 0.1})
    with pytest.raises(TangentError, match="strategy"):
        S2FTConfig(strategy="Z")
    tm = tiny_task_model("tiny-bert")
    with pytest.raises(TangentError, match="'gate' does not exist"):
        pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"gate": 0.1}))
    with pytest.raises(TangentError, match="needs calibration"):
        pick_units(tm.hf, tm.structure, S2FTConfig(strategy="A"))


def test_budget_allocates_uniformly():
    tm = tiny_task_model("tiny-llama")
    sel = pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"down": 1.0, "up": 1.0}, budget=2 * 2 * 10 * 32))
    assert sel["counts"] == {"down": [10, 10], "up": [10, 10]}


# -- strategies: each picks the documented extreme on a constructed case ------------------------------------
def _calibration(tm):
    from tangentft.methods.s2ft.method import task_calibration

    return task_calibration(tm, toy_examples(8, seed=1), batch_size=4)


def _boosted(channel: int, *, weight: bool = False, activation: bool = False):
    """tiny-llama whose FFN channel ``channel`` has a huge down column (weight) or huge activation in layer 0."""
    tm = tiny_task_model("tiny-llama")
    smap = tm.structure
    with torch.no_grad():
        if weight:
            smap.module(tm.hf, 0, "down").weight[:, channel] *= 50.0
        if activation:
            smap.module(tm.hf, 0, "up").weight[channel] *= 50.0
            smap.module(tm.hf, 0, "gate").weight[channel] *= 5.0
    return tm


@pytest.mark.parametrize(
    "strategy,boost,expect_first",
    [("W", "weight", True), ("A", "activation", True), ("S", "weight", True), ("S", "activation", True),
     ("G", "activation", True)],
)
def test_strategy_picks_extreme(strategy, boost, expect_first):
    ch = 7
    tm = _boosted(ch, weight=boost == "weight", activation=boost == "activation")
    calib = _calibration(tm) if strategy != "W" else None
    large = pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"down": 0.25}, strategy=strategy), calib)
    small = pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"down": 0.25}, strategy=strategy, variant="small"), calib)
    assert large["ffn"][0][0] == ch
    assert ch not in small["ffn"][0]


def test_weight_strategy_on_gqa_groups():
    tm = tiny_task_model("tiny-llama")
    with torch.no_grad():
        tm.structure.module(tm.hf, 1, "o").weight[:, 16:32] *= 10.0  # KV group 1 = query heads 2,3
    sel = pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"o": 0.5}, strategy="W"))
    assert sel["attention"][1] == [1]
    sel = pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"o": 0.5}, strategy="W", variant="small"))
    assert sel["attention"][1] == [0]


def test_gradient_strategy_discards_gradients():
    tm = tiny_task_model("tiny-llama")
    pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"down": 0.25, "o": 0.5}, strategy="G"), _calibration(tm))
    assert all(p.grad is None for p in tm.parameters())
    assert all(p.requires_grad for p in tm.hf.parameters())  # flags restored


def test_random_strategy_is_seeded():
    tm = tiny_task_model("tiny-bert")
    a = pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"down": 0.25}, seed=1))
    b = pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"down": 0.25}, seed=1))
    c = pick_units(tm.hf, tm.structure, S2FTConfig(ratios={"down": 0.25}, seed=2))
    assert a == b and a != c
    assert all(len(set(r)) == 12 for r in a["ffn"])


# -- the trainer-facing method ------------------------------------------------------------------------------
def test_method_prepare_and_save(tmp_path):
    from tangentft.methods.base import get_method

    assert get_method("s2ft") is S2FTMethod
    tm = tiny_task_model("tiny-bert")
    method = S2FTMethod(S2FTMethodConfig(types="o:0.5,down:0.25", strategy="A"), calibration=toy_examples(8))
    model = method.prepare(tm)
    names = set(method.trainable_parameters(model))
    assert names and all(".s2ft_delta." in n or n.startswith("head.") for n in names)
    assert any(n.startswith("head.") for n in names)
    method.save(model, tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file() and (tmp_path / "extra.safetensors").is_file()
    state = method.checkpoint_state(model)
    method.load_checkpoint_state(model, state)


def test_method_needs_calibration_for_data_strategies():
    tm = tiny_task_model("tiny-llama")
    with pytest.raises(TangentError, match="calibration"):
        S2FTMethod(S2FTMethodConfig(strategy="G")).prepare(tm)


def test_all_types_inject_on_every_arch():
    for name in TINY_MODELS:
        tm, pm = s2ft_model(name)
        roles = set(ALL_TYPES[name])
        counts = pm.peft_config["default"].selection["counts"]
        assert set(counts) == roles
        for role in roles:
            layer = tm.hf.get_submodule(tm.structure.ref(0, role).path)
            assert isinstance(layer, S2FTLayer)
        assert unit_width(tm.structure, "down") == 1


@pytest.mark.parametrize("strategy", ["R", "G"])
def test_trainer_runs_s2ft_and_saves_a_peft_adapter(tmp_path, data_dir, strategy):
    import json

    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    cfg = TrainConfig(model="tiny-llama", task=str(data_dir / "sst2"), method="s2ft",
                      method_options={"types": "o:0.5,down:0.25", "strategy": strategy, "calibration_size": 4},
                      n_train=16, max_steps=4, n_eval=8, lr=1e-2, probe_size=4)
    summary = run_training(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 4 and rows[-1]["theta_dist"] > 0
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "S2FT"


@pytest.mark.parametrize("mode", ["col", "row"])
def test_s2ft_function_forward_mode_matches_dense_reference(mode):
    # the trainer's linearization probe runs torch.func.jvp through S2FTFunction
    from tangentft.methods.s2ft.layer import S2FTFunction

    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 5, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(6, generator=g)
    segments = ((1, 2), (4, 1))
    delta = torch.randn(*((6, 3) if mode == "col" else (3, 8)), generator=g)
    tangents = (torch.randn(x.shape, generator=g), torch.randn(delta.shape, generator=g))

    def dense(x, d):
        full = torch.zeros_like(w)
        if mode == "col":
            full[:, :3] = d
        else:
            full[1:3], full[4:5] = d[:2], d[2:]
        return torch.nn.functional.linear(x, w + full, b)

    out, tan = torch.func.jvp(lambda x, d: S2FTFunction.apply(x, w, b, d, False, mode, segments), (x, delta), tangents)
    ref_out, ref_tan = torch.func.jvp(dense, (x, delta), tangents)
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(tan, ref_tan, atol=1e-5)


def test_select_entry_point_matches_what_training_picks(data_dir, tmp_path):
    """`s2ft select` and `train --method s2ft` rank units with the same calibration code and data."""
    import json

    from typer.testing import CliRunner

    from tangentft.cli.main import app
    from tangentft.data import load_task
    from tangentft.methods.s2ft.method import S2FTMethod, S2FTMethodConfig, choose_units
    from tangentft.models.task_model import build_task_model

    cfg = S2FTMethodConfig(types="o:0.5,down:0.25", strategy="A", calibration_size=8,
                           calibration_task=str(data_dir / "sst2"))
    chosen, _ = choose_units("tiny-llama", cfg)
    tm = build_task_model("tiny-llama", load_task(str(data_dir / "sst2")).spec, seed=0)
    S2FTMethod(cfg).prepare(tm)
    assert tm.peft_model.peft_config["default"].selection == chosen
    res = CliRunner().invoke(app, ["s2ft", "select", "tiny-llama", "--types", "o:0.5,down:0.25", "-s", "A",
                                   "--task", str(data_dir / "sst2"), "--calibration-size", "8",
                                   "--out", str(tmp_path / "sel.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "sel.json").read_text()) == json.loads(json.dumps(chosen))
    res = CliRunner().invoke(app, ["s2ft", "select", "tiny-llama", "-s", "G"])
    assert res.exit_code == 2 and "needs --task" in res.output


@pytest.mark.parametrize("mode", ["col", "row"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_s2ft_function_backward_equals_dense_masked_gradient(mode, transposed, bias):
    # partial backprop is exact: ∂L/∂x and ∂L/∂Δ equal the dense layer's, ∂L/∂Δ = the masked slice of ∂L/∂W
    from tangentft.methods.s2ft.layer import S2FTFunction

    g = torch.Generator().manual_seed(1)
    w = torch.randn(7, 9, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64) if bias else None
    segments = ((0, 3),) if mode == "col" else ((1, 2), (4, 2))
    n = sum(k for _, k in segments)
    delta = torch.randn(*((7, n) if mode == "col" else (n, 9)), generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for s, k in segments:
        if mode == "col":
            mask[:, s : s + k] = True
        else:
            mask[s : s + k] = True

    dense_w = w.clone()
    dense_w[mask] += delta.detach().reshape(-1)  # row-major order of the mask = the delta's order
    dense_w.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    (torch.nn.functional.linear(x_ref, dense_w, b) * upstream).sum().backward()

    weight = w.t().contiguous() if transposed else w
    y = S2FTFunction.apply(x, weight, b, delta, transposed, mode, segments)
    (y * upstream).sum().backward()
    assert torch.allclose(y, torch.nn.functional.linear(x_ref, dense_w, b))
    assert torch.allclose(x.grad, x_ref.grad)
    assert torch.allclose(delta.grad.reshape(-1), dense_w.grad[mask])
