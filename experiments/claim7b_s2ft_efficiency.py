"""Claim 7(b) — S2FT paper, training-efficiency table: S2FT steps faster and with less memory than full FT and LoRA.

    python -m experiments.claim7b_s2ft_efficiency [--quick] [--model smollm2-135m]

Runs the project's benchmark ``benchmarks/s2ft_train.py`` (owned by the S2FT benchmark; not duplicated here):
each method in its own process, AdamW, batch 4 × T tokens, median step time, peak RSS and the activations
autograd saves for backward (counted exactly). Default: T = 512, where activations dominate (the paper's
regime); quick: T = 128. Either mode reuses the benchmark's committed result for that size
(``benchmarks/results/s2ft_train_<model>_4x<T>.json``) when it exists, else runs the benchmark (the quick mode
for one step per method).

The paper reports S2FT 1.5–2.7× faster and 1.4–3.0× less memory than full fine-tuning, and about 10% better
than LoRA on both. Memory here is the activations saved for backward (RSS on a shared machine moves by
±0.2 GB; the peak RSS ratios are recorded beside it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import common

DOC = __doc__
NAME = "claim7b_s2ft_efficiency"
CLAIM = common.Claim(
    claim_id="7b", paper="S2FT", where="training-efficiency table",
    paper_claim="S2FT trains faster and with less memory than full fine-tuning and LoRA",
    paper_figure="1.5–2.7× faster and 1.4–3.0× less memory than full FT; ~10% better than LoRA on both",
)
BENCH = Path("benchmarks/s2ft_train.py")


def bench_result(ctx: common.Context, tokens: int) -> tuple[dict, str]:
    """(benchmark JSON, where it came from): the committed quick-size result, a cached one, or a fresh run."""
    committed = Path(f"benchmarks/results/s2ft_train_{ctx.model}_4x{tokens}.json")
    if committed.is_file() and json.loads(committed.read_text()).get("tokens") == tokens:
        return json.loads(committed.read_text()), str(committed)
    path = ctx.out / "configs" / f"s2ft_train_{ctx.model}_T{tokens}.json"
    if not path.is_file():
        cmd = [sys.executable, str(BENCH), "--model", ctx.model, "--tokens", str(tokens), "--out", str(path),
               "--batch", "4"]
        if ctx.quick:
            cmd += ["--steps", "1", "--rounds", "1", "--methods", "full,lora,s2ft"]
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{NAME}] {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
    return json.loads(path.read_text()), common.rel(path)


def main(argv: Sequence[str] | None = None) -> dict:
    ctx, _ = common.parse(NAME, DOC, argv, model="smollm2-135m")
    tokens = ctx.pick(128, 512)
    b, source = bench_result(ctx, tokens)

    def ratio(num: str, den: str) -> float | None:
        return b[num] / b[den] if b.get(num) and b.get(den) else None

    r = {"speed_vs_full": ratio("full_step_s", "s2ft_step_s"), "speed_vs_lora": ratio("lora_step_s", "s2ft_step_s"),
         "saved_mem_vs_full": ratio("full_saved_gb", "s2ft_saved_gb"),
         "saved_mem_vs_lora": ratio("lora_saved_gb", "s2ft_saved_gb"),
         "peak_mem_vs_full": ratio("full_peak_gb", "s2ft_peak_gb"), "peak_mem_vs_lora": ratio("lora_peak_gb", "s2ft_peak_gb")}
    checks = {"speed_vs_full>=1.5": (r["speed_vs_full"] or 0) >= 1.5,
              "saved_mem_vs_full>=1.4": (r["saved_mem_vs_full"] or 0) >= 1.4,
              "speed_vs_lora>=1.0": (r["speed_vs_lora"] or 0) >= 1.0,
              "saved_mem_vs_lora>=1.0": (r["saved_mem_vs_lora"] or 0) >= 1.0}
    if all(checks.values()):
        verdict, why = "holds", "S2FT is in the paper's range against full FT and ahead of LoRA on both"
    elif any(checks.values()):
        verdict, why = "partly", "short of the paper: " + ", ".join(k for k, v in checks.items() if not v)
    else:
        verdict, why = "does not", "S2FT is neither faster nor lighter than full FT and LoRA here"
    fig, axes = common.figure(2)
    methods = [m for m in ("full", "lora", "s2ft") if b.get(f"{m}_step_s")]
    axes[0][0].bar(methods, [b[f"{m}_step_s"] for m in methods])
    axes[0][0].set_ylabel(f"s / step (batch 4 × {b.get('tokens')})")
    axes[0][1].bar(methods, [b.get(f"{m}_saved_gb") or 0 for m in methods], color="C1")
    axes[0][1].set_ylabel("activations saved for backward (GB)")
    our = (f"T={b.get('tokens')}: S2FT {common.fmt(r['speed_vs_full'])}× faster and {common.fmt(r['saved_mem_vs_full'])}× "
           f"less activation memory than full FT; {common.fmt(r['speed_vs_lora'])}× / {common.fmt(r['saved_mem_vs_lora'])}× vs LoRA "
           f"(peak RSS {common.fmt(r['peak_mem_vs_full'])}× / {common.fmt(r['peak_mem_vs_lora'])}×)")
    return common.write_claim(
        ctx, CLAIM, fig, our_figure=our, verdict=verdict, why=why,
        data={"benchmark": source, "tokens": b.get("tokens"), "batch": b.get("batch"), "ratios": r, "checks": checks,
              "lora_r": b.get("lora_r"), "trainable": {m: b.get(f"{m}_trainable") for m in methods}})


if __name__ == "__main__":
    main()
