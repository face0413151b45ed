"""A selection spec's text is parsed once, where it enters, and travels down as a :class:`Spec` value.

``Spec.parse`` passes a Spec through and hands text to ``tangentft.models.spec._parse`` (cached per text); the tests
replace ``_parse`` by a counter, so every parse of a text is seen, cached or not.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from tangentft.cli.main import app
from tangentft.models import spec as spec_module


@pytest.fixture
def parses(monkeypatch) -> Counter:
    """Spec text -> times it was parsed."""
    seen: Counter = Counter()
    parse = spec_module._parse

    def counted(text: str):
        seen[text] += 1
        return parse(text)

    monkeypatch.setattr(spec_module, "_parse", counted)
    return seen


def test_analyze_parses_each_spec_text_once(tmp_path, data_dir, parses):
    """--params and --candidates are parsed by the CLI; the analysis, its recommendation and the predicted runs
    (two TrainConfigs and their method configs) carry the values. The recommended selection and the group terms
    it is built from are new texts, each parsed at most once."""
    out = tmp_path / "an"
    res = CliRunner().invoke(app, ["analyze", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--params",
                                   "lora(r=4):q,v@0", "--candidates", "o@0,1", "--n", "8", "--n-eval", "8",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert parses["lora(r=4):q,v@0"] == 1 and parses["o@0,1"] == 1
    assert max(parses.values()) == 1, parses
    rep = json.loads((out / "report.json").read_text())
    assert rep["params"] == "lora(r=4):q,v@0" and rep["recommendation"]["params"].startswith("lora(r=4):q,v@0")


def test_train_predict_parses_params_once(tmp_path, data_dir, parses, monkeypatch):
    """``train --predict``: the TrainConfig parses --params as it is built; the prediction (its method config and
    selection) and the run (its method config, LoRA injection and selection) carry the Spec.

    A resumed run reads its config back from config.json, and each read is text entering again: the stored spec is
    parsed once per read of the file (counted apart here), and nowhere else."""
    from tangentft.train import config as config_module

    run = tmp_path / "run"
    args = ["train", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--method", "lora", "--params",
            "lora(r=2):q,v@0", "--n-train", "8", "--n-eval", "4", "--max-steps", "2", "--eval-every", "1",
            "--batch-size", "4", "--predict", "--out", str(run)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert parses == Counter({"lora(r=2):q,v@0": 1})
    assert json.loads((run / "config.json").read_text())["train"]["method_options"]["params"] == "lora(r=2):q,v@0"

    reads = []
    read_json = config_module.read_json

    def counted_read(path, *a, **kw):
        reads.append(path)
        return read_json(path, *a, **kw)

    monkeypatch.setattr(config_module, "read_json", counted_read)
    parses.clear()
    res = CliRunner().invoke(app, ["train", "--resume", str(run), "--max-steps", "3", "--predict"])
    assert res.exit_code == 0, res.output
    assert reads and all(p == run / "config.json" for p in reads)
    assert parses == Counter({"lora(r=2):q,v@0": len(reads)})  # once per read of config.json
