"""Adapter switch latency vs base dimension: S2FT sparse switch vs LoRA merge (S2FT paper §6.2).

    python benchmarks/s2ft_switch.py --out FILE.json

For d ∈ {1024, 2048, 4096, 8192}, one d×d linear layer serves two adapters and switches from A to B:
* S2FT (sparsity 32: 32 selected rows — e.g. an up/gate/q/k/v adapter; ``s2ft_switch_cols_ms`` repeats it
  for 32 input columns, e.g. an o/down adapter, which are strided in nn.Linear's row-major (out, in) layout):
  ``tangentft.adapters.switch`` — restore A's saved slice, index_add B's (O(32·d));
* LoRA (r = 16) through PEFT: ``unmerge_adapter()``, ``set_adapter("b")``, ``merge_adapter()`` (O(d²)).
Median milliseconds over repeats (``*_min_ms``: the minimum, robust to preemption on a busy machine); keys
``dims``, ``s2ft_switch_ms``, ``lora_switch_ms``. Targets: S2FT flat
(d=8192 ≤ 1.2× d=1024) and ≥ 5× faster than LoRA at 8192. Shared CPU: noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tangentft.adapters import SparseAdapter, SparseDelta, merge, switch  # noqa: E402
from tangentft.io import write_json  # noqa: E402


def _median_ms(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def s2ft_switch_ms(d: int, sparsity: int, repeats: int, axis: int) -> tuple[float, float]:
    model = nn.Sequential(nn.Linear(d, d, bias=False))
    gen = torch.Generator().manual_seed(d)
    adapters = []
    for k in range(2):
        idx = torch.randperm(d, generator=gen)[:sparsity].sort().values
        shape = (sparsity, d) if axis == 0 else (d, sparsity)
        adapters.append(SparseAdapter(f"a{k}", [SparseDelta("0", axis, idx, torch.randn(shape, generator=gen))]))
    state = {"record": merge(model, adapters[0], check=False), "cur": 0}

    def go():
        state["cur"] = 1 - state["cur"]
        state["record"] = switch(model, state["record"], adapters[state["cur"]], check=False)

    return _median_ms(go, repeats)


def lora_switch_ms(d: int, r: int, repeats: int) -> tuple[float, float]:
    from peft import LoraConfig, get_peft_model

    base = nn.Sequential(nn.Linear(d, d, bias=False))
    pm = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"], init_lora_weights=False))
    pm.add_adapter("b", LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"], init_lora_weights=False))
    pm.base_model.set_adapter("default")
    pm.merge_adapter()
    state = {"cur": "default"}

    def go():
        state["cur"] = "b" if state["cur"] == "default" else "default"
        with torch.no_grad():
            pm.unmerge_adapter()
            pm.base_model.set_adapter(state["cur"])
            pm.merge_adapter()

    return _median_ms(go, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dims", default="1024,2048,4096,8192")
    ap.add_argument("--sparsity", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=41)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dims = [int(x) for x in args.dims.split(",")]
    res: dict[str, list[float]] = {k: [] for k in ("s2ft", "s2ft_min", "cols", "cols_min", "lora", "lora_min")}
    for d in dims:
        for key, (med, low) in (
            ("s2ft", s2ft_switch_ms(d, args.sparsity, args.repeats, axis=0)),
            ("cols", s2ft_switch_ms(d, args.sparsity, args.repeats, axis=1)),
            ("lora", lora_switch_ms(d, args.rank, max(5, args.repeats // (d // 1024)))),
        ):
            res[key].append(med)
            res[key + "_min"].append(low)
        print(f"d={d}: s2ft rows {res['s2ft'][-1]:.3f} ms, cols {res['cols'][-1]:.3f} ms, lora {res['lora'][-1]:.3f} ms",
              file=sys.stderr, flush=True)
    s2ft, lora = res["s2ft"], res["lora"]
    out = {
        "dims": dims, "s2ft_switch_ms": s2ft, "lora_switch_ms": lora, "s2ft_switch_cols_ms": res["cols"],
        "s2ft_switch_min_ms": res["s2ft_min"], "s2ft_switch_cols_min_ms": res["cols_min"],
        "lora_switch_min_ms": res["lora_min"], "sparsity": args.sparsity, "lora_r": args.rank,
        "threads": torch.get_num_threads(), "note": "CPU; shared machine, timings noisy; compare ratios",
        "s2ft_flatness": s2ft[-1] / s2ft[0], "lora_over_s2ft_at_max_d": lora[-1] / s2ft[-1],
    }
    out["targets_met"] = {"s2ft_flat<=1.2": out["s2ft_flatness"] <= 1.2, "speedup>=5": out["lora_over_s2ft_at_max_d"] >= 5}
    write_json(args.out, out)
    print(out)


if __name__ == "__main__":
    main()
