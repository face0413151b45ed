"""Registry, structure maps and the TaskModel wrapper."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODELS, stsb_spec, tiny_task_model, toy_examples
from tangentft.errors import TangentError
from tangentft.models.registry import REGISTRY, load_model
from tangentft.models.structure import structure_map


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_load_seeded(name):
    a, b, c = load_model(name, seed=0), load_model(name, seed=0), load_model(name, seed=1)
    pa, pb, pc = (next(iter(m.model.parameters())) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert REGISTRY[name].count_params() == sum(p.numel() for p in a.model.parameters())


@pytest.mark.parametrize("name", TINY_MODELS)
def test_structure_map_finds_every_coupled_module(name):
    loaded = load_model(name)
    smap = loaded.structure
    assert smap.num_layers == 2
    for layer in range(smap.num_layers):
        for structure, (rows, cols) in smap.coupled().items():
            for role in (*rows, cols):
                mod = smap.module(loaded.model, layer, role)
                ref = smap.ref(layer, role)
                w = mod.weight
                out_dim = w.shape[ref.out_axis]
                width = (ref.out_range[1] - ref.out_range[0]) if ref.out_range else out_dim
                assert width == smap.out_features(role), (structure, role)
                assert w.shape[ref.in_axis] == smap.in_features(role), (structure, role)
        for path in smap.norms[layer].values():
            assert "Norm" in type(loaded.model.get_submodule(path)).__name__ or path.split(".")[-1].startswith("ln")
    assert smap.num_heads * smap.head_dim == smap.out_features("q")


def test_llama_structure_has_grouped_query_attention():
    smap = load_model("tiny-llama").structure
    assert (smap.num_heads, smap.num_kv_heads, smap.queries_per_kv) == (4, 2, 2)
    assert list(smap.kv_group(1)) == [2, 3]
    assert list(smap.q_channels(1)) == list(range(8, 16))


def test_unknown_role_and_layer_are_clear_errors():
    smap = load_model("tiny-bert").structure
    with pytest.raises(TangentError, match="unknown module type 'gate'"):
        smap.ref(0, "gate")
    with pytest.raises(TangentError, match="layer 5 out of range"):
        smap.ref(5, "q")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(TangentError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_task_model_outputs_have_shape_n_by_k(name):
    tm = tiny_task_model(name)
    ex = toy_examples(5)
    out = tm.predict(ex, batch_size=2)
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    # padding invariance: an example alone == the same example inside a padded batch
    assert torch.allclose(tm.predict(ex[:1]), out[:1], atol=1e-5)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_regression_task_model_has_one_output(name):
    tm = tiny_task_model(name, stsb_spec())
    out = tm.predict(toy_examples(3, regression=True))
    assert out.shape == (3, 1)
    if tm.kind == "causal":  # expectation over score words lies in [0, 5]
        assert ((out >= 0) & (out <= 5)).all()


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("regression", [False, True])
def test_one_pass_gives_the_outputs_and_the_features_they_are_read_from(name, regression):
    tm = tiny_task_model(name, stsb_spec() if regression else None)
    x = toy_examples(5, regression=regression)
    x = [x[i] for i in reversed(tm.length_order(x))]  # longest first: batches are cut in another order
    assert tm.length_order(x) != list(range(5))
    f, phi = tm.predict_and_features(x, batch_size=2)
    enc = tm.encode(x)
    tm.eval()
    with torch.no_grad():
        assert torch.allclose(f, tm(**enc).float(), atol=1e-5)
        assert torch.allclose(phi, tm.features(**enc).double(), atol=1e-5)
    assert f.shape == (5, tm.num_outputs) and phi.dtype == torch.float64


def test_causal_output_is_label_word_logits():
    tm = tiny_task_model("tiny-llama")
    ex = toy_examples(2)
    enc = tm.encode(ex)
    full = tm.hf(**enc).logits
    last = enc["attention_mask"].sum(1) - 1
    expected = full[torch.arange(2), last][:, tm.label_token_ids]
    assert torch.allclose(tm(**enc), expected, atol=1e-5)


def test_encoder_head_is_seeded():
    a, b = tiny_task_model("tiny-bert", seed=3), tiny_task_model("tiny-bert", seed=3)
    assert torch.equal(a.head.weight, b.head.weight)


@pytest.mark.slow
@pytest.mark.parametrize("name,arch,millions", [("minilm", "bert", 22.7), ("smollm2-135m", "llama", 134.5)])
def test_real_models_load(name, arch, millions):
    from conftest import sst2_spec
    from tangentft.models.task_model import build_task_model

    loaded = load_model(name)
    assert loaded.arch == arch
    total = sum(p.numel() for p in loaded.model.parameters())
    assert round(total / 1e6, 1) == millions
    assert round(REGISTRY[name].count_params() / 1e6, 1) == millions
    assert structure_map(loaded.model).num_layers == (6 if name == "minilm" else 30)
    tm = build_task_model(loaded, sst2_spec())
    out = tm.predict(toy_examples(3))
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    if name == "smollm2-135m":
        # SmolLM2 splits " 3" into " " + "3": the shared space moves into the prompt.
        reg = build_task_model(loaded, stsb_spec())
        assert reg.prompt_suffix == " " and reg.texts(toy_examples(1, regression=True))[0].endswith(": ")
        assert ((reg.predict(toy_examples(2, regression=True)) >= 0) & (reg.predict(toy_examples(2, regression=True)) <= 5)).all()
        smap = loaded.structure
        assert (smap.num_heads, smap.num_kv_heads, smap.head_dim, smap.intermediate_size) == (9, 3, 64, 1536)


def test_base_weights_fingerprint_ignores_adapters_and_tracks_weights():
    from tangentft.models.fingerprint import base_weights_fingerprint
    from tangentft.models.selection import select

    a, b, c = tiny_task_model("tiny-llama"), tiny_task_model("tiny-llama"), tiny_task_model("tiny-llama", seed=1)
    fa = base_weights_fingerprint(a.hf)
    assert fa == base_weights_fingerprint(b.hf) != base_weights_fingerprint(c.hf)
    select(a, "lora(r=2):q@0", init="random")
    assert base_weights_fingerprint(a.hf) == base_weights_fingerprint(a.peft_model) == fa
