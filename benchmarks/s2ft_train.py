"""Training-step cost of S2FT vs its floor, full fine-tuning and PEFT LoRA (S2FT paper §5: efficiency).

    python benchmarks/s2ft_train.py --model smollm2-135m --batch 4 --tokens 512 --out FILE.json

``--batch`` × ``--tokens`` random tokens through the TaskModel (f(x) = label-word logits, cross-entropy),
AdamW. Methods, each in its own subprocess so peak RSS is per method:

* ``floor`` — the same model with NO trainable weight, its embedding output requiring grad, so backward runs
  through every layer for input gradients only; plus, timed in the same process, the weight-gradient
  matmuls of S2FT's slices (gᵀ·x_slice per adapted module). The least any method that trains these slices
  in layer 0 can spend. Its memory adds what such a method must hold beyond the frozen model: the slices'
  inputs for one step, their gradients and AdamW's two moments (``floor_slice_gb``).
* ``s2ft`` — S2FT with the partial-backprop autograd Function; ``s2ft_nopb`` — the same layers with plain
  autograd (the slice x[..., :n] is a view keeping the whole input alive).
* ``lora`` — PEFT LoRA on the same module types, rank matched to S2FT's trainable count.
* ``full`` — every parameter.

Keys per method: ``<m>_step_s`` (median CPU time of a step after warm-up — the process's CPU seconds: with
one torch thread on an oversubscribed machine, wall time mostly measures waiting for a core — the best of
``--rounds`` runs made in alternating order; ``<m>_step_wall_s`` the same in wall-clock seconds),
``<m>_peak_gb`` (peak RSS), ``<m>_saved_gb`` (activations autograd saves for backward in one step, counted exactly with saved-tensor hooks — RSS peaks on a shared machine move by ±0.2 GB),
``<m>_saved_by_op`` (the same, split by the backward node that saves each storage: which saved tensors grow
with the sequence length, and whether they are S2FT's), with ``--profile`` ``<m>_profile`` (torch.profiler,
self CPU seconds per op for one step). Ratios ``ratio_{step,peak}_<m>_over_floor`` and S2FT's over LoRA and
full; targets: S2FT step ≤ 1.10× floor, ≤ 0.85× LoRA, ≤ 0.6× full; peak ≤ 0.8× LoRA.
Timings on a shared CPU are noisy: compare ratios within one run. Rerunning with the same ``--out`` resumes
from ``<out>.partial.json`` (every finished method run is kept there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("floor", "full", "lora", "s2ft", "s2ft_nopb")
ROOT = Path(__file__).resolve().parents[1]


def time_steps(step, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """CPU and wall seconds of each of ``steps`` calls of ``step`` after ``warmup`` uncounted ones."""
    times, walls = [], []
    for k in range(warmup + steps):
        t0, w0 = time.process_time(), time.perf_counter()
        step()
        if k >= warmup:
            times.append(time.process_time() - t0)
            walls.append(time.perf_counter() - w0)
    return times, walls


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def _plain_autograd(x, weight, bias, delta, transposed, mode, segments):
    """S2FT layer without partial backprop: autograd saves what it likes (the slice view pins x)."""
    import torch.nn.functional as F

    w = weight.t() if transposed else weight
    y = F.linear(x, w, bias)
    if mode == "col":
        return y + F.linear(x[..., : delta.shape[1]], delta)
    parts, off = [], 0
    for start, n in segments:
        pad = (start, y.shape[-1] - start - n)
        parts.append(F.pad(F.linear(x, delta[off : off + n]), pad))
        off += n
    return y + sum(parts)


def _saved_activation_gb(loss_fn, model) -> tuple[float, dict[str, float]]:
    """Bytes autograd keeps for backward in one forward (distinct storages, parameters excluded), in GB, and
    the same split by the backward node saving each storage (first node met walking back from the loss).

    Deterministic, unlike RSS on a busy machine: this is the quantity partial back-propagation reduces.
    """
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    storages: dict[int, int] = {}

    def pack(t):
        # a sparse COO tensor (PEFT's SHiRA delta) has no storage of its own: count its indices and values
        for part in (t._indices(), t._values()) if t.is_sparse else (t,):
            s = part.untyped_storage()
            if s.data_ptr() not in params:
                storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    by_op: dict[str, float] = {}
    seen: set[int] = set()
    stack, visited = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        tensors = []
        if hasattr(node, "saved_tensors") and not type(node).__name__.endswith("Backward0"):
            tensors = [t for t in node.saved_tensors if t is not None]  # a Python autograd.Function
        for attr in dir(node):
            if attr.startswith("_saved_") and attr != "_saved_tensors":
                value = getattr(node, attr)
                tensors += [v for v in (value if isinstance(value, (tuple, list)) else (value,)) if torch.is_tensor(v)]
        for t in tensors:
            ptr = (t._values() if t.is_sparse else t).untyped_storage().data_ptr()
            if ptr in storages and ptr not in seen:
                seen.add(ptr)
                name = node.name().removesuffix("Backward0").removesuffix("Backward")
                by_op[name] = by_op.get(name, 0.0) + storages[ptr] / 1024**3
        stack.extend(f for f, _ in node.next_functions)
    loss.backward()
    by_op["(unattributed)"] = (sum(storages.values()) - sum(storages[p] for p in seen)) / 1024**3
    return sum(storages.values()) / 1024**3, dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def _slice_shapes(smap, types: str) -> list[tuple[tuple[int, int], int]]:
    """Per adapted module: (delta shape, width of the input the weight gradient reads) for S2FT ``types``."""
    from tangentft.methods.s2ft import S2FTConfig
    from tangentft.methods.s2ft.method import parse_ratios
    from tangentft.methods.s2ft.selection import COLUMN_TYPES, unit_counts, unit_width

    out = []
    for role, units in unit_counts(smap, S2FTConfig(ratios=parse_ratios(types))).items():
        n = units * unit_width(smap, role)
        if role in COLUMN_TYPES:
            out += [((smap.out_features(role), n), n)] * smap.num_layers
        else:
            out += [((n, smap.in_features(role)), smap.in_features(role))] * smap.num_layers
    return out


def _time_slice_wgrad(shapes, tokens: int, steps: int) -> float:
    """Median time of one step's slice weight gradients: gᵀ·x over ``tokens`` rows for every adapted module."""
    import torch

    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(tokens, a, generator=gen), torch.randn(tokens, w, generator=gen)) for (a, _), w in shapes]
    times = []
    for _ in range(steps + 1):
        t0 = time.process_time()
        for g, x in data:
            g.t().mm(x)
        times.append(time.process_time() - t0)
    return statistics.median(times[1:])


def _profile_step(step, top: int = 30) -> dict[str, list]:
    """One step under torch.profiler: op -> [self CPU seconds, calls], the ``top`` most expensive."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return {e.key: [round(e.self_cpu_time_total / 1e6, 4), e.count] for e in rows}


def run_one(method: str, args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from tangentft.data.types import TaskSpec
    from tangentft.models.registry import load_model
    from tangentft.models.task_model import build_task_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = TaskSpec("sst2", "classification", "Review: {sentence}\nSentiment:", [" negative", " positive"])
    tm = build_task_model(load_model(args.model, attn_implementation=args.attn), spec, seed=0)
    loaded_gb = _rss_gb()
    if method == "full":
        params = list(tm.parameters())
    elif method == "floor":
        for p in tm.parameters():
            p.requires_grad_(False)
        tm.hf.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_(True))
        params = []
    elif method in ("s2ft", "s2ft_nopb"):
        from tangentft.methods.s2ft import S2FTMethod, S2FTMethodConfig, layer

        if method == "s2ft_nopb":
            layer.S2FTFunction.apply = staticmethod(_plain_autograd)
        S2FTMethod(S2FTMethodConfig(types=args.types)).prepare(tm)
        params = [p for p in tm.parameters() if p.requires_grad]
    else:
        from tangentft.methods.lora import inject_lora

        inject_lora(tm, f"lora:{args.lora_targets}", r=args.lora_r)
        params = [p for p in tm.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0) if params else None
    gen = torch.Generator().manual_seed(0)
    vocab = tm.hf.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=gen)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, tm.num_outputs, (args.batch,), generator=gen)
    tm.train()

    def step():
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tm(ids, mask), labels)
        loss.backward()
        if opt is not None:
            opt.step()

    times, walls = time_steps(step, args.warmup, args.steps)
    peak = _rss_gb()
    saved, saved_by_op = _saved_activation_gb(
        lambda: torch.nn.functional.cross_entropy(tm(ids, mask), labels), tm)
    out = {
        f"{method}_saved_gb": saved,
        f"{method}_saved_by_op": saved_by_op,
        f"{method}_step_s": statistics.median(times),
        f"{method}_step_wall_s": statistics.median(walls),
        f"{method}_peak_gb": peak,
        f"{method}_train_extra_gb": peak - loaded_gb,
        f"{method}_trainable": trainable,
    }
    if method == "floor":
        shapes = _slice_shapes(tm.structure, args.types)
        tokens = args.batch * args.tokens
        wgrad = _time_slice_wgrad(shapes, tokens, args.steps)
        numel = sum(a * b for (a, b), _ in shapes)
        slice_gb = (sum(tokens * w for _, w in shapes) + 3 * numel) * 4 / 1024**3
        out.update({
            "floor_backprop_step_s": out["floor_step_s"],
            "floor_wgrad_s": wgrad,
            "floor_step_s": out["floor_step_s"] + wgrad,
            "floor_step_wall_s": out["floor_step_wall_s"] + wgrad,
            "floor_slice_gb": slice_gb,
            "floor_peak_gb": peak + slice_gb,
            "floor_train_extra_gb": peak - loaded_gb + slice_gb,
            "floor_saved_gb": saved + sum(tokens * w for _, w in shapes) * 4 / 1024**3,
            "floor_trainable": numel,
        })
    if args.profile:
        out[f"{method}_profile"] = _profile_step(step)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128, help="Sequence length")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="Runs per method, in alternating order")
    ap.add_argument("--types", default="o:0.1,down:0.1", help="S2FT module types and ratios")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: matched to S2FT's trainable count)")
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"],
                    help="Attention kernel (eager: what the trainer loads, for forward-mode AD)")
    ap.add_argument("--profile", action="store_true", help="Also profile one step per op (torch.profiler)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on an oversubscribed machine OpenMP workers spin and a "
                    "2-thread step varies 10x between runs")
    ap.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--methods", default="floor,s2ft,lora,full")
    args = ap.parse_args()
    roles = [t.split(":")[0] for t in args.types.split(",")]
    args.lora_targets = ",".join(roles)
    if args.only:
        Path(args.out).write_text(json.dumps(run_one(args.only, args)))
        return
    sys.path.insert(0, str(ROOT / "src"))
    from tangentft.io import write_json

    setup = {"model": args.model, "batch": args.batch, "tokens": args.tokens, "s2ft_types": args.types,
             "attn": args.attn, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
             "note": "CPU, 1 torch thread, nice 10, on a 2-core machine shared with other jobs: timings noisy; "
                     "step_s is CPU time per step, step_wall_s wall time; compare ratios within one run"}
    partial = Path(str(args.out) + ".partial.json")
    done: list[list] = []
    if partial.exists():
        state = json.loads(partial.read_text())
        if state["setup"] == setup:
            done = state["runs"]
            args.lora_r = args.lora_r or state.get("lora_r")
            print(f"resuming: {len(done)} method runs already done", file=sys.stderr)
    methods = args.methods.split(",")
    order = [m for m in ("floor", "s2ft", "s2ft_nopb", "full", "lora") if m in methods]
    plan = [m for k in range(args.rounds) for m in (order if k % 2 == 0 else order[::-1])]
    # rounds alternate the order so a load change on the shared machine does not favour one method
    for i, m in enumerate(plan):
        if i < len(done):
            continue
        if m == "lora" and args.lora_r is None:
            # match LoRA's trainable count to S2FT's: r (d_in + d_out) per adapted module
            s2 = next((r["s2ft_trainable"] for name, r in done if name == "s2ft"), None)
            args.lora_r = max(1, round(s2 / _lora_per_rank(args.model, roles))) if s2 else 16
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            child_out = fh.name
        cmd = [sys.executable, __file__, "--model", args.model, "--out", child_out, "--only", m,
               "--batch", str(args.batch), "--tokens", str(args.tokens), "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--types", args.types, "--threads", str(args.threads),
               "--attn", args.attn] + (["--profile"] if args.profile and i < len(order) else [])
        if m == "lora":
            cmd += ["--lora-r", str(args.lora_r)]
        print(f"[{m}] running …", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        one = json.loads(Path(child_out).read_text())
        os.unlink(child_out)
        done.append([m, one])
        write_json(partial, {"setup": setup, "runs": done, "lora_r": args.lora_r})
        print(f"[{m}] step {one[f'{m}_step_s']:.3f} s, peak {one[f'{m}_peak_gb']:.3f} GB", file=sys.stderr)
    results = dict(setup)
    for m in order:
        results.update(_combine(m, [r for name, r in done if name == m]))
    results["lora_r"] = args.lora_r
    r = results
    for m in ("s2ft", "s2ft_nopb", "lora", "full"):
        if "floor" in methods and m in methods:
            r[f"ratio_step_{m}_over_floor"] = r[f"{m}_step_s"] / r["floor_step_s"]
            r[f"ratio_wall_{m}_over_floor"] = r[f"{m}_step_wall_s"] / r["floor_step_wall_s"]
            r[f"ratio_peak_{m}_over_floor"] = r[f"{m}_peak_gb"] / r["floor_peak_gb"]
            r[f"ratio_saved_{m}_over_floor"] = r[f"{m}_saved_gb"] / r["floor_saved_gb"]
    if {"s2ft", "full", "lora"} <= set(methods):
        r["ratio_step_s2ft_over_full"] = r["s2ft_step_s"] / r["full_step_s"]
        r["ratio_step_s2ft_over_lora"] = r["s2ft_step_s"] / r["lora_step_s"]
        r["ratio_wall_s2ft_over_full"] = r["s2ft_step_wall_s"] / r["full_step_wall_s"]
        r["ratio_wall_s2ft_over_lora"] = r["s2ft_step_wall_s"] / r["lora_step_wall_s"]
        r["ratio_peak_s2ft_over_lora"] = r["s2ft_peak_gb"] / r["lora_peak_gb"]
        r["ratio_extra_s2ft_over_lora"] = r["s2ft_train_extra_gb"] / max(r["lora_train_extra_gb"], 1e-9)
        r["ratio_saved_s2ft_over_lora"] = r["s2ft_saved_gb"] / r["lora_saved_gb"]
        r["targets_met"] = {
            "step_vs_full<=0.6": r["ratio_step_s2ft_over_full"] <= 0.6,
            "step_vs_lora<=0.85": r["ratio_step_s2ft_over_lora"] <= 0.85,
            "peak_vs_lora<=0.8": r["ratio_peak_s2ft_over_lora"] <= 0.8,
        }
        if "floor" in methods:
            r["targets_met"]["step_vs_floor<=1.10"] = r["ratio_step_s2ft_over_floor"] <= 1.10
    write_json(args.out, results)
    partial.unlink()
    print(json.dumps({k: v for k, v in results.items() if not k.endswith(("_profile", "_by_op"))}, indent=2))


def _combine(method: str, runs: list[dict]) -> dict:
    """One method's runs: the fastest round's median step time, the largest peak, every round's median."""
    out = {k: v for k, v in runs[0].items() if k.endswith(("_profile", "_by_op", "_trainable", "_saved_gb", "_slice_gb"))}
    out.update({
        f"{method}_step_s": min(r[f"{method}_step_s"] for r in runs),
        f"{method}_peak_gb": max(r[f"{method}_peak_gb"] for r in runs),
        f"{method}_train_extra_gb": max(r[f"{method}_train_extra_gb"] for r in runs),
        f"{method}_step_s_rounds": [r[f"{method}_step_s"] for r in runs],
        f"{method}_step_wall_s": min(r[f"{method}_step_wall_s"] for r in runs),
    })
    if method == "floor":
        best = min(runs, key=lambda r: r["floor_step_s"])
        out.update({k: best[k] for k in ("floor_backprop_step_s", "floor_wgrad_s")})
    return out


def _lora_per_rank(model: str, roles: list[str]) -> int:
    """Σ over adapted modules of (d_in + d_out): LoRA parameters per unit of rank."""
    from tangentft.models.registry import load_model

    smap = load_model(model).structure
    return smap.num_layers * sum(smap.in_features(r) + smap.out_features(r) for r in roles)


if __name__ == "__main__":
    main()
