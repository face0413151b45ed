"""The parameter-selection spec language and its resolution through the structure map."""

from __future__ import annotations

import pytest

from conftest import TINY_MODELS, tiny_task_model
from tangentft.errors import TangentError
from tangentft.models.selection import ParamSelection, resolve, select
from tangentft.models.spec import LoraOptions, Spec


def test_parse_layers_forms():
    assert Spec.parse("q@0,1").terms[0].layer_indices(4) == (0, 1)
    assert Spec.parse("q@0-2").terms[0].layer_indices(4) == (0, 1, 2)
    assert Spec.parse("q@::2").terms[0].layer_indices(5) == (0, 2, 4)  # a slice waits for the model's depth
    assert Spec.parse("q@::2").terms[0].layer_indices(3) == (0, 2)
    assert Spec.parse("q@all").terms[0].layer_indices(4) == (0, 1, 2, 3)
    assert Spec.parse("attn@1").terms[0].targets == ("attn",)
    t = Spec.parse("lora(r=4,alpha=8):q,v@1.B").terms[0]
    assert t.lora == LoraOptions(4, 8) and t.part == "B"


def test_spec_is_a_value_rendered_back_to_its_text():
    text = "lora(r=4):q,v@0,2;o@::2;head"
    spec = Spec.parse(text)
    assert str(spec) == text and Spec.parse(spec) is spec and Spec.parse(text) == spec
    assert Spec.parse("lora:q@0").lora == LoraOptions() and LoraOptions().scale_alpha == 16.0  # r = 8, alpha = 2r
    # a LoRA run spells its options out; head/norm/embed stay fully trained
    assert str(Spec.parse("q,v@all;norm@0;head").as_lora(r=4)) == "lora(r=4,alpha=8):q,v@all;norm@0;head"
    assert str(Spec.parse("lora(r=2,alpha=3):q@1").as_lora()) == "lora(r=2,alpha=3):q@1"
    # candidates trained like the base: a LoRA adapter of the base's options for each plain projection term
    base = Spec.parse("lora(r=4):q,v@0")
    assert str(base.trained_like(Spec.parse("o@1;norm@1;head"))) == "lora(r=4):o@1;norm@1;head"
    assert str(Spec.parse("q@0").trained_like(Spec.parse("o@1"))) == "o@1"
    assert [str(Spec.of_group(g)) for g in ("L5.o", "L3.attn_norm", "head")] == ["o@5", "norm@3", "head"]


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("", "empty parameter selection"),
        ("qq@0", "unknown module type 'qq'"),
        ("q@x", "bad layer list 'x'"),
        ("lora(r=0):q", "LoRA rank must be positive"),
        ("lora:head", "can only adapt projections"),
        ("lora(r=2.5):q", "whole number"),
        ("lora(alpha=0):q", "alpha must be positive"),
        ("q@5", "layer 5 in '@5' does not exist"),
        ("q@4::", "selects no layer"),
    ],
)
def test_bad_specs(spec, msg):
    with pytest.raises(TangentError, match=msg):
        Spec.parse(spec).check_layers(2)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_resolve_counts_match_parameters(name):
    tm = tiny_task_model(name)
    sel = resolve(tm, "attn@all;mlp@1")
    smap = tm.structure
    expected = 0
    for layer in range(2):
        roles = ("q", "k", "v", "o") + (smap.roles[4:] if layer == 1 else ())
        for role in roles:
            expected += smap.out_features(role) * smap.in_features(role)
            mod = smap.module(tm.hf, layer, role)
            if getattr(mod, "bias", None) is not None:
                ref = smap.ref(layer, role)
                expected += smap.out_features(role) if ref.out_range else mod.bias.numel()
    assert sel.num_params(tm) == expected


def test_layer_out_of_range_and_no_head_on_causal():
    tm = tiny_task_model("tiny-llama")
    with pytest.raises(TangentError, match="layer 7"):
        resolve(tm, "q@7")
    with pytest.raises(TangentError, match="only encoder task models"):
        resolve(tm, "head")
    with pytest.raises(TangentError, match="matches no parameter"):
        resolve(tm, "q@0.bias")  # llama projections have no bias


def test_lora_needs_injection_then_selects_factors():
    tm = tiny_task_model("tiny-llama")
    with pytest.raises(TangentError, match="no LoRA adapter"):
        resolve(tm, "lora:q@0")
    sel = select(tm, "lora(r=2):q,v@0")
    assert sorted(b.name.split(".")[-3] for b in sel) == ["lora_A", "lora_A", "lora_B", "lora_B"]
    # q: A (2x32) + B (32x2); v (2 KV heads x 8): A (2x32) + B (16x2)
    assert sel.num_params(tm) == (2 * 32 + 32 * 2) + (2 * 32 + 16 * 2)


def test_selection_json_roundtrip_and_regroup():
    tm = tiny_task_model("tiny-bert")
    sel = resolve(tm, "q,o@0,1;head").regroup("layer")
    again = ParamSelection.from_json(sel.to_json())
    assert again.blocks == sel.blocks
    assert list(sel.groups) == ["L0", "L1", "head"]
    sliced = sel.blocks[0].sliced(out_idx=[0, 3])
    assert sliced.numel(dict(tm.named_parameters())[sliced.name]) == 2 * 32
