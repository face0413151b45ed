"""Scaling benchmark: eNTK and a training step on 1 vs 2 CPU ranks, bf16 vs fp32 kernels, memory per rank.

    nice -n 10 python benchmarks/scale.py                      # → benchmarks/results/scale.json
    nice -n 10 python benchmarks/scale.py --phases entk_1,entk_2

Every phase runs in fresh processes started through torch's launcher (``torch.distributed.run``, gloo,
``OMP_NUM_THREADS=1``: one thread per rank) and records the wall time of the measured call only (model
loading excluded; the min over ``--repeats``), each rank's peak RSS, and the machine's load average before
and after, because this machine is shared. Finished phases are kept in the JSON and skipped on a re-run,
so a killed run resumes. Results:

* ``entk_speedup_2_ranks`` = t_eNTK(1 rank) / t_eNTK(2 ranks), SmolLM2, fp32, same kernel (checked:
  ``entk_2_ranks_max_rel_diff``);
* ``step_speedup_2_ranks`` = (2 × examples per second on 2 ranks with per-rank batch b) / (examples per
  second on 1 rank with batch b): the throughput gain of data parallelism through accelerate;
* ``bf16_kernel_rel_diff`` = ‖K_bf16 − K_fp32‖_F / ‖K_fp32‖_F (same model and selection, both accumulated in
  float64) on the first ``--bf16-num-examples`` examples — the kernel of a leading subset is the leading block
  of the fp32 kernel, and bf16 matmuls are emulated (slow) on CPUs without bf16 units —, with the bf16 eNTK
  time and bf16 training step time;
* ``peak_gb_per_rank``: max over ranks of peak RSS in the 2-rank eNTK phase;
* ``memory_check``: :func:`tangentft.analysis.memory.memory_plan` against measured RSS (after loading,
  and the eNTK's peak increment) on SmolLM2 and MiniLM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHASES = ("entk_1", "entk_2", "entk_bf16", "step_1", "step_2", "step_bf16", "memory_smollm2-135m", "memory_minilm")
SPECS = {"smollm2-135m": "lora(r=8):q,v@0,15,29", "minilm": "lora(r=8):q,v@all"}


def _rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# -- one rank ------------------------------------------------------------------------------------------------
def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    from tangentft import distributed, methods  # noqa: F401
    from tangentft.data import load_task, sample_n
    from tangentft.models.selection import select
    from tangentft.models.task_model import build_task_model
    from tangentft.ntk import empirical_ntk

    distributed.init(torch.device("cpu"))
    rank, world = distributed.rank(), distributed.world_size()
    phase = args.worker
    model = args.model if not phase.startswith("memory_") else phase.removeprefix("memory_")
    dtype = "bfloat16" if phase.endswith("bf16") else "float32"
    task = load_task(str(ROOT.parent / "shared" / "data" / "sst2"))
    rss_start = _rss_gb()
    result: dict = {"phase": phase, "model": model, "dtype": dtype, "ranks": world}
    if phase.startswith(("entk", "memory")):
        x = sample_n(task.split("train"), args.n, 0)
        if phase == "entk_bf16":  # bf16 matmuls are emulated on CPUs without AVX512-BF16: a leading block only
            x = x[: args.bf16_n]
        tm = build_task_model(model, task.spec, seed=0, device="cpu", dtype=dtype)
        sel = select(tm, SPECS[model], seed=0)
        rss_loaded = _rss_gb()
        times = []
        for _ in range(args.repeats if phase in ("entk_1", "entk_2") else 1):  # bf16 on CPU is slow: one run
            distributed.barrier("start")
            t = time.perf_counter()
            k = empirical_ntk(tm, sel, x)
            times.append(time.perf_counter() - t)
        result.update(seconds=min(times), all_seconds=times, timings=k.timings, rss_start_gb=rss_start,
                      rss_loaded_gb=rss_loaded, peak_gb=_peak_gb(),
                      max_tokens=max(tm.token_lengths(x)), mean_tokens=float(np.mean(tm.token_lengths(x))))
        if rank == 0 and phase.startswith("entk"):
            np.save(Path(args.tmp) / f"{phase}.npy", k.matrix)
    else:  # a training step through the Trainer (accelerate), LoRA on SmolLM2
        result.update(_train_steps(args, task, dtype, world))
    gathered = [None] * world
    if world > 1:
        import torch.distributed as dist

        dist.all_gather_object(gathered, result)
    else:
        gathered = [result]
    if rank == 0:
        out = dict(result)
        out["per_rank"] = [{"seconds": g.get("seconds"), "peak_gb": g["peak_gb"],
                            "compute_seconds": {k: g.get("timings", {}).get(k) for k in
                                                ("forward_backward_seconds", "contraction_seconds", "communication_seconds")}}
                           for g in gathered]
        out["seconds"] = max(g["seconds"] for g in gathered)
        (Path(args.tmp) / f"{phase}.json").write_text(json.dumps(out))
    distributed.shutdown()


def _train_steps(args, task, dtype: str, world: int) -> dict:
    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    out = Path(args.tmp) / f"run_{dtype}_{world}"
    cfg = TrainConfig(model=args.model, task=str(ROOT.parent / "shared" / "data" / "sst2"), method="lora",
                      method_options={"params": SPECS[args.model]}, batch_size=args.batch, n_train=512,
                      n_eval=8, probe_size=4, max_steps=args.steps + 1, eval_every=10_000, lr=1e-4, seed=0,
                      device="cpu", dtype=dtype)
    stamps: list[float] = []
    run_training(cfg, out, callback=lambda step, total, info: stamps.append(time.perf_counter()))
    per_step = float(np.median(np.diff(stamps))) if len(stamps) > 1 else float("nan")
    return {"seconds": per_step, "step_seconds": per_step, "examples_per_step": args.batch * world,
            "examples_per_second": args.batch * world / per_step, "peak_gb": _peak_gb()}


# -- the driver ----------------------------------------------------------------------------------------------
def run_phase(phase: str, args, tmp: str) -> dict:
    ranks = 2 if phase.endswith("_2") else 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           str(Path(__file__).resolve()), "--worker", phase, "--tmp", tmp, "--model", args.model, "--num-examples", str(args.n),
           "--repeats", str(args.repeats), "--bf16-num-examples", str(args.bf16_n), "--batch", str(args.batch), "--steps", str(args.steps)]
    load_before = os.getloadavg()
    subprocess.run(cmd, env=env, check=True)
    res = json.loads((Path(tmp) / f"{phase}.json").read_text())
    res["load_average_before"], res["load_average_after"] = load_before, os.getloadavg()
    return res


def summarize(results: dict, tmp: str) -> dict:
    ph = results["phases"]
    out: dict = {}
    if "entk_1" in ph and "entk_2" in ph:
        out["entk_seconds_1_rank"] = ph["entk_1"]["seconds"]
        out["entk_seconds_2_ranks"] = ph["entk_2"]["seconds"]
        out["entk_speedup_2_ranks"] = ph["entk_1"]["seconds"] / ph["entk_2"]["seconds"]
        out["entk_efficiency_2_ranks"] = out["entk_speedup_2_ranks"] / 2
        out["peak_gb_per_rank"] = max(r["peak_gb"] for r in ph["entk_2"]["per_rank"])
        a, b = Path(tmp) / "entk_1.npy", Path(tmp) / "entk_2.npy"
        if a.exists() and b.exists():
            k1, k2 = np.load(a), np.load(b)
            ph["entk_2"]["max_rel_diff_vs_1_rank"] = float(np.abs(k1 - k2).max() / np.abs(k1).max())
        out["entk_2_ranks_max_rel_diff"] = ph["entk_2"].get("max_rel_diff_vs_1_rank")
    if "entk_1" in ph and "entk_bf16" in ph:
        a, b = Path(tmp) / "entk_1.npy", Path(tmp) / "entk_bf16.npy"
        if a.exists() and b.exists():
            k1, kb = np.load(a), np.load(b)
            k1 = k1[: kb.shape[0], : kb.shape[1]]  # the kernel of a leading subset is the leading block
            ph["entk_bf16"]["rel_diff_vs_fp32"] = float(np.linalg.norm(kb - k1) / np.linalg.norm(k1))
            ph["entk_bf16"]["examples"] = int(kb.shape[0])
        out["bf16_kernel_rel_diff"] = ph["entk_bf16"].get("rel_diff_vs_fp32")
        out["entk_seconds_bf16"] = ph["entk_bf16"]["seconds"]
    if "step_1" in ph and "step_2" in ph:
        out["step_seconds_1_rank"] = ph["step_1"]["step_seconds"]
        out["step_seconds_2_ranks"] = ph["step_2"]["step_seconds"]
        out["step_speedup_2_ranks"] = ph["step_2"]["examples_per_second"] / ph["step_1"]["examples_per_second"]
    if "step_bf16" in ph:
        out["step_seconds_bf16"] = ph["step_bf16"]["step_seconds"]
    checks = {}
    for model in SPECS:
        m = ph.get(f"memory_{model}")
        if not m:
            continue
        from tangentft.analysis.memory import memory_plan

        plan = memory_plan(model, SPECS[model], results["n"], seq_len=m["max_tokens"], dtype="float32")
        predicted_entk = plan.entk_peak_bytes - plan.weights_bytes
        checks[model] = {
            "seq_len": m["max_tokens"], "chunk_size": plan.chunk_size,
            "weights_predicted_gb": plan.weights_bytes / 1e9,
            "weights_measured_gb": m["rss_loaded_gb"] - m["rss_start_gb"],
            "entk_increment_predicted_gb": predicted_entk / 1e9,
            "entk_increment_measured_gb": m["peak_gb"] - m["rss_loaded_gb"],
            "peak_predicted_gb": plan.entk_peak_bytes / 1e9, "peak_measured_gb": m["peak_gb"] - m["rss_start_gb"],
        }
    if checks:
        out["memory_check"] = checks
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--num-examples", dest="n", type=int, default=64, help="examples in each kernel")
    ap.add_argument("--bf16-num-examples", dest="bf16_n", type=int, default=16,
                    help="leading examples in the bf16 kernel (compared with that block of the fp32 kernel)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="per-rank batch of the training step")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps (after one warm-up step)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    from tangentft.io import write_json

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if results.get("n") not in (None, args.n) or results.get("model") not in (None, args.model):
        results = {}
    results.update(model=args.model, n=args.n, params=SPECS[args.model], repeats=args.repeats,
                   threads_per_rank=1, cpus=os.cpu_count(), machine=platform.machine(), python=platform.python_version(),
                   conditions="2-core CPU machine (no AVX512/bf16 units), shared with other jobs: each phase records the load average before and after it; 1 thread per rank")
    results.setdefault("phases", {})
    tmp = str(ROOT / "benchmarks" / "results" / ".scale_tmp")  # kernels between phases; not committed
    Path(tmp).mkdir(parents=True, exist_ok=True)
    for phase in [p for p in args.phases.split(",") if p]:
        if phase not in PHASES:
            raise SystemExit(f"unknown phase {phase}: choose from {', '.join(PHASES)}")
        if phase in results["phases"]:
            continue
        print(f"[scale] {phase} …", flush=True)
        results["phases"][phase] = run_phase(phase, args, tmp)
        results.update(summarize(results, tmp))
        write_json(out, results)
    results.update(summarize(results, tmp))
    write_json(out, results)
    print(json.dumps({k: v for k, v in results.items() if k != "phases"}, indent=1))


if __name__ == "__main__":
    main()
