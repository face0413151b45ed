"""Serving at the base model's speed, and many adapters (issue #23): the base-only rows of ``serve.py``.

    nice -n 10 python benchmarks/serve_base.py --out benchmarks/results/serve_base.json [--model smollm2-135m]

``--requests`` greedy requests (``--prompt`` tokens each, exactly ``--new`` new tokens) submitted at once, in
alternating rounds (medians reported, every round kept) so the load of a shared machine drifts over all alike:

* ``generate`` — plain ``transformers`` greedy ``generate`` on the same batch, no server (the physical limit);
* ``base_only`` — the server's scheduler on an engine with no adapter (the same batch through
  :class:`tangentft.serve.Scheduler`);
* ``s2ft_mixed_8`` — the same requests round-robin over 8 S2FT adapters (``serve.py``'s: a KV group of o's
  columns + 10% of down's channels per layer), each row its own adapter;
* ``s2ft_mixed_8_of_100`` — the same 8 active adapters with 100 registered and at most 16 resident
  (``max_resident``; the other 92 are registered under other names and never asked for).

Ratios: ``s2ft_mixed_8 / base_only`` (target ≥ 0.9) and ``base_only / generate`` (target ≥ 0.9); where one
is missed, a cProfile of one run of each side says where the time goes. Memory per resident adapter, S2FT vs
LoRA at equal parameters (LoRA rank chosen so, on the same modules): the bytes of the tensors the engine
holds per adapter, and the process's RSS growth per adapter over 8 loads.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import lora_folder, run_requests, sparse_adapters  # noqa: E402

MODES = ("generate", "base_only", "s2ft_mixed_8", "s2ft_mixed_8_of_100")


def rss_mb() -> float:
    """This process's resident set size in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def plain_generate(hf, prompts: list[list[int]], new: int) -> dict:
    """Greedy ``generate`` of exactly ``new`` tokens for the batch of (equal-length) prompts."""
    import torch

    ids = torch.tensor(prompts)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0)
    wall = time.perf_counter() - t0
    tokens = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    return {"tokens_per_s": tokens / wall, "wall_s": wall, "tokens": tokens}


def profile(fn) -> dict:
    """Where one call of plain ``generate`` spends its time: wall seconds, the torch ops' self CPU time, the
    10 costliest ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - t0
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) / 1e6
    return {"wall_s": wall, "torch_ops_s": total, "outside_torch_ops_s": wall - total,
            "top_ops": [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6} for e in ops[:10]]}


def split_scheduler(engine, batch, new: int) -> dict:
    """Where one scheduler run spends its time: inside the model's forwards (prefill + decode steps, each
    row under its adapter) versus outside them (sampling, text decoding for stop strings, KV-cache row
    surgery, thread hand-offs), from the scheduler's own per-forward callback."""
    steps = []
    out = run_requests(engine, batch, new, on_step=lambda rows, tokens, seconds: steps.append(seconds))
    return {"wall_s": out["wall_s"], "forward_s": sum(steps), "forwards": len(steps),
            "outside_forward_s": out["wall_s"] - sum(steps)}


def adapter_memory(loaded, hf, smap, tmp: Path, s2ft_folders: list[Path], rank: int) -> dict:
    """Bytes held per resident S2FT and LoRA adapter (tensors, and RSS growth over 8 loads) at equal parameters."""
    from tangentft.serve import Engine

    out = {}
    for kind in ("s2ft", "lora"):
        engine = Engine(dataclasses.replace(loaded, model=copy.deepcopy(hf)))
        before = rss_mb()
        for i in range(8):
            path = s2ft_folders[i] if kind == "s2ft" else lora_folder(hf, smap, f"m{i}", rank, 500 + i, tmp / f"mem_lora{i}")
            engine.load(f"m{i}", path)
        grown = (rss_mb() - before) / 8
        if kind == "s2ft":
            held = sum(v.numel() * v.element_size() + ix.numel() * ix.element_size()
                       for entries in engine.host.sparse._plan.values() for _n, _o, ix, v in entries) / 8
        else:
            held = sum(p.numel() * p.element_size() for n, p in engine.hf.named_parameters() if "lora_" in n) / 8
        out[kind] = {"parameters": engine.adapters["m0"].parameters, "tensor_bytes": held, "rss_growth_mb": grown}
        del engine
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--ffn-ratio", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_base.json"))
    ap.add_argument("--profile-only", action="store_true", help="only (re)profile generate, base_only, s2ft_mixed_8 "
                    "into the existing --out")
    args = ap.parse_args()

    import torch

    from tangentft.adapters.sparse import save_adapter
    from tangentft.io import write_json
    from tangentft.models.registry import load_model
    from tangentft.serve import Engine

    torch.set_num_threads(1)
    loaded = load_model(args.model)
    hf, smap = loaded.model.eval(), loaded.structure
    gen = torch.Generator().manual_seed(0)
    vocab = hf.config.vocab_size
    prompts = [torch.randint(100, vocab - 100, (args.prompt,), generator=gen).tolist() for _ in range(args.requests)]
    tmp = Path(tempfile.mkdtemp(prefix="tangentft-serve-base-"))
    adapters = sparse_adapters(hf, smap, 9, args.ffn_ratio, 800)
    folders = [save_adapter(a, tmp / a.name) for a in adapters]
    names = [f"a{i}" for i in range(8)]
    labels = [names[i % 8] for i in range(args.requests)]
    copy_of = lambda: dataclasses.replace(loaded, model=copy.deepcopy(hf))  # noqa: E731
    engines = {"base_only": Engine(copy_of()), "s2ft_mixed_8": Engine(copy_of()),
               "s2ft_mixed_8_of_100": Engine(copy_of(), max_resident=16)}
    for n, f in zip(names, folders, strict=False):
        engines["s2ft_mixed_8"].load(n, f)
    t0 = time.perf_counter()
    if args.profile_only:
        del engines["s2ft_mixed_8_of_100"]
    for i in range(0 if args.profile_only else 92):  # the idle 92 first, so the 8 active ones are the most recently used
        engines["s2ft_mixed_8_of_100"].load(f"idle{i}", folders[8])
    for n, f in zip(names, folders, strict=False):
        if "s2ft_mixed_8_of_100" in engines:
            engines["s2ft_mixed_8_of_100"].load(n, f)
    register_100_s = time.perf_counter() - t0
    batches = {"base_only": [[("__base__", p) for p in prompts]],
               "s2ft_mixed_8": [list(zip(labels, prompts, strict=True))],
               "s2ft_mixed_8_of_100": [list(zip(labels, prompts, strict=True))]}
    run = {m: (lambda m=m: run_requests(engines[m], batches[m], args.new)) for m in engines}
    run["generate"] = lambda: plain_generate(engines["base_only"].hf, prompts, args.new)
    if args.profile_only:
        for m in ("generate", "base_only", "s2ft_mixed_8"):
            run[m]()  # warm-up
        result = json.loads(args.out.read_text())
        result["profile"] = {"generate": profile(run["generate"]),
                             **{m: split_scheduler(engines[m], batches[m], args.new) for m in ("base_only", "s2ft_mixed_8")}}
        result.pop("profile_top_tottime", None)
        shutil.rmtree(tmp, ignore_errors=True)
        write_json(args.out, result)
        print(json.dumps(result["profile"], indent=1))
        return
    for m in MODES:
        run[m]()  # warm-up
    rounds: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for m in (MODES if r % 2 == 0 else MODES[::-1]):
            rounds[m].append(run[m]())
            print(f"round {r} {m}: {rounds[m][-1]['tokens_per_s']:.2f} tok/s", flush=True)
    med = {m: statistics.median(x["tokens_per_s"] for x in rs) for m, rs in rounds.items()}
    result = {
        "model": args.model, "requests": args.requests, "prompt_tokens": args.prompt, "new_tokens": args.new,
        "rounds": args.rounds, "threads": 1, "s2ft_parameters_per_adapter": adapters[0].numel,
        "tokens_per_s": med, "tokens_per_s_rounds": {m: [x["tokens_per_s"] for x in rs] for m, rs in rounds.items()},
        "s2ft_mixed_8_over_base_only": med["s2ft_mixed_8"] / med["base_only"],
        "base_only_over_generate": med["base_only"] / med["generate"],
        "s2ft_8_of_100_over_8_of_8": med["s2ft_mixed_8_of_100"] / med["s2ft_mixed_8"],
        "register_100_seconds": register_100_s,
        "resident_of_100": len(engines["s2ft_mixed_8_of_100"].resident),
        "machine": "CPU (shared 2-core machine, nice 10, 1 torch thread, other jobs running)",
    }
    result["targets_met"] = {"s2ft_mixed_8_over_base_only>=0.9": result["s2ft_mixed_8_over_base_only"] >= 0.9,
                             "base_only_over_generate>=0.9": result["base_only_over_generate"] >= 0.9}
    if not all(result["targets_met"].values()):
        result["profile"] = {"generate": profile(run["generate"]),
                             **{m: split_scheduler(engines[m], batches[m], args.new) for m in ("base_only", "s2ft_mixed_8")}}
    engines.clear()  # free the three copies of the base before the memory measurement
    per_rank = sum(sum(hf.get_submodule(smap.ref(layer, r).path).weight.shape)
                   for layer in range(smap.num_layers) for r in ("o", "down"))
    rank = max(1, round(adapters[0].numel / per_rank))
    result["memory_per_resident_adapter"] = adapter_memory(loaded, hf, smap, tmp, folders, rank)
    shutil.rmtree(tmp, ignore_errors=True)
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("profile_top_tottime", "tokens_per_s_rounds")}, indent=1))


if __name__ == "__main__":
    main()
