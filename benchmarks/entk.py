"""Benchmark the eNTK engine against its own limit and against the naive per-example Jacobian loop.

    python benchmarks/entk.py --model smollm2-135m --n 128 --out entk_smollm2.json
    python benchmarks/entk.py --model minilm --n 128 --out entk_minilm.json

Selection: LoRA r=8 on q,v of layers {0, 15, 29} (SmolLM2) or of all layers (MiniLM), SST-2 train prompts,
K = 2. Writes JSON with:

* ``entk_seconds``: one ``empirical_ntk`` call (planning, passes, contraction, checks);
* timings are wall seconds, the min over ``--repeats`` interleaved limit/entk runs (and process CPU
  seconds alongside), because other jobs on a shared machine only ever add time;
* ``limit_seconds``: the same chunks' one batched forward + K batched backward with the same hooks and
  TaskModel outputs, and no kernel work — what the engine cannot go below;
* ``naive_seconds``: what a user writes first: per example, the HF model's full logits (every position,
  whole vocabulary; for the encoder, the same TaskModel forward, since it has no LM head), K autograd calls
  for the trainable parameters, rows stacked into J, then J Jᵀ. Measured on ``naive_n`` examples (min
  of ``--naive-repeats``) and scaled linearly in n (stated in ``naive_scaling``);
* ``max_rel_err``: max |K_entk − K_naive| / max |K_naive| on the naive subset;
* ``peak_rss_gb``: peak resident memory of this process.

Ratios are measured within one run; a shared machine makes absolute times noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tangentft.data import load_task, sample_n  # noqa: E402
from tangentft.device import accumulation_device  # noqa: E402
from tangentft.io import write_json  # noqa: E402
from tangentft.models.selection import select  # noqa: E402
from tangentft.models.task_model import build_task_model  # noqa: E402
from tangentft.ntk import empirical_ntk  # noqa: E402
from tangentft.ntk.capture import capture, capturing  # noqa: E402
from tangentft.ntk.contraction import parse_memory  # noqa: E402
from tangentft.ntk.engine import make_plan  # noqa: E402

# What the engine cannot go below, stated in the JSON next to the ratio against it.
LIMIT = ("the same chunks (length-sorted, same sizes) run through encode + one batched forward + K batched "
         "backward passes with the engine's hooks on and the captured factors cast and masked, i.e. "
         "ntk.capture.capture per chunk; no planning, features, contraction, fingerprint or check")
SPECS = {"smollm2-135m": "lora(r=8):q,v@0,15,29", "minilm": "lora(r=8):q,v@all", "tiny-llama": "lora(r=8):q,v@all"}


def limit_pass(tm, sel, x, *, max_memory: str) -> float:
    """Seconds for the engine's chunks: encode, one forward + K backward each with the hooks on, the captured
    factors cast and masked (``ntk.capture.capture``) — and no feature or kernel work."""
    plan, sites, _ = make_plan(tm, sel, x, (), symmetric=True, traced=False, contraction="auto",
                               budget=parse_memory(max_memory), chunk_size=None)
    device = accumulation_device(tm.device)
    t0 = time.perf_counter()
    with capturing(tm, sites):
        for chunk in plan.held_chunks:
            enc = tm.encode([x[i] for i in chunk.idx])
            capture(sites, lambda: tm(**enc), enc["attention_mask"], device)  # noqa: B023 (called right here)
    return time.perf_counter() - t0


def per_example_jacobian(tm, sel, x, *, full_logits: bool = False) -> torch.Tensor:
    """J (n·K × P, float64): one backward per example and output through the selection's parameters, each block's
    entries picked from its tensor's gradient. ``full_logits``: a causal model's outputs read from the full-vocab
    logits, as a first wrapper computes them (the label-word head is sliced after the LM head)."""
    named = dict(tm.named_parameters())
    params = list(dict.fromkeys(named[b.name] for b in sel.blocks))
    pos = {id(p): j for j, p in enumerate(params)}
    flags = [(p, p.requires_grad) for p in tm.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    tm.eval()
    rows = []
    try:
        for ex in x:
            enc = tm.encode([ex])
            out = tm.hf(**enc).logits[0, -1, tm.label_token_ids] if full_logits else tm(**enc)[0]
            for k in range(out.shape[0]):
                grads = torch.autograd.grad(out[k], params, retain_graph=k < out.shape[0] - 1)
                rows.append(torch.cat([b.index(grads[pos[id(named[b.name])]]).reshape(-1) for b in sel.blocks]))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return torch.stack(rows).double().detach()


def naive_kernel(tm, sel, x) -> np.ndarray:
    """J row by row from the plain full-logits wrapper, then J Jᵀ in float64."""
    J = per_example_jacobian(tm, sel, x, full_logits=tm.kind == "causal")
    return (J @ J.T).numpy()


def timed(fn):
    """(result, wall seconds, process CPU seconds) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=sorted(SPECS))
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--naive-n", type=int, default=16, help="examples the naive loop is timed on (scaled to n)")
    ap.add_argument("--naive-repeats", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved limit/entk repeats (min is reported)")
    ap.add_argument("--task", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--max-memory", default="2GB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_task(args.task)
    x = sample_n(data.split("train"), args.n, args.seed)
    tm = build_task_model(args.model, data.spec, seed=args.seed)
    sel = select(tm, SPECS[args.model], seed=args.seed)
    K = tm.num_outputs
    lengths = tm.token_lengths(x)

    # Warm up (first-call allocations, lazy imports) on a few examples so neither timing pays for them.
    limit_pass(tm, sel, x[:4], max_memory=args.max_memory)

    # Interleaved repeats, min of each: other jobs on a shared machine only ever add time.
    limit_runs, entk_runs = [], []
    for _ in range(args.repeats):
        limit_runs.append(timed(lambda: limit_pass(tm, sel, x, max_memory=args.max_memory)))
        entk_runs.append(timed(lambda: empirical_ntk(tm, sel, x, max_memory=args.max_memory)))
    kern = entk_runs[-1][0]
    limit_s, limit_cpu = min(r[1] for r in limit_runs), min(r[2] for r in limit_runs)
    entk_s, entk_cpu = min(r[1] for r in entk_runs), min(r[2] for r in entk_runs)

    m = min(args.naive_n, args.n)
    sub = list(range(m))  # sample_n keeps the data's order, so the first m are a fixed random subset
    naive_runs = [timed(lambda: naive_kernel(tm, sel, [x[i] for i in sub])) for _ in range(args.naive_repeats)]
    naive_k = naive_runs[0][0]
    naive_sub_s = min(r[1] for r in naive_runs)
    naive_sub_cpu = min(r[2] for r in naive_runs)
    rows = (np.array(sub)[:, None] * K + np.arange(K)).ravel()
    entk_sub = kern.matrix[np.ix_(rows, rows)]
    max_rel_err = float(np.abs(entk_sub - naive_k).max() / np.abs(naive_k).max())
    naive_s, naive_cpu = naive_sub_s * args.n / m, naive_sub_cpu * args.n / m

    result = {
        "model": args.model,
        "params": SPECS[args.model],
        "lora_init": "standard (B = 0)",
        "n": args.n,
        "K": K,
        "num_params": sel.num_params(tm),
        "tokens_mean": float(np.mean(lengths)),
        "tokens_max": int(np.max(lengths)),
        "entk_seconds": entk_s,
        "limit_seconds": limit_s,
        "naive_seconds": naive_s,
        "naive_measured_seconds": naive_sub_s,
        "naive_n": m,
        "naive_scaling": f"measured on the first {m} of the n examples (J rows and J Jᵀ, min of "
        f"{args.naive_repeats} runs), scaled linearly by n/{m}",
        "entk_over_limit": entk_s / limit_s,
        "naive_over_entk": naive_s / entk_s,
        "timing": f"wall seconds, min over {args.repeats} interleaved limit/entk repeats; *_cpu: process CPU seconds",
        "entk_seconds_all": [r[1] for r in entk_runs],
        "limit_seconds_all": [r[1] for r in limit_runs],
        "entk_cpu_seconds": entk_cpu,
        "limit_cpu_seconds": limit_cpu,
        "naive_cpu_seconds": naive_cpu,
        "entk_over_limit_cpu": entk_cpu / limit_cpu,
        "naive_over_entk_cpu": naive_cpu / entk_cpu,
        "max_rel_err": max_rel_err,
        # Within the one entk call: kernel work (features + contraction) over the forward/backward it rides
        # on; unlike entk/limit this ratio is not disturbed by other jobs between two separate timings.
        "kernel_work_over_passes": (kern.timings["features_seconds"] + kern.timings["contraction_seconds"])
        / kern.timings["forward_backward_seconds"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "engine_timings": kern.timings,
        "kernel_check": kern.check(warn=False),
        "limit": LIMIT,
        "targets": {"entk_over_limit_max": 1.1, "naive_over_entk_min": 2.0, "max_rel_err_max": 1e-5},
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
    }
    write_json(args.out, result)
    print(
        f"{args.model}: n={args.n} K={K} params={result['num_params']:,} entk={entk_s:.1f}s limit={limit_s:.1f}s "
        f"(×{entk_s / limit_s:.2f}, cpu ×{entk_cpu / limit_cpu:.2f}) naive≈{naive_s:.1f}s "
        f"(×{naive_s / entk_s:.1f}, cpu ×{naive_cpu / entk_cpu:.1f}) err={max_rel_err:.1e} "
        f"rss={result['peak_rss_gb']:.2f}GB → {args.out}"
    )


if __name__ == "__main__":
    main()
