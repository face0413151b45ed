"""The eNTK engine against the per-example autograd oracle, on the three tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_MODELS, tiny_task_model, toy_examples
from tangentft.cli.main import app
from tangentft.data.types import Example
from tangentft.errors import TangentError
from tangentft.models.selection import ParamSelection, resolve, select
from tangentft.ntk import Kernel, empirical_ntk, empirical_ntk_pair, parse_memory, reference_ntk
from tangentft.ntk.api import check_outputs

TOL = 1e-6


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def assert_matches_oracle(tm, sel, x, x2=None, contractions=("auto",), **kw):
    ref = reference_ntk(tm, sel, x, x2, kind=kw.get("kind", "full"))
    scale = np.abs(ref.matrix).max()  # some blocks are zero up to rounding (BERT's key bias): compare on one scale
    for contraction in contractions:
        k = empirical_ntk(tm, sel, x, x2, contraction=contraction, **kw)
        assert k.matrix.shape == ref.matrix.shape
        assert rel_err(k.matrix, ref.matrix) < TOL, contraction
        assert set(k.blocks) == set(ref.blocks)
        for g in ref.blocks:
            assert np.abs(k.blocks[g] - ref.blocks[g]).max() < TOL * scale, (contraction, g)
    return k


# -- every selection type equals the oracle -----------------------------------------------------------------
SPECS = {
    "tiny-llama": ["q,v@0", "mlp@1", "norm@all", "o@1;k@0"],
    "tiny-bert": ["q,v@0", "attn@1.bias", "norm@1", "head", "mlp@0"],
    "tiny-gpt2": ["q,v@0", "attn@0", "attn@1.bias", "norm@0", "down@1"],
}


@pytest.mark.parametrize("name", TINY_MODELS)
def test_modules_biases_norms_head_match_oracle(name):
    tm = tiny_task_model(name)
    for spec in SPECS[name]:
        assert_matches_oracle(tm, resolve(tm, spec), toy_examples(5), contractions=("gram", "materialize"))


@pytest.mark.parametrize("name", TINY_MODELS)
def test_lora_factors_with_nonzero_B_match_oracle(name):
    tm = tiny_task_model(name)
    sel = select(tm, "lora(r=3):q,v@0,1", init="random", seed=1)
    assert {b.name.split(".lora_")[1][0] for b in sel} == {"A", "B"}
    k = assert_matches_oracle(tm, sel, toy_examples(5))
    assert np.abs(k.matrix).max() > 0
    # The frozen W under the adapter is the plain module selection (its base_layer).
    base = resolve(tm, "q@0")
    assert all(".base_layer." in b.name for b in base)
    assert_matches_oracle(tm, base, toy_examples(4))


def test_lora_at_init_is_the_B_only_kernel():
    tm = tiny_task_model("tiny-llama")
    sel = select(tm, "lora(r=4):q,v@0")
    x = toy_examples(5)
    k_all = empirical_ntk(tm, sel, x)
    k_b = empirical_ntk(tm, ParamSelection([b for b in sel if ".lora_B." in b.name], "B"), x)
    with pytest.warns(UserWarning, match="ill-conditioned"):  # the A-kernel is exactly zero at init
        k_a = empirical_ntk(tm, ParamSelection([b for b in sel if ".lora_A." in b.name], "A"), x)
    assert np.abs(k_a.matrix).max() == 0
    assert rel_err(k_all.matrix, k_b.matrix) < 1e-12


@pytest.mark.parametrize("name", TINY_MODELS)
def test_row_and_column_slices_match_oracle(name):
    tm = tiny_task_model(name)
    base = resolve(tm, "attn@0;up@1")
    blocks = []
    for b in base:
        if b.role in ("q", "k", "v") and b.part == "weight":
            start = b.out_idx[0] if b.out_idx else 0
            blocks.append(b.sliced(out_idx=[start + 1, start + 5, start + 6], group=f"rows.{b.role}"))
        elif b.role == "o" and b.part == "weight":
            blocks.append(b.sliced(in_idx=[0, 3, 7, 8], group="cols.o"))
        elif b.role == "up" and b.part == "weight":
            blocks.append(b.sliced(out_idx=[2, 9], in_idx=[1, 4, 30], group="both.up"))
        elif b.part == "bias":
            blocks.append(b.sliced(out_idx=[0, 2], group="bias"))
    assert_matches_oracle(tm, ParamSelection(blocks, "sliced"), toy_examples(4), contractions=("gram", "materialize"))


def test_gpt2_fused_qkv_are_separate_groups():
    tm = tiny_task_model("tiny-gpt2")
    sel = resolve(tm, "q,k,v@1.weight")
    assert [b.group for b in sel] == ["L1.q", "L1.k", "L1.v"]
    k = assert_matches_oracle(tm, sel, toy_examples(4))
    whole = empirical_ntk(tm, ParamSelection([sel.blocks[0].sliced(out_idx=range(96))], "c_attn"), toy_examples(4))
    assert rel_err(k.matrix, whole.matrix) < TOL


def test_cross_kernel_and_pair_match_oracle():
    tm = tiny_task_model("tiny-bert")
    sel = resolve(tm, "q@0;head")
    x, xe = toy_examples(5, seed=0), toy_examples(3, seed=7)
    assert_matches_oracle(tm, sel, x, xe)
    k_train, k_cross = empirical_ntk_pair(tm, sel, x, xe)
    ref_train, ref_cross = reference_ntk(tm, sel, x), reference_ntk(tm, sel, xe, x)
    assert k_cross.matrix.shape == (3 * 2, 5 * 2)
    assert rel_err(k_train.matrix, ref_train.matrix) < TOL and rel_err(k_cross.matrix, ref_cross.matrix) < TOL
    assert k_cross.sample_ids == [e.uid for e in xe] and k_cross.sample_ids2 == [e.uid for e in x]


# -- structure of the result --------------------------------------------------------------------------------
def test_groups_sum_symmetric_psd_and_traced():
    tm = tiny_task_model("tiny-llama")
    sel = resolve(tm, "attn@all;norm@1").regroup("layer")
    x = toy_examples(6)
    k = empirical_ntk(tm, sel, x)
    assert set(k.blocks) == {"L0", "L1"}
    assert np.allclose(sum(k.blocks.values()), k.matrix, rtol=0, atol=1e-12 * np.abs(k.matrix).max())
    assert np.array_equal(k.matrix, k.matrix.T)
    info = k.check()
    assert info["lambda_min"] > -1e-9 * info["lambda_max"]
    diag = sum(k.matrix[kk::2, kk::2] for kk in range(2))
    assert np.allclose(k.traced().matrix, diag, rtol=1e-12, atol=0)
    t = empirical_ntk(tm, sel, x, kind="traced")
    assert t.matrix.shape == (6, 6) and rel_err(t.matrix, diag) < TOL
    assert rel_err(t.blocks["L1"], k.traced().blocks["L1"]) < TOL


@pytest.mark.parametrize("signgd", [False, True])
def test_tiling_equals_one_tile(signgd):
    """Several tiles (mirrored held chunks, then streamed ones) give the one-tile kernel; for SignGD the tile's
    features turn into their signs before its streamed chunks, after the mirrored ones that need them raw."""
    tm = tiny_task_model("tiny-gpt2")
    sel = resolve(tm, "q,v@0;up@1")
    x, xe = toy_examples(6), toy_examples(3, seed=3)
    one = empirical_ntk_pair(tm, sel, x, xe, chunk_size=64, signgd=signgd)
    calls = []
    tiled = empirical_ntk_pair(tm, sel, x, xe, chunk_size=2, max_memory="40KB", signgd=signgd,
                               progress=lambda done, total: calls.append((done, total)))
    assert one[0].timings["tiles"] == 1 and tiled[0].timings["tiles"] > 2
    passes = tiled[0].timings["passes"]
    assert calls == [(i, passes) for i in range(1, passes + 1)]
    for a, b in zip(one, tiled, strict=True):
        assert rel_err(b.matrix, a.matrix) < TOL


@pytest.mark.parametrize("name", TINY_MODELS)
def test_padding_invariance(name):
    tm = tiny_task_model(name)
    sel = resolve(tm, "v@0;o@1")
    short = Example("good film", 1, None, "s")
    long = Example("a long and boring plot with a weak story and dull actors in every scene", 0, None, "l")
    alone = empirical_ntk(tm, sel, [short, long], chunk_size=1)  # each example in its own unpadded batch
    padded = empirical_ntk(tm, sel, [short, long], chunk_size=2)  # short is padded to long's length
    assert rel_err(padded.matrix, alone.matrix) < TOL


def test_save_load_round_trip(tmp_path):
    tm = tiny_task_model("tiny-bert")
    k = empirical_ntk(tm, resolve(tm, "head;v@1").regroup("role"), toy_examples(4))
    k.save(tmp_path / "k")
    back = Kernel.load(tmp_path / "k")
    assert np.array_equal(back.matrix, k.matrix) and back.matrix.dtype == np.float64
    assert list(back.blocks) == list(k.blocks) and all(np.array_equal(back.blocks[g], k.blocks[g]) for g in k.blocks)
    for f in ("K", "kind", "sample_ids", "sample_ids2", "selection", "state_fingerprint", "data_fingerprint"):
        assert getattr(back, f) == getattr(k, f), f
    assert ParamSelection.from_json(back.selection).blocks == ParamSelection.from_json(k.selection).blocks


def test_group_specs_and_errors():
    tm = tiny_task_model("tiny-llama")
    sel = resolve(tm, "q,v@0,1;norm@0").regroup("q@0;v;norm", tm.structure)
    assert sel.blocks == select(tm, "q,v@0,1;norm@0", groups="q@0;v;norm").blocks
    assert {b.group for b in sel} == {"q@0", "v", "norm", "other"}
    with pytest.raises(TangentError, match="covers none"):
        select(tm, "q@0", groups="q@0;up@1")
    with pytest.raises(TangentError, match="groups 'banana'"):
        select(tm, "q@0", groups="banana")
    with pytest.raises(TangentError, match="embedding"):
        empirical_ntk(tm, resolve(tm, "embed"), toy_examples(2))
    with pytest.raises(TangentError, match="kind"):
        empirical_ntk(tm, resolve(tm, "q@0"), toy_examples(2), kind="diag")
    with pytest.raises(TangentError, match="memory"):
        parse_memory("lots")
    assert parse_memory("2GB") == 2_000_000_000 and parse_memory("1.5GiB") == 3 * 2**29


# -- CLI ------------------------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_ntk_happy_path(data_dir, tmp_path):
    out = tmp_path / "k"
    res = runner.invoke(app, ["ntk", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--params",
                              "lora(r=2):q,v@0;norm@1", "--n", "6", "--groups", "layer", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    k = Kernel.load(out)
    assert k.matrix.shape == (12, 12) and set(k.blocks) == {"L0", "L1"}
    assert summary["lambda_max"] == pytest.approx(np.linalg.eigvalsh(k.matrix)[-1])
    assert summary["trace"] == pytest.approx(np.trace(k.matrix)) and summary["peak_rss_gb"] > 0


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--params", "q@7", "--n", "4"], "layer 7"),
        (["--params", "attn@0.bias", "--n", "4"], "matches no parameter"),
        (["--params", "q@0", "--n", "100000"], "larger than"),
        (["--params", "q@0", "--n", "4", "--kind", "diag"], "kind"),
    ],
)
def test_cli_ntk_errors(data_dir, tmp_path, args, msg):
    res = runner.invoke(app, ["ntk", "--model", "tiny-llama", "--task", str(data_dir / "sst2"),
                              "--out", str(tmp_path / "k"), *args])
    assert res.exit_code == 2, res.output
    assert msg in res.output and "Traceback" not in res.output


def test_cli_ntk_K_mismatch(data_dir, tmp_path):
    res = runner.invoke(app, ["ntk", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--params", "q@0",
                              "--n", "3", "--label-words", " bad, ok, good", "--out", str(tmp_path / "k")])
    assert res.exit_code == 2, res.output
    assert "3 label words" in res.output and "2 classes" in res.output and "Traceback" not in res.output


def test_labels_outside_K_are_refused():
    tm = tiny_task_model("tiny-llama")
    with pytest.raises(TangentError, match="K=2"):
        check_outputs(tm, [Example("good", 0, None, "a"), Example("odd", 2, None, "b")])


# -- the SignGD kernel ⟨∇f(x), sign ∇f(x')⟩ against the oracle -------------------------------------------------
@pytest.mark.parametrize("name,spec", [("tiny-llama", "q,v@0;norm@1"), ("tiny-bert", "q@1;attn@0.bias;head"),
                                       ("tiny-llama", "lora(r=3):q,v@0")])
def test_signgd_kernel_matches_oracle(name, spec):
    tm = tiny_task_model(name)
    sel = select(tm, spec, init="random", seed=2) if "lora" in spec else resolve(tm, spec)
    x, x2 = toy_examples(6), toy_examples(4, seed=3)
    for a, b in ((x, None), (x, x2)):
        ref = reference_ntk(tm, sel, a, b, signgd=True)
        k = empirical_ntk(tm, sel, a, b, signgd=True, chunk_size=4)  # several chunks: mirrored tiles both ways
        assert k.signgd and rel_err(k.matrix, ref.matrix) < TOL
        for g in ref.blocks:
            assert np.abs(k.blocks[g] - ref.blocks[g]).max() < TOL * np.abs(ref.matrix).max()
    assert rel_err(k.matrix, ref.matrix) < TOL
    sym = empirical_ntk(tm, sel, x, signgd=True)
    assert np.abs(sym.matrix - sym.matrix.T).max() > 1e-6 * np.abs(sym.matrix).max()  # genuinely asymmetric
    kt, kc = empirical_ntk_pair(tm, sel, x, x2, signgd=True)
    assert rel_err(kt.matrix, reference_ntk(tm, sel, x, signgd=True).matrix) < TOL
    assert rel_err(kc.matrix, reference_ntk(tm, sel, x2, x, signgd=True).matrix) < TOL
    traced = empirical_ntk(tm, sel, x, x2, signgd=True, kind="traced")
    assert rel_err(traced.matrix, ref.traced().matrix) < TOL
