"""tangentft's kernel engine against what a PyTorch user would write instead (issue #22).

    nice -n 10 python benchmarks/entk_peers.py --out benchmarks/results/entk_peers.json   # resumable per case

Rows: model (minilm, smollm2-135m) × selection (a LoRA, whole modules, an S2FT selection) × n (64, 256), on
SST-2 train prompts (K = 2 outputs: the TaskModel's f). Methods, each in a fresh subprocess (its own peak RSS),
with a wall-clock timeout and a resident-memory cap:

* ``tangentft`` — ``tangentft.ntk.empirical_ntk`` (full kind, max_memory :data:`ENGINE_MEMORY`);
* ``jacobian_contraction`` — the PyTorch "Neural Tangent Kernels" tutorial's first method: per-example
  Jacobians by ``vmap(jacrev(f))`` then ``einsum('Naf,Mbf->NMab')`` summed over the parameter tensors;
* ``ntk_vector_products`` — the tutorial's second method: ``vjp`` of f(x1) then ``jvp`` of f(x2) along it, for
  each basis vector of the output (``vmap`` over the basis and over x2; the tutorial's outer ``vmap`` over x1
  is a loop here, as its n1·n2 simultaneous graphs exceed any memory at these sizes);
* ``signgd_tangentft`` — ``empirical_ntk(..., signgd=True)``: ⟨∇f(x), sign ∇f(x')⟩;
* ``signgd_per_example`` — the route LM-Kernel-FT (Malladi et al. 2023) takes: per example and output one
  autograd gradient, rows stacked into J, then J sign(J)ᵀ.

The torch.func methods see the same function (the TaskModel's K outputs) and the same parameters: every
selected block b enters as a zero tensor δ_b added to its slice of the weight (W[rows] + δ, or whole W + δ), so
∂f/∂δ_b is exactly the selected slice of ∂f/∂W. HF's BERT mask code branches on the mask's values, which
``vmap`` cannot trace; so inputs are bucketed by exact token length and each bucket runs unpadded with one
shared all-ones mask (vmap over the token ids only) — what a torch.func user does for equal-length inputs.
Each method's kernel is saved; ``max_rel_diff`` is max |K_method − K_tangentft| / max |K_tangentft|.

Timings: one timed call after a 2-example warm-up, wall seconds; ``extra_rss_gb`` = peak RSS during the call
minus RSS before it (model loaded). The machine is shared (2 cores, other jobs): ratios within a row are
meaningful, absolute times are not. A case past ``--timeout`` or ``--mem-cap-gb`` is recorded as such, and
a method that failed at n = 64 is not retried at n = 256.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODELS = ("minilm", "smollm2-135m")
# The engine's working-memory budget: what the torch.func routes may take under the same process cap (10 GB less
# the model), so "at equal memory" holds. With the earlier 2 GB, SmolLM2's S2FT row re-ran its passes over 4 tiles.
ENGINE_MEMORY = "6GB"
LAYERS = {"minilm": "all", "smollm2-135m": "0,15,29", "tiny-llama": "all", "tiny-bert": "all"}  # tiny: smoke tests
SELECTIONS = ("lora", "module", "s2ft")
METHODS = ("tangentft", "jacobian_contraction", "signgd_tangentft", "signgd_per_example", "ntk_vector_products")
REFERENCE = {m: "signgd_tangentft" if m.startswith("signgd") else "tangentft" for m in METHODS}


def spec_of(model: str, selection: str) -> str:
    """The selection each row uses (S2FT: the method's own default, o and down at 10% of their structures)."""
    if selection == "lora":
        return f"lora(r=8):q,v@{LAYERS[model]}"
    if selection == "module":
        return f"q,v@{LAYERS[model]}"
    return "s2ft(types=o:0.1,down:0.1)"


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


# -- one case, in a child process -------------------------------------------------------------------------
def load(model: str, selection: str, n: int, seed: int = 0):
    from tangentft.data import load_task, sample_n
    from tangentft.models.selection import select
    from tangentft.models.task_model import build_task_model

    data = load_task(str(ROOT.parent / "shared" / "data" / "sst2"))
    x = sample_n(data.split("train"), n, seed)
    tm = build_task_model(model, data.spec, seed=seed)
    if selection == "s2ft":
        from tangentft.methods.s2ft import S2FTMethod, S2FTMethodConfig

        sel = S2FTMethod(S2FTMethodConfig(types="o:0.1,down:0.1")).kernel_selection(tm)
    else:
        sel = select(tm, spec_of(model, selection), seed=seed)
    return tm, sel, x


def delta_function(tm, sel):
    """(f(δ, ids) -> (K,), zero δ per block): the TaskModel's outputs with δ_b added to each block's slice."""
    import torch
    from torch.func import functional_call

    named = dict(tm.named_parameters())
    for p in tm.parameters():  # nothing but δ is differentiated: the autograd tape records nothing else
        p.requires_grad_(False)
    tm.eval()
    base = {b.name: named[b.name].detach() for b in sel.blocks}
    deltas = {f"{i}": torch.zeros_like(b.index(base[b.name])) for i, b in enumerate(sel.blocks)}

    def weights(d):
        out = dict(base)
        for i, b in enumerate(sel.blocks):
            w, delta = out[b.name], d[f"{i}"]
            out_axis, in_axis = (1, 0) if b.transposed else (0, 1)
            if w.dim() == 1:
                out_axis = 0
            if b.out_idx is None and b.in_idx is None:
                w = w + delta
            elif b.in_idx is None:
                w = w.index_add(out_axis, torch.tensor(b.out_idx), delta)
            elif b.out_idx is None:
                w = w.index_add(in_axis, torch.tensor(b.in_idx), delta)
            else:
                raise ValueError("blocks sliced on both axes are not used by these rows")
            out[b.name] = w
        return out

    def f(d, ids, mask):
        return functional_call(tm, weights(d), (), {"input_ids": ids.unsqueeze(0), "attention_mask": mask})[0]

    return f, deltas


def buckets(tm, x):
    """[(positions, ids (b, L))] grouped by exact token length, so every bucket runs unpadded."""

    enc = tm.encode(x)
    lengths = enc["attention_mask"].sum(1).tolist()
    out = []
    for L in sorted(set(lengths)):
        pos = [i for i, ln in enumerate(lengths) if ln == L]
        out.append((pos, enc["input_ids"][pos, :L]))  # right padding: the first L tokens are the example
    return out


def jacobian_contraction(tm, sel, x):
    import torch
    from torch.func import jacrev, vmap

    f, deltas = delta_function(tm, sel)
    n, K = len(x), tm.num_outputs
    jac = {k: torch.empty(n, K, *v.shape) for k, v in deltas.items()}
    for pos, ids in buckets(tm, x):
        mask = torch.ones(1, ids.shape[1], dtype=torch.long)
        j = vmap(jacrev(f), (None, 0, None))(deltas, ids, mask)
        for k in jac:
            jac[k][pos] = j[k]
    out = sum(torch.einsum("Naf,Mbf->NaMb", j.flatten(2).double(), j.flatten(2).double()) for j in jac.values())
    return out.reshape(n * K, n * K).detach().numpy()


def _ntk_against(f, deltas, vjp_fn, basis, ids2, m2):
    """(b, K, K): for each x2 in the bucket, row k = J_k(x1) J(x2)ᵀ as jvp of f(x2) along vjp of e_k."""
    from torch.func import jvp, vmap

    def row(x2):
        def slice_(vec):
            return jvp(lambda d: f(d, x2, m2), (deltas,), vjp_fn(vec))[1]

        return vmap(slice_)(basis)

    return vmap(row)(ids2)


def ntk_vector_products(tm, sel, x):
    import torch
    from torch.func import vjp

    f, deltas = delta_function(tm, sel)
    n, K = len(x), tm.num_outputs
    out = np.zeros((n, K, n, K))
    bs = buckets(tm, x)
    for pos1, ids1 in bs:
        m1 = torch.ones(1, ids1.shape[1], dtype=torch.long)
        for a, i in enumerate(pos1):
            output, vjp_fn = vjp(lambda d, a=a, m1=m1, ids1=ids1: f(d, ids1[a], m1), deltas)
            basis = torch.eye(output.numel(), dtype=output.dtype)
            for pos2, ids2 in bs:
                m2 = torch.ones(1, ids2.shape[1], dtype=torch.long)
                out[i, :, pos2, :] = _ntk_against(f, deltas, vjp_fn, basis, ids2, m2).detach().double().numpy()
    return out.reshape(n * K, n * K)


def signgd_per_example(tm, sel, x):
    """LM-Kernel-FT's route: per-example gradients, their signs, one matmul (float64)."""
    from entk import per_example_jacobian

    J = per_example_jacobian(tm, sel, x)
    return (J @ J.sign().T).numpy()


class PeakRSS:
    """Highest resident memory seen by a 5 ms sampling thread while active (ru_maxrss cannot be reset)."""

    def __init__(self, cap_gb: float):
        import threading

        self.cap, self.peak, self.on = cap_gb, 0.0, False
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while True:
            if self.on:
                r = rss_gb()
                self.peak = max(self.peak, r)
                if r > self.cap:  # past the cap: end the process; the driver records the running method as OOM
                    os._exit(3)
            time.sleep(0.005)


def release_memory() -> None:
    """Hand freed heap back to the OS, so the next method's RSS baseline is its own."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class OutOfTime(Exception):
    pass


def run_row(model: str, selection: str, n: int, methods: list[str], cache: Path, timeouts: dict, cap_gb: float):
    """Every method of one row in this process (the model loads once), appending one JSON record per method
    to the row's log; a "start" record first, so the driver knows which method a killed process was in."""
    import signal

    import torch

    from tangentft.ntk import empirical_ntk

    tm, sel, x = load(model, selection, n)
    fns = {
        "tangentft": lambda xs: empirical_ntk(tm, sel, xs, max_memory=ENGINE_MEMORY),
        "signgd_tangentft": lambda xs: empirical_ntk(tm, sel, xs, max_memory=ENGINE_MEMORY, signgd=True),
        "jacobian_contraction": lambda xs: jacobian_contraction(tm, sel, xs),
        "ntk_vector_products": lambda xs: ntk_vector_products(tm, sel, xs),
        "signgd_per_example": lambda xs: signgd_per_example(tm, sel, xs),
    }
    watch = PeakRSS(cap_gb)

    def alarm(*_):
        raise OutOfTime

    signal.signal(signal.SIGALRM, alarm)
    log = cache / f"{model}_{selection}_{n}.jsonl"
    for method in methods:
        with open(log, "a") as fh:
            fh.write(json.dumps({"method": method, "status": "started"}) + "\n")
        rec = {"method": method, "num_params": sel.num_params(tm), "K": tm.num_outputs,
               "torch_threads": torch.get_num_threads()}
        try:
            fns[method](x[:2])  # warm-up: first-call allocations and lazy imports
            release_memory()
            before = rss_gb()
            watch.peak, watch.on = before, True
            timeout = timeouts.get(method, timeouts["default"])
            signal.alarm(int(timeout))
            t = time.perf_counter()
            k = fns[method](x)
            rec["seconds"] = time.perf_counter() - t
            signal.alarm(0)
            watch.on = False
            rec.update(status="ok", peak_rss_gb=watch.peak, extra_rss_gb=watch.peak - before, rss_before_gb=before)
            if not isinstance(k, np.ndarray):  # a Kernel: keep the engine's own split of its time (the profile)
                rec["engine_timings"] = k.timings
                k = k.matrix
            np.save(cache / f"{model}_{selection}_{n}_{method}.npy", k)
            del k
        except OutOfTime:
            rec["seconds_bound"] = timeouts.get(method, timeouts["default"])
            rec["status"] = f"out of time (> {rec['seconds_bound']:g} s)"
        except Exception as e:  # noqa: BLE001 (a peer that fails is a result, recorded with its message)
            rec["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        finally:
            signal.alarm(0)
            watch.on = False
        release_memory()
        with open(log, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


# -- the driver ----------------------------------------------------------------------------------------------
def records(log: Path) -> dict[str, dict]:
    """method → its final record in a row's log; a method started and never finished → killed at the cap."""
    out: dict[str, dict] = {}
    if not log.is_file():
        return out
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        out[rec["method"]] = rec
    return out


def drive_row(model, selection, n, methods, cache: Path, timeout: float, timeout_vp: float,
              cap_gb: float) -> dict[str, dict]:
    """Run the row's missing methods in child processes until each has a record; returns the records."""
    log = cache / f"{model}_{selection}_{n}.jsonl"
    while True:
        done = records(log)
        for r in done.values():
            if r["status"] == "started":  # the child died inside this method: past the memory cap
                r["status"] = f"out of memory (resident > {cap_gb:g} GB cap)"
                with open(log, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
        todo = [m for m in methods if m not in records(log)]
        if not todo:
            return records(log)
        cmd = [sys.executable, __file__, "--row", model, selection, str(n), *todo, "--cache", str(cache),
               "--timeout", str(timeout), "--timeout-ntk-vp", str(timeout_vp), "--mem-cap-gb", str(cap_gb)]
        with open(cache / f"{model}_{selection}_{n}.log", "a") as fh:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
        after = records(log)
        if not any(m in after for m in todo):  # the child died before starting anything: give up on the row
            for m in todo:
                after[m] = {"method": m, "status": f"failed: the row's process exited early (see {model}_{selection}_{n}.log)"}
            return after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "entk_peers.json"))
    ap.add_argument("--cache", default="/tmp/entk_peers", help="kernels and per-row logs (not committed)")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--selections", nargs="+", default=list(SELECTIONS))
    ap.add_argument("--n", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per method call")
    ap.add_argument("--timeout-ntk-vp", type=float, default=60.0,
                    help="seconds for ntk_vector_products (n² vjp/jvp pairs: the slowest by far on a CPU)")
    ap.add_argument("--mem-cap-gb", type=float, default=12.0, help="resident GB per process")
    ap.add_argument("--row", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.row:
        import torch

        torch.set_num_threads(1)
        model, selection, n, *methods = args.row
        timeouts = {"default": args.timeout, "ntk_vector_products": args.timeout_ntk_vp}
        run_row(model, selection, int(n), methods, cache, timeouts, args.mem_cap_gb)
        return
    from tangentft.io import write_json

    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"cases": {}}
    cases = result["cases"]
    for n in sorted(args.n):  # every row at the small n first: a partial run still covers every row
        for model in args.models:
            for selection in args.selections:
                todo = []
                for method in args.methods:
                    key = f"{model}|{selection}|{n}|{method}"
                    smaller = [cases.get(f"{model}|{selection}|{m}|{method}") for m in args.n if m < n]
                    if key not in cases and any(c is not None and c["status"] != "ok" for c in smaller):
                        cases[key] = {"status": f"not attempted: {method} did not finish at a smaller n"}
                    elif key not in cases or cases[key]["status"].startswith("not run"):
                        todo.append(method)
                if not todo:
                    continue
                recs = drive_row(model, selection, n, todo, cache, args.timeout, args.timeout_ntk_vp, args.mem_cap_gb)
                for method in todo:
                    case = {k: v for k, v in recs[method].items() if k != "method"}
                    kernel = cache / f"{model}_{selection}_{n}_{method}.npy"
                    ref = cache / f"{model}_{selection}_{n}_{REFERENCE[method]}.npy"
                    if case["status"] == "ok" and ref.is_file():
                        a, b = np.load(kernel), np.load(ref)
                        case["max_rel_diff"] = float(np.abs(a - b).max() / np.abs(b).max())
                    cases[f"{model}|{selection}|{n}|{method}"] = case
                    print(f"{model}|{selection}|{n}|{method}", json.dumps(case), flush=True)
                result.update(machine=machine(), spec={f"{m}|{s}": spec_of(m, s) for m in MODELS for s in SELECTIONS})
                result["summary"] = summarize(result)
                write_json(out, result)
                plot(result, out.with_suffix(".png"))


def summarize(result: dict) -> dict:
    """Per row: each method's seconds and extra GB over tangentft's (the issue's target: ≥ 2× faster than the
    better torch.func method at equal memory, or ≥ 2× less memory at equal time)."""
    rows: dict[str, dict] = {}
    for key, case in result["cases"].items():
        model, selection, n, method = key.split("|")
        rows.setdefault(f"{model}|{selection}|{n}", {})[method] = case
    out = {}
    for row, cases in rows.items():
        ours = cases.get("tangentft", {})
        peers = {m: c for m, c in cases.items() if m in ("jacobian_contraction", "ntk_vector_products")}
        done = {m: c for m, c in peers.items() if c.get("status") == "ok"}
        entry: dict = {}
        if ours.get("status") == "ok":
            if done:
                best = min(done, key=lambda m: done[m]["seconds"])
                entry.update(better_torch_func=best, speedup=done[best]["seconds"] / ours["seconds"],
                             memory_ratio=max(done[best]["extra_rss_gb"], 1e-3) / max(ours["extra_rss_gb"], 1e-3))
            failed = {m: c["status"] for m, c in peers.items() if c.get("status") != "ok"}
            if failed:
                entry["torch_func_not_finished"] = failed
        sg, pe = cases.get("signgd_tangentft", {}), cases.get("signgd_per_example", {})
        if sg.get("status") == "ok" and pe.get("status") == "ok":
            entry["signgd_speedup"] = pe["seconds"] / sg["seconds"]
        out[row] = entry
    return out


def _cell(case: dict | None) -> str:
    if case is None:
        return "not run"
    if case["status"] != "ok":
        return "not attempted" if case["status"].startswith("not attempted") else case["status"]
    diff = case.get("max_rel_diff")
    return f"{case['seconds']:.1f} s, +{case['extra_rss_gb']:.2f} GB" + (f", Δ {diff:.0e}" if diff else "")


def table(result: dict) -> str:
    """The README table: per row each method's seconds, extra resident GB and max rel. diff vs tangentft."""
    heads = ["model", "selection", "n", "params", *METHODS, "speedup vs better torch.func", "SignGD speedup"]
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    rows = sorted({k.rsplit("|", 1)[0] for k in result["cases"]}, key=lambda r: (int(r.split("|")[2]), r))
    for row in rows:
        model, selection, n = row.split("|")
        cases = {m: result["cases"].get(f"{row}|{m}") for m in METHODS}
        params = next((c["num_params"] for c in cases.values() if c and "num_params" in c), "")
        summ = result.get("summary", {}).get(row, {})
        sp = f"{summ['speedup']:.2f}× ({summ['better_torch_func']}; memory {summ['memory_ratio']:.2f}×)" \
            if "speedup" in summ else "—"
        sg = f"{summ['signgd_speedup']:.2f}×" if "signgd_speedup" in summ else "—"
        lines.append("| " + " | ".join([model, selection, n, f"{params:,}" if params else "", *map(_cell, cases.values()),
                                         sp, sg]) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Seconds (log) per method and row; hatched bars: out of time/memory (drawn at the bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted({k.rsplit("|", 1)[0] for k in result["cases"]}, key=lambda r: (r.split("|")[2].zfill(5), r))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(rows)), 4.5))
    width = 0.8 / len(METHODS)
    for j, method in enumerate(METHODS):
        for i, row in enumerate(rows):
            case = result["cases"].get(f"{row}|{method}")
            if case is None or case["status"].startswith("not attempted"):
                continue
            ok = case["status"] == "ok"
            secs = case["seconds"] if ok else case.get("seconds_bound")
            if secs is None:  # out of memory or failed: see the table
                continue
            ax.bar(i + (j - len(METHODS) / 2 + 0.5) * width, secs, width, color=f"C{j}", hatch=None if ok else "//",
                   alpha=1.0 if ok else 0.4)
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{j}") for j in range(len(METHODS))]
    ax.legend(handles, METHODS, fontsize=7, ncol=3)
    ax.set_xticks(range(len(rows)), [r.replace("|", "\n") for r in rows], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (one call; hatched: did not finish)")
    ax.set_title("eNTK: tangentft vs torch.func (tutorial methods); SignGD vs per-example gradients", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    import torch

    load1 = os.getloadavg()[0]
    return (f"{platform.machine()} {os.cpu_count()} cpus (shared), load avg {load1:.1f} at last write, "
            f"torch {torch.__version__}, 1 thread per case, nice 10")


if __name__ == "__main__":
    main()
