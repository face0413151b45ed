"""Multi-adapter serving throughput: S2FT vs LoRA in mixed batches, and vs one adapter at a time (S2FT paper §6.2).

    nice -n 10 python benchmarks/serve.py --out benchmarks/results/serve.json [--model smollm2-135m]

For k = 1, 2, 4, 8 adapters on one base, ``--requests`` greedy generation requests (prompt of ``--prompt``
tokens, ``--new`` new tokens each) are spread round-robin over the k adapters and all submitted at t0 to the
server's own scheduler (:class:`tangentft.serve.Scheduler`, in process, no HTTP) with every request in one
running batch. Modes:

* ``s2ft_mixed`` — k S2FT adapters (o + down, the paper's default types), each row its own adapter through
  the sparse multi-adapter path (unmerged base, one forward per decode step for all adapters);
* ``lora_mixed`` — k PEFT LoRA adapters on the same modules at equal trainable parameters (rank chosen so),
  each row its own adapter through PEFT's ``adapter_names``;
* ``s2ft_switch`` — one adapter at a time: merge it (sparse switch, O(n·d)), serve its requests as a batch,
  switch to the next;
* ``lora_switch`` — one adapter at a time, unmerged: the batch of one adapter's requests through PEFT.

Reported per mode: generated tokens/s over the wall time from t0 to the last answer, and p50/p95 request
latency (t0 to the request's last token). ``s2ft_over_lora_k8`` = s2ft_mixed / lora_mixed tokens/s at k = 8
(target ≥ 1.2, S2FT paper §6.2). S2FT and LoRA run on two copies of the base, alternating over ``--rounds``
rounds (medians reported, every round's tokens/s kept), so the load of a shared machine drifts over both
alike. Every finished k is written at once; a rerun skips the k already in ``--out`` (resumable). Timings on a shared CPU are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

KS = (1, 2, 4, 8)
MODES = ("s2ft_mixed", "lora_mixed", "s2ft_switch", "lora_switch")


def sparse_adapters(hf, smap, k: int, ffn_ratio: float, seed: int):
    """k random S2FT adapters (random KV group of o's columns, random down channels per layer)."""
    import torch

    from tangentft.adapters import SparseAdapter, SparseDelta
    from tangentft.models.fingerprint import modules_fingerprint

    out = []
    group_cols = smap.queries_per_kv * smap.head_dim
    n_down = max(1, round(ffn_ratio * smap.intermediate_size))
    for a in range(k):
        gen = torch.Generator().manual_seed(seed + a)
        deltas, paths = [], []
        for layer in range(smap.num_layers):
            o, down = smap.ref(layer, "o").path, smap.ref(layer, "down").path
            g = int(torch.randint(smap.num_kv_heads, (1,), generator=gen))
            cols = torch.arange(g * group_cols, (g + 1) * group_cols)
            chans = torch.randperm(smap.intermediate_size, generator=gen)[:n_down].sort().values
            for path, idx in ((o, cols), (down, chans)):
                w = hf.get_submodule(path).weight
                deltas.append(SparseDelta(path, 1, idx, torch.randn(w.shape[0], idx.numel(), generator=gen) * 0.01))
                paths.append(path)
        out.append(SparseAdapter(f"a{a}", deltas, [(paths, modules_fingerprint(hf, paths))]))
    return out


def lora_folder(hf, smap, name: str, rank: int, seed: int, folder: Path) -> Path:
    """A PEFT LoRA adapter folder (random A and B, scaling 1) on every layer's o and down projections."""
    import torch
    from peft import LoraConfig

    from tangentft.io import save_safetensors

    gen = torch.Generator().manual_seed(seed)
    paths = [smap.ref(layer, r).path for layer in range(smap.num_layers) for r in ("o", "down")]
    LoraConfig(r=rank, lora_alpha=rank, target_modules=paths, lora_dropout=0.0).save_pretrained(str(folder))
    tensors = {}
    for p in paths:
        out_f, in_f = hf.get_submodule(p).weight.shape
        tensors[f"base_model.model.{p}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * in_f**-0.5
        tensors[f"base_model.model.{p}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.01
    save_safetensors(folder / "adapter_model.safetensors", tensors)
    return folder


def run_requests(engine, groups: list[list[tuple[str, list[int]]]], new: int, between=None, on_step=None) -> dict:
    """Submit each group's requests at once, groups one after another (``between(i)`` before group i);
    returns tokens/s and latency percentiles measured from the first submission (``on_step``: the
    scheduler's per-forward callback)."""
    from tangentft.serve import Generation, Scheduler

    sched = Scheduler(engine, max_batch=64, max_queue=1024, batch_wait_ms=0, on_step=on_step)
    sched.start()
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    try:
        for i, group in enumerate(groups):
            if between is not None:
                between(i)
            done = threading.Semaphore(0)
            gens = []
            for label, ids in group:
                g = Generation(label, ids, new, lambda kind, _p, d=done: d.release() if kind in ("done", "error") else None,
                               temperature=0.0)
                gens.append(g)
                sched.submit(g)
            for _ in gens:
                done.acquire()
            for g in gens:
                if g.finish_reason is None:
                    raise RuntimeError("a benchmark request failed")
                latencies.append(g.finished - t0)
                tokens += len(g.out_ids)
    finally:
        sched.stop()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"tokens_per_s": tokens / wall, "wall_s": wall, "tokens": tokens, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]}


def save(result: dict, out: Path) -> None:
    """Write ``result`` with its ratios (S2FT over LoRA, mixed batches over switching) recomputed from the runs."""
    from tangentft.io import write_json

    k8 = result["results"].get("k8", {})
    if "s2ft_mixed" in k8 and "lora_mixed" in k8:
        result["s2ft_over_lora_k8"] = k8["s2ft_mixed"]["tokens_per_s"] / k8["lora_mixed"]["tokens_per_s"]
    result["s2ft_over_lora"] = {
        k: r["s2ft_mixed"]["tokens_per_s"] / r["lora_mixed"]["tokens_per_s"]
        for k, r in result["results"].items() if "s2ft_mixed" in r and "lora_mixed" in r
    }
    result["mixed_over_switch"] = {
        k: {m: r[f"{m}_mixed"]["tokens_per_s"] / r[f"{m}_switch"]["tokens_per_s"] for m in ("s2ft", "lora")
            if f"{m}_mixed" in r and f"{m}_switch" in r}
        for k, r in result["results"].items()
    }
    write_json(out, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens per request")
    ap.add_argument("--new", type=int, default=16, help="generated tokens per request")
    ap.add_argument("--ffn-ratio", type=float, default=0.1, help="S2FT down channels per layer (fraction)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per mode (medians are reported)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    args = ap.parse_args()

    import torch

    from tangentft.adapters import switch, unmerge
    from tangentft.adapters.sparse import save_adapter
    from tangentft.models.registry import load_model
    from tangentft.serve import Engine

    torch.set_num_threads(args.threads)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result.setdefault("results", {})
    loaded = load_model(args.model)
    hf, smap = loaded.model.eval(), loaded.structure
    gen = torch.Generator().manual_seed(0)
    vocab = hf.config.vocab_size
    prompts = [torch.randint(100, vocab - 100, (args.prompt,), generator=gen).tolist() for _ in range(args.requests)]

    s2ft_params = sum(d.numel for d in sparse_adapters(hf, smap, 1, args.ffn_ratio, 0)[0].deltas)
    per_rank = sum(sum(hf.get_submodule(smap.ref(layer, r).path).weight.shape)
                   for layer in range(smap.num_layers) for r in ("o", "down"))
    rank = max(1, round(s2ft_params / per_rank))
    result.update({
        "model": args.model, "requests": args.requests, "prompt_tokens": args.prompt, "new_tokens": args.new,
        "threads": args.threads, "rounds": args.rounds, "modules": "o + down, every layer",
        "trainable_per_adapter": {"s2ft": s2ft_params, "lora": rank * per_rank}, "lora_rank": rank,
        "machine": "CPU (shared 2-core machine, nice 10)",
    })

    tmp = Path(tempfile.mkdtemp(prefix="tangentft-serve-bench-"))
    # S2FT and LoRA each get their own copy of the base, so their runs can alternate round by round and the
    # load of the shared machine drifts over both alike
    copies = {"s2ft": loaded, "lora": dataclasses.replace(loaded, model=copy.deepcopy(hf))}
    for k in KS:
        done = result["results"].setdefault(f"k{k}", {})
        if all(m in done for m in MODES):
            continue
        names = [f"a{i}" for i in range(k)]
        labels = [names[i % k] for i in range(args.requests)]
        mixed = [list(zip(labels, prompts, strict=True))]
        by_adapter = [[(lab, p) for lab, p in zip(labels, prompts, strict=True) if lab == n] for n in names]
        engines = {m: Engine(copies[m]) for m in copies}
        adapters = sparse_adapters(hf, smap, k, args.ffn_ratio, 100 * k)
        for a in adapters:
            engines["s2ft"].load(a.name, save_adapter(a, tmp / f"s2ft_k{k}_{a.name}"))
        for i, n in enumerate(names):
            engines["lora"].load(n, lora_folder(hf, smap, n, rank, 1000 * k + i, tmp / f"lora_k{k}_{n}"))
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for m in engines:
            run_requests(engines[m], [[(names[0], prompts[0])]], 2)  # warm-up
        for r in range(args.rounds):
            for m in (("s2ft", "lora") if r % 2 == 0 else ("lora", "s2ft")):
                runs[f"{m}_mixed"].append(run_requests(engines[m], mixed, args.new))
                print(f"k={k} round {r} {m}_mixed {runs[f'{m}_mixed'][-1]['tokens_per_s']:.2f} tok/s", flush=True)
        for n in names:
            engines["s2ft"].unload(n)  # the S2FT switch baseline serves merged weights: no routing hooks
        state = {"record": None}
        base_groups = [[("__base__", p) for _, p in g] for g in by_adapter]

        def between(i, state=state, adapters=adapters, model=copies["s2ft"].model):
            state["record"] = switch(model, state["record"], adapters[i])

        for r in range(args.rounds):
            for m in (("s2ft", "lora") if r % 2 == 0 else ("lora", "s2ft")):
                if m == "s2ft":
                    runs["s2ft_switch"].append(run_requests(engines["s2ft"], base_groups, args.new, between))
                    unmerge(copies["s2ft"].model, state["record"])
                    state["record"] = None
                else:
                    runs["lora_switch"].append(run_requests(engines["lora"], by_adapter, args.new))
                print(f"k={k} round {r} {m}_switch {runs[f'{m}_switch'][-1]['tokens_per_s']:.2f} tok/s", flush=True)
        for n in names:
            engines["lora"].unload(n)
        engines["lora"].host.peft.unload()  # drop the (now empty) LoRA layers: the plain base again
        for m, rs in runs.items():
            done[m] = {key: statistics.median(x[key] for x in rs) for key in rs[0]} | {
                "tokens_per_s_rounds": [x["tokens_per_s"] for x in rs]}
        save(result, args.out)
    save(result, args.out)
    print(json.dumps({k: result[k] for k in ("s2ft_over_lora_k8", "s2ft_over_lora", "mixed_over_switch") if k in result}, indent=1))


if __name__ == "__main__":
    main()
