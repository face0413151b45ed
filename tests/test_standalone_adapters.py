"""Adapters that stand alone: the encoder head inside the adapter (PEFT modules_to_save), the public base id,
a model card in every adapter folder, and a clean interpreter that loads them with plain PEFT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import sst2_spec
from tangentft.train.loop import TrainConfig

OPTIONS = {"lora": {"params": "lora(r=4):q,v@all;head"}, "s2ft": {"types": "o:0.5,up:0.25"},
           "lora-no-head": {"params": "lora(r=4):q,v@all"}}  # the seeded head is not trained, yet travels


def _train(tmp_path: Path, data_dir: Path, method: str, model: str = "tiny-bert") -> Path:
    from tangentft.train.run import run_training

    out = tmp_path / f"run_{method}_{model}"
    cfg = TrainConfig(model=model, task=str(data_dir / "sst2"), method=method.removesuffix("-no-head"),
                      method_options=OPTIONS[method],
                      lr=5e-2, max_steps=3, batch_size=8, n_train=16, n_eval=8, probe_size=4, seed=0)
    run_training(cfg, out)
    return out


def _tangentft_outputs(run: Path, model: str, enc: dict) -> torch.Tensor:
    """f(x) of the trained run as tangentft rebuilds it (base + adapter + extra.safetensors head)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from tangentft.models.task_model import build_task_model

    tm = build_task_model(model, sst2_spec(), seed=0)
    pm = PeftModel.from_pretrained(tm.hf, str(run / "adapter"))
    object.__setattr__(tm, "hf", pm.base_model.model)
    extra = run / "extra.safetensors"
    if extra.is_file() and tm.head is not None:
        tm.head.load_state_dict({k.removeprefix("head."): v for k, v in load_file(str(extra)).items()
                                 if k.startswith("head.")})
    with torch.no_grad():
        return tm(enc["input_ids"], enc["attention_mask"])


@pytest.mark.parametrize("method", ["lora", "s2ft", "lora-no-head"])
def test_adapter_carries_head_public_id_and_card(method, tmp_path, data_dir):
    run = _train(tmp_path, data_dir, method)
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-bert"  # the name as given, never an install path
    assert cfg["modules_to_save"] == ["task_head"]
    card = (run / "adapter" / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and 'base.add_module("task_head"' in card
    assert ("import tangentft" in card) == (method == "s2ft")
    assert (run / "extra.safetensors").is_file() == (method != "lora-no-head")  # only a trained head is "extra"
    assert json.loads((run / "config.json").read_text())["base_fingerprint"] in card

    # In-process with PEFT alone (tangentft only supplies the base weights here): the head comes from the adapter.
    from peft import PeftModel

    from tangentft.models.registry import load_model
    from tangentft.models.task_model import build_task_model

    tm = build_task_model("tiny-bert", sst2_spec(), seed=0)
    enc = tm.encode([e for e in __import__("conftest").toy_examples(5)])
    want = _tangentft_outputs(run, "tiny-bert", enc)
    base = load_model("tiny-bert").model
    base.add_module("task_head", torch.nn.Linear(tm.head.in_features, tm.head.out_features))
    pm = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    with torch.no_grad():
        h = pm(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        got = pm.base_model.model.task_head((h * m).sum(1) / m.sum(1))
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(want, tm(enc["input_ids"], enc["attention_mask"]).detach(), atol=1e-4)  # it trained


def test_embedded_models_record_their_hub_id():
    from tangentft.models.registry import PUBLIC_IDS, public_id

    assert public_id("minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert public_id("smollm2-135m") == PUBLIC_IDS["smollm2-135m"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert public_id("./my/folder") == "./my/folder" and public_id("org/model") == "org/model"


def test_public_id_loads_the_embedded_copy(monkeypatch):
    """An adapter's base_model_name_or_path finds its base offline: the hub id maps back to the registry."""
    import dataclasses

    from tangentft.models import registry

    tiny = registry.REGISTRY["tiny-bert"].load
    monkeypatch.setitem(registry.REGISTRY, "minilm", dataclasses.replace(registry.REGISTRY["minilm"], load=tiny))
    loaded = registry.load_model("sentence-transformers/all-MiniLM-L6-v2")
    assert loaded.model.name_or_path == loaded.model.config.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.slow
def test_lora_encoder_adapter_in_a_python_that_never_imports_tangentft(tmp_path, data_dir):
    from safetensors.torch import save_file

    from tangentft.models.registry import load_model
    from tangentft.models.task_model import build_task_model

    run = _train(tmp_path, data_dir, "lora")
    tm = build_task_model("tiny-bert", sst2_spec(), seed=0)
    enc = tm.encode(__import__("conftest").toy_examples(5))
    want = _tangentft_outputs(run, "tiny-bert", enc)
    loaded = load_model("tiny-bert")
    loaded.model.save_pretrained(str(tmp_path / "base"))
    loaded.tokenizer.save_pretrained(str(tmp_path / "base"))
    save_file({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "want": want},
              str(tmp_path / "io.safetensors"))
    code = f"""
        import sys, torch
        from safetensors.torch import load_file
        from transformers import AutoModel
        from peft import PeftModel
        io = load_file("io.safetensors")
        base = AutoModel.from_pretrained("base", attn_implementation="eager")
        base.add_module("task_head", torch.nn.Linear({tm.head.in_features}, {tm.head.out_features}))
        model = PeftModel.from_pretrained(base, {str(run / "adapter")!r}).eval()
        with torch.no_grad():
            h = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"]).last_hidden_state
            m = io["attention_mask"].unsqueeze(-1).to(h.dtype)
            f = model.base_model.model.task_head((h * m).sum(1) / m.sum(1))
        assert not any(k.startswith("tangentft") for k in sys.modules), "tangentft was imported"
        print("maxdiff", float((f - io["want"]).abs().max()))
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.split("maxdiff")[1]) == 0.0
