"""Devices, precision and several processes: bf16 models, float64 kernels, 2 CPU ranks equal to one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import tangentft.methods  # noqa: F401
from conftest import DATA_DIR, sst2_spec, toy_examples
from tangentft.cli.main import app
from tangentft.device import resolve, resolve_device, resolve_dtype
from tangentft.errors import TangentError
from tangentft.models.selection import select
from tangentft.ntk import Kernel, empirical_ntk

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **extra}
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- devices and dtypes --------------------------------------------------------------------------------------
def test_resolve_keywords():
    assert resolve("cpu", "bfloat16").dtype == torch.bfloat16
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(TangentError, match="dtype 'int8'"):
        resolve_dtype("int8")
    with pytest.raises(TangentError, match="device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TangentError, match="no CUDA device"):
            resolve_device("cuda:1")


def test_cli_refuses_missing_device(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = runner.invoke(app, ["ntk", "--model", "tiny-llama", "--task", str(DATA_DIR / "sst2"), "--params", "q@0",
                              "--num-examples", "4", "--device", "cuda", "--out", str(tmp_path / "k")])
    assert res.exit_code == 2 and "no CUDA device" in res.output and "Traceback" not in res.output


def test_bf16_kernel_is_float64_and_close_to_fp32():
    x = toy_examples(10)
    kernels = {}
    for dtype in ("float32", "bfloat16"):
        from tangentft.models.task_model import build_task_model

        tm = build_task_model("tiny-llama", sst2_spec(), seed=0, device="cpu", dtype=dtype)
        assert tm.dtype == getattr(torch, dtype) and next(tm.hf.parameters()).dtype == getattr(torch, dtype)
        sel = select(tm, "q,v@all;norm@1", groups="layer")
        kernels[dtype] = empirical_ntk(tm, sel, x)
    k32, k16 = kernels["float32"], kernels["bfloat16"]
    assert k16.matrix.dtype == np.float64 and k16.model_dtype == "bfloat16" and k16.accumulation_dtype == "float64"
    assert k32.model_dtype == "float32"
    info = k16.check(warn=False)
    assert info["symmetry_rel_err"] == 0.0 and info["lambda_min"] > -1e-6 * info["lambda_max"]
    rel = np.linalg.norm(k16.matrix - k32.matrix) / np.linalg.norm(k32.matrix)
    assert 0 < rel < 0.05  # bf16 rounds the features (8 mantissa bits), float64 adds nothing further


def test_bf16_ntk_cli_records_dtypes(tmp_path, data_dir):
    out = tmp_path / "k"
    res = runner.invoke(app, ["ntk", "--model", "tiny-bert", "--task", str(data_dir / "sst2"), "--params", "q,v@all",
                              "--num-examples", "6", "--device", "cpu", "--dtype", "bfloat16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    import json

    meta = json.loads((out / "kernel.json").read_text())
    assert meta["model_dtype"] == "bfloat16" and meta["accumulation_dtype"] == "float64"
    assert Kernel.load(out).matrix.dtype == np.float64


# -- several processes ---------------------------------------------------------------------------------------
@pytest.mark.slow  # two fresh interpreters (torch import) per run; ~45 s on the shared 2-core machine
def test_two_ranks_equal_one_rank_cli(tmp_path, data_dir):
    """`tangentft ntk --nproc 2` (torch.distributed.run, gloo, 1 thread per rank) == one process, per group."""
    args = ["ntk", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--params", "q,v,o@all",
            "--num-examples", "40", "--groups", "layer", "--device", "cpu"]
    res1 = runner.invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert res1.exit_code == 0, res1.output
    res2 = runner.invoke(app, [*args, "--nproc", "2", "--out", str(tmp_path / "two")], env=_env())
    assert res2.exit_code == 0, res2.output
    one, two = Kernel.load(tmp_path / "one"), Kernel.load(tmp_path / "two")
    assert two.timings["ranks"] == 2 and one.timings["ranks"] == 1
    scale = np.abs(one.matrix).max()
    assert np.abs(one.matrix - two.matrix).max() <= 1e-10 * scale
    assert set(one.blocks) == set(two.blocks) == {"L0", "L1"}
    for g in one.blocks:
        assert np.abs(one.blocks[g] - two.blocks[g]).max() <= 1e-10 * scale


def _start_ranks(mode: str, out: Path, world: int = 2):
    if world == 1:
        return [subprocess.Popen([sys.executable, str(ROOT / "tests" / "dist_worker.py"), mode, str(out)], env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    port = _free_port()
    procs = []
    for r in range(world):
        env = _env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "dist_worker.py"), mode, str(out)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.slow
def test_two_ranks_pair_kernel_equals_one(tmp_path):
    """The train×train and eval×train kernels (analyze's pass) from 2 ranks equal the single-process ones."""
    procs = _start_ranks("pair", tmp_path)
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    from conftest import tiny_task_model as tiny
    from tangentft.ntk import empirical_ntk_pair

    tm = tiny("tiny-llama", sst2_spec())
    sel = select(tm, "q,v,o@all", groups="layer")
    k, kc = empirical_ntk_pair(tm, sel, toy_examples(40, seed=1), toy_examples(20, seed=2), chunk_size=6)
    for ref, name in ((k, "train"), (kc, "cross")):
        got = Kernel.load(tmp_path / name)
        scale = np.abs(ref.matrix).max()
        assert np.abs(ref.matrix - got.matrix).max() <= 1e-10 * scale
        for g in ref.blocks:
            assert np.abs(ref.blocks[g] - got.blocks[g]).max() <= 1e-10 * scale


@pytest.mark.slow
def test_dead_rank_stops_the_others(tmp_path):
    """Rank 1 dies after joining: rank 0 exits with one clear line (no hang, no traceback)."""
    t = time.perf_counter()
    procs = _start_ranks("die", tmp_path)
    outs = [p.communicate(timeout=120) for p in procs]
    assert procs[1].returncode == 1
    assert procs[0].returncode == 2, outs[0]
    err = outs[0][1]
    assert "another rank died or stopped answering" in err and "Traceback" not in err
    assert time.perf_counter() - t < 110  # imports dominate on a loaded machine; a hang would be the 30 s timeout x N


def test_unambiguous_names_for_torchrun():
    """torchrun's argparse prefix-matches options after the module: ours must not collide (--n did)."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    a = parser.parse_args(["--nproc-per-node", "2", "-m", "tangentft", "ntk", "--num-examples", "8", "--model", "m"])
    assert a.training_script_args[:3] == ["ntk", "--num-examples", "8"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--nproc-per-node", "2", "-m", "tangentft", "ntk", "--n", "8"])


def test_old_spelling_still_works(tmp_path, data_dir):
    res = runner.invoke(app, ["ntk", "--model", "tiny-bert", "--task", str(data_dir / "sst2"), "--params", "q@0",
                              "--n", "4", "--out", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output


# -- training through accelerate -----------------------------------------------------------------------------
def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _run(mode: str, out: Path, world: int) -> None:
    procs = _start_ranks(mode, out, world)
    outs = [p.communicate(timeout=600) for p in procs]
    if mode.startswith("kill"):
        assert all(p.returncode == 137 for p in procs), outs
    else:
        assert all(p.returncode == 0 for p in procs), outs


@pytest.mark.slow
@pytest.mark.usefixtures("data_dir")  # the ranks train on the shared sst2 folder: skip where it is missing
def test_two_ranks_batch_b_match_one_rank_batch_2b_and_resume_exactly(tmp_path):
    """2 ranks × batch 2 == 1 rank × batch 4 (same order, same global batch); a 2-rank run killed after step 3
    and resumed from its step-2 checkpoint ends with the weights of the uninterrupted 2-rank run."""
    _run("train:4", tmp_path / "one", 1)
    _run("train:2", tmp_path / "two", 2)
    one, two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert set(one) == set(two)
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6), k
    assert any(one[k].abs().max() > 0 for k in one if "lora_B" in k)
    rows1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2] == [0, 2, 4, 6]  # written once, by rank 0
    for a, b in zip(rows1[1:], rows2[1:], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["theta_dist"] == pytest.approx(b["theta_dist"], rel=1e-4)
    _run("kill:2:3", tmp_path / "killed", 2)
    from tangentft.train.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "killed").state.step == 2
    _run("resume:2", tmp_path / "killed", 2)
    resumed = _adapter(tmp_path / "killed")
    assert all(torch.equal(resumed[k], two[k]) for k in two)


def _s2ft_trained(tmp_path, data_dir, **kw) -> dict:
    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    base = dict(model="tiny-llama", task=str(data_dir / "sst2"), method="s2ft",
                method_options={"types": "o:0.5,down:0.25", "strategy": "R"}, n_train=16, max_steps=3, n_eval=4,
                lr=1e-2, probe_size=2, batch_size=4, device="cpu", warmup_ratio=0.0, eval_every=3)
    out = tmp_path / "_".join(f"{k}{v}" for k, v in kw.items())
    run_training(TrainConfig(**{**base, **kw}), out)
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_s2ft_partial_backprop_under_grad_accum_and_checkpointing(tmp_path, data_dir, monkeypatch):
    """S2FT's partial backprop gives the same update with 2 micro-batches of 2 as with one of 4, and with
    every layer's activations recomputed (gradient checkpointing) as without."""
    import torch.utils.checkpoint as ckpt_mod

    ref = _s2ft_trained(tmp_path, data_dir)
    accum = _s2ft_trained(tmp_path, data_dir, batch_size=2, grad_accum=2)
    calls = []
    real = ckpt_mod.checkpoint
    monkeypatch.setattr(ckpt_mod, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ckpt = _s2ft_trained(tmp_path, data_dir, grad_checkpointing=True)
    assert len(calls) == 3 * 2  # 3 steps × 2 layers, training steps only (not evaluation or the probe)
    deltas = [k for k in ref if "s2ft_delta" in k]
    assert deltas and any(ref[k].abs().max() > 0 for k in deltas)
    for k in ref:
        assert torch.allclose(accum[k], ref[k], rtol=1e-4, atol=1e-6), k
        assert torch.allclose(ckpt[k], ref[k], rtol=1e-5, atol=1e-7), k


def test_bf16_training_keeps_fp32_master_weights(tmp_path, data_dir):
    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    cfg = TrainConfig(model="tiny-llama", task=str(data_dir / "sst2"), method="full", method_options={"params": "q,v@all"},
                      n_train=8, max_steps=2, n_eval=4, probe_size=2, batch_size=4, lr=1e-2, reg="selective", lam=5.0,
                      device="cpu", dtype="bfloat16")
    summary = run_training(cfg, tmp_path / "bf16")
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "bf16" / "trained.safetensors"))
    assert trained and all(v.dtype == torch.float32 for v in trained.values())
    rows = [json.loads(x) for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert summary["dtype"] == "bfloat16" and rows[-1]["theta_dist"] > 0 and np.isfinite(rows[-1]["eval_loss"])


def test_grad_checkpointing_refused_for_functional_methods(tmp_path, data_dir):
    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    cfg = TrainConfig(model="tiny-llama", task=str(data_dir / "sst2"), method="linearized",
                      method_options={"params": "q@0"}, n_train=4, max_steps=1, n_eval=0, probe_size=2,
                      device="cpu", grad_checkpointing=True)
    with pytest.raises(TangentError, match="grad_checkpointing does not apply"):
        run_training(cfg, tmp_path / "lin")


def _readme_launchers(tmp_path: Path) -> list[str]:
    """The README's launcher block, on tiny models (SmolLM2's layers 0,15,29 become tiny-llama's 0,1), with
    paths into ``tmp_path`` — otherwise as written."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- launchers")[1].split("<!-- /launchers -->")[0]
    body = block.split("```sh\n")[1].split("```")[0].replace("\\\n", " ")
    venv = Path(sys.executable).parent
    lines = []
    for line in body.splitlines():
        line = " ".join(line.split())
        if not line or line.startswith("T="):
            continue
        line = (line.replace(".venv/bin/", f"{venv}/").replace("$T ", f"{venv}/tangentft ")
                .replace("--model minilm", "--model tiny-bert").replace("--model smollm2-135m", "--model tiny-llama")
                .replace("@0,15,29", "@0,1")  # the tiny models have 2 layers
                .replace("../shared/data", str(DATA_DIR)).replace("runs/", f"{tmp_path}/"))
        lines.append(line)
    return lines


@pytest.mark.slow
def test_readme_launcher_commands_as_written(tmp_path, data_dir):
    """nproc, torchrun, accelerate launch and bf16 training: the README's lines run (tiny models), the 2-rank
    kernels equal the single-process kernel, the DDP run trained on 2 ranks."""
    lines = _readme_launchers(tmp_path)
    assert len(lines) == 4 and "torchrun" in lines[1] and "accelerate launch" in lines[2]
    for line in lines:
        res = subprocess.run(line, shell=True, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (line, res.stderr[-3000:])
    res = runner.invoke(app, ["ntk", "--model", "tiny-bert", "--task", str(data_dir / "sst2"), "--params", "q,v@all",
                              "--num-examples", "64", "--out", str(tmp_path / "ntk1")])
    assert res.exit_code == 0, res.output
    one = Kernel.load(tmp_path / "ntk1")
    for name in ("ntk2", "ntk2_torchrun"):
        k = Kernel.load(tmp_path / name)
        assert k.timings["ranks"] == 2
        assert np.abs(k.matrix - one.matrix).max() <= 1e-10 * np.abs(one.matrix).max()
    assert json.loads((tmp_path / "lora_ddp" / "summary.json").read_text())["ranks"] == 2
    assert json.loads((tmp_path / "lora_bf16" / "summary.json").read_text())["dtype"] == "bfloat16"


# -- memory plan ---------------------------------------------------------------------------------------------
def test_plan_from_a_config_alone(tmp_path):
    """`tangentft plan` reads a config.json only (no weights anywhere) and prints the table; the figures follow
    the engine's rules."""
    from tangentft.analysis.memory import memory_plan
    from tangentft.models.tiny import _tokenizer, tiny_config

    cfg = tiny_config("tiny-llama", len(_tokenizer())).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    p = memory_plan(str(tmp_path / "config.json"), "lora(r=4):q,v@all", 32, seq_len=16, dtype="bfloat16", ranks=4)
    # q: A 4×32 + B 32×4, v: A 4×32 + B 16×4 (2 KV heads × 8), in 2 layers
    assert p.selected_params == 2 * (256 + 192)
    # the base in bf16, PEFT's LoRA factors in fp32
    assert p.weights_bytes == 2 * (p.model_params - p.selected_params) + 4 * p.selected_params
    assert p.kernel_bytes == 8 * (32 * 2) ** 2 * (1 + 4)  # matrix + the groups L0.q, L0.v, L1.q, L1.v, float64
    assert p.train_state_sharded_bytes == pytest.approx(p.train_state_ddp_bytes / 4)
    assert p.chunk_size == 8 and p.chunks == 4
    res = runner.invoke(app, ["plan", "--model", str(tmp_path / "config.json"), "--params", "q,v@all",
                              "--num-examples", "16", "--json", str(tmp_path / "plan.json")])
    assert res.exit_code == 0, res.output
    assert "eNTK peak per rank" in res.output and json.loads((tmp_path / "plan.json").read_text())["n"] == 16
    bad = runner.invoke(app, ["plan", "--model", str(tmp_path / "nope.json"), "--params", "q@0", "--num-examples", "4"])
    assert bad.exit_code == 2 and "no readable config" in bad.output
