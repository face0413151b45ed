"""Training-step cost of S2FT vs full fine-tuning and PEFT LoRA (S2FT paper §5: efficiency).

    python benchmarks/s2ft_train.py --model smollm2-135m --out FILE.json

Batch 4 × 128 tokens through the TaskModel (f(x) = label-word logits, cross-entropy), AdamW. For each
method — ``full`` (every parameter), ``lora`` (PEFT LoRA on the same modules S2FT adapts, rank chosen so the
trainable count ≈ S2FT's), ``s2ft`` (S2FT with the partial-backprop autograd Function) and ``s2ft_nopb`` (the
same S2FT layers with plain autograd, whose slice x[..., :n] is a view keeping the whole input alive) —
each in its own subprocess so peak RSS is per method: median step time after warm-up (the best of
``--rounds`` runs made in alternating order), peak RSS, and the RSS growth over the loaded model. Keys ``<method>_step_s``, ``<method>_peak_gb``, ``<method>_trainable``
(+ ``<method>_train_extra_gb``, and ``<method>_saved_gb``: the activations autograd saves for backward in one
step, counted exactly with saved-tensor hooks — RSS peaks on a shared machine move by ±0.2 GB); targets: s2ft step ≤ 0.7× full and ≤ 0.85× lora, s2ft peak ≤ 0.8× lora.
Timings on a shared CPU are noisy: compare ratios within one run.
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

METHODS = ("full", "lora", "s2ft", "s2ft_nopb")


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


def _saved_activation_gb(loss_fn) -> float:
    """Bytes autograd keeps for backward in one forward (distinct storages, parameters excluded), in GB.

    Deterministic, unlike RSS on a busy machine: this is the quantity partial back-propagation reduces.
    """
    import torch

    storages: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    return sum(storages.values()) / 1024**3


def run_one(method: str, args) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tangentft.data.types import TaskSpec
    from tangentft.models.task_model import build_task_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = TaskSpec("sst2", "classification", "Review: {sentence}\nSentiment:", [" negative", " positive"])
    tm = build_task_model(args.model, spec, seed=0)
    loaded_gb = _rss_gb()
    if method == "full":
        params = list(tm.parameters())
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
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    vocab = tm.hf.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=gen)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, tm.num_outputs, (args.batch,), generator=gen)
    tm.train()
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tm(ids, mask), labels)
        loss.backward()
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = _rss_gb()
    saved = _saved_activation_gb(lambda: torch.nn.functional.cross_entropy(tm(ids, mask), labels))
    return {
        f"{method}_saved_gb": saved,
        f"{method}_step_s": statistics.median(times),
        f"{method}_peak_gb": peak,
        f"{method}_train_extra_gb": peak - loaded_gb,
        f"{method}_trainable": trainable,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="Runs per method, in alternating order")
    ap.add_argument("--types", default="o:0.1,down:0.1", help="S2FT module types and ratios")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: matched to S2FT's trainable count)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on an oversubscribed machine OpenMP workers spin and a "
                    "2-thread step varies 10x between runs")
    ap.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    roles = [t.split(":")[0] for t in args.types.split(",")]
    args.lora_targets = ",".join(roles)
    if args.only:
        Path(args.out).write_text(json.dumps(run_one(args.only, args)))
        return
    results: dict = {"model": args.model, "batch": args.batch, "tokens": args.tokens, "s2ft_types": args.types,
                     "threads": args.threads, "note": "CPU; shared machine, timings noisy; compare ratios"}
    methods = args.methods.split(",")
    order = [m for m in ("s2ft", "s2ft_nopb", "full", "lora") if m in methods]
    rounds: list[tuple[str, dict]] = []
    # rounds alternate the order so a load change on the shared machine does not favour one method
    for m in [m for k in range(args.rounds) for m in (order if k % 2 == 0 else order[::-1])]:
        if m == "lora" and args.lora_r is None:
            # match LoRA's trainable count to S2FT's: r (d_in + d_out) per adapted module
            s2 = results.get("s2ft_trainable")
            args.lora_r = max(1, round(s2 / results["_lora_per_rank"])) if s2 else 16
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            child_out = fh.name
        cmd = [sys.executable, __file__, "--model", args.model, "--out", child_out, "--only", m,
               "--batch", str(args.batch), "--tokens", str(args.tokens), "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--types", args.types, "--threads", str(args.threads)]
        if m == "lora":
            cmd += ["--lora-r", str(args.lora_r)]
        print(f"[{m}] running …", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        one = json.loads(Path(child_out).read_text())
        os.unlink(child_out)
        rounds.append((m, one))
        results.update(_combine(m, [r for name, r in rounds if name == m]))
        if m == "s2ft" and "_lora_per_rank" not in results:
            results["_lora_per_rank"] = _lora_per_rank(args.model, roles)
        print(f"[{m}] {json.dumps(one)}", file=sys.stderr)
    results.pop("_lora_per_rank", None)
    results["lora_r"] = args.lora_r
    if {"s2ft", "full", "lora"} <= set(methods):
        r = results
        r["ratio_step_s2ft_over_full"] = r["s2ft_step_s"] / r["full_step_s"]
        r["ratio_step_s2ft_over_lora"] = r["s2ft_step_s"] / r["lora_step_s"]
        r["ratio_peak_s2ft_over_lora"] = r["s2ft_peak_gb"] / r["lora_peak_gb"]
        r["ratio_extra_s2ft_over_lora"] = r["s2ft_train_extra_gb"] / max(r["lora_train_extra_gb"], 1e-9)
        r["ratio_saved_s2ft_over_lora"] = r["s2ft_saved_gb"] / r["lora_saved_gb"]
        r["targets_met"] = {
            "step_vs_full<=0.7": r["ratio_step_s2ft_over_full"] <= 0.7,
            "step_vs_lora<=0.85": r["ratio_step_s2ft_over_lora"] <= 0.85,
            "peak_vs_lora<=0.8": r["ratio_peak_s2ft_over_lora"] <= 0.8,
        }
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tangentft.io import write_json

    write_json(args.out, results)
    print(json.dumps(results, indent=2))


def _combine(method: str, runs: list[dict]) -> dict:
    """One method's runs: the fastest round's median step time, the largest peak, every round's median."""
    out = {
        f"{method}_step_s": min(r[f"{method}_step_s"] for r in runs),
        f"{method}_peak_gb": max(r[f"{method}_peak_gb"] for r in runs),
        f"{method}_train_extra_gb": max(r[f"{method}_train_extra_gb"] for r in runs),
        f"{method}_trainable": runs[0][f"{method}_trainable"],
        f"{method}_saved_gb": runs[0][f"{method}_saved_gb"],
        f"{method}_step_s_rounds": [r[f"{method}_step_s"] for r in runs],
    }
    return out


def _lora_per_rank(model: str, roles: list[str]) -> int:
    """Σ over adapted modules of (d_in + d_out): LoRA parameters per unit of rank."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tangentft.models.registry import load_model

    smap = load_model(model).structure
    return smap.num_layers * sum(smap.in_features(r) + smap.out_features(r) for r in roles)


if __name__ == "__main__":
    main()
