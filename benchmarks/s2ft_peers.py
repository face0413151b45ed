"""S2FT vs the sparse tuners PEFT ships (SHiRA, Super-Tuning), PEFT LoRA and full fine-tuning, at equal
trainable parameters (issue 22, "Sparse fine-tuning").

    python benchmarks/s2ft_peers.py --out benchmarks/results/s2ft_peers.json [--parts cost,accuracy]

Every adapter trains S2FT's modules: ``o`` and ``down`` of every layer (S2FT paper defaults, 10% of heads /
channels, strategy R — the setting of ``benchmarks/s2ft_train.py``). The others get S2FT's trainable count N on
those modules:

* ``shira`` — PEFT ``ShiraConfig`` (random mask): r·(d_in + d_out) entries per module, the LoRA rank r that
  matches N (``s2ft_train._lora_per_rank``); SHiRA sizes itself like LoRA, so its count equals LoRA's.
* ``supertuning`` — PEFT ``SupertuningConfig`` (magnitude top-k support): sparsity 1 − N/Σ numel, so its count
  is N up to one entry per module (PEFT rounds each module down).
* ``lora`` — PEFT LoRA, the same rank r; ``full`` — every parameter.

An encoder (MiniLM) also trains its new task head in every method; the counts above exclude it.

**cost** (``--sizes``, batch × tokens as in ``s2ft_train.py``: random tokens, cross-entropy on the label-word
logits, AdamW), each method in its own subprocess (peak RSS per method), ``--rounds`` rounds in alternating
order, 1 torch thread: ``step_s`` the median CPU seconds of a step, ``peak_gb`` peak RSS, ``saved_gb`` what
autograd saves for backward (``s2ft_train._saved_activation_gb``: exact, unlike RSS on a shared machine),
``disk_mb`` the trained update as the method saves it, ``switch_ms`` (median CPU milliseconds) the swap between two trained adapters of
the whole model as it would be served (weights merged): S2FT through ``tangentft.adapters.switch`` (restore
the old slices, add the new), PEFT tuners through ``unmerge_adapter``/``set_adapter``/``merge_adapter``, full
by copying every weight. ``load`` is ``os.getloadavg()`` at the start and end of each measurement.
With ``--profile`` the first round adds one step under torch.profiler per method (self CPU seconds per op).

**accuracy**: each method trained with the library's trainer (``tangentft.train.run.run_training``: same data
sample, order, schedule and step count) on two tasks, evaluated on held-out examples. SHiRA and Super-Tuning
go through a benchmark-local :class:`PeftSparseMethod`; the others are the library's methods.

Timings on a shared CPU are noisy: compare ratios within one run. Rerunning with the same ``--out`` resumes
(``<out>.partial.json`` keeps every finished measurement; training runs resume from their run folders).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import s2ft_train  # noqa: E402  (its helpers: RSS, saved activations, profiler, S2FT slice shapes, LoRA sizing)
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tangentft.methods.base import FineTuneMethod, MethodConfig, register_method  # noqa: E402

METHODS = ("s2ft", "shira", "supertuning", "lora", "full")
TYPES = "o:0.1,down:0.1"
SPARSE_PARAM = {"shira": "shira_weight", "supertuning": "supertuning_values"}
LR = {"s2ft": 2e-4, "shira": 2e-4, "supertuning": 2e-4, "lora": 1e-3, "full": 2e-5}
DATA = Path(os.environ.get("TANGENTFT_DATA", ROOT.parent / "shared" / "data"))


def roles_of(types: str) -> list[str]:
    """Module roles of an S2FT types string (``"o:0.1,down:0.1"`` -> ["o", "down"])."""
    return [t.split(":")[0] for t in types.split(",")]


def s2ft_count(structure, types: str) -> int:
    """S2FT's trainable count on ``types``: Σ of its delta sizes over every adapted module."""
    return sum(a * b for (a, b), _ in s2ft_train._slice_shapes(structure, types))


def matched_rank(structure, types: str) -> int:
    """LoRA/SHiRA rank r whose r·Σ(d_in + d_out) over the modules of ``types`` is closest to S2FT's count."""
    roles = roles_of(types)
    per_rank = structure.num_layers * sum(structure.in_features(r) + structure.out_features(r) for r in roles)
    return max(1, round(s2ft_count(structure, types) / per_rank))


def module_paths(structure, types: str) -> list[str]:
    """Paths of the modules of ``types`` in every layer."""
    return [structure.ref(layer, role).path for layer in range(structure.num_layers) for role in roles_of(types)]


@dataclass
class PeftSparseConfig(MethodConfig):
    """A PEFT sparse tuner on S2FT's modules at S2FT's trainable count."""

    types: str = field(default=TYPES, metadata={"help": "S2FT module types and ratios whose modules and count to match."})


class PeftSparseMethod(FineTuneMethod):
    """Trains PEFT's own sparse tuner ``name`` (SHiRA or Super-Tuning) on the modules and at the trainable
    count of S2FT ``types``; an encoder's new task head trains too. Benchmark-local: the library's methods are
    S2FT, LoRA and full."""

    config_class = PeftSparseConfig

    def peft_config(self, structure, init: bool = True):
        """The PEFT config: SHiRA with the matched rank, or Super-Tuning with sparsity 1 − N/Σ numel."""
        from peft import ShiraConfig, SupertuningConfig

        paths = module_paths(structure, self.config.types)
        if self.name == "shira":
            return ShiraConfig(r=matched_rank(structure, self.config.types), target_modules=paths,
                               random_seed=self.config.seed, init_weights=init)
        numel = sum(structure.in_features(r) * structure.out_features(r) for r in roles_of(self.config.types))
        keep = s2ft_count(structure, self.config.types) / (numel * structure.num_layers)
        # PEFT floors numel·(1 − sparsity) per module: a hair over keep so float error never drops an entry
        return SupertuningConfig(sparsity=1.0 - keep * (1 + 1e-9), target_modules=paths, init_weights=init)

    def prepare(self, task_model: nn.Module) -> nn.Module:
        """Inject the tuner into ``task_model.hf`` (kept as ``task_model.peft_model``), train only its values
        (and the encoder's head)."""
        from peft import get_peft_model

        peft_model = get_peft_model(task_model.hf, self.peft_config(task_model.structure))
        object.__setattr__(task_model, "peft_model", peft_model)
        for n, p in task_model.named_parameters():
            p.requires_grad_(f".{SPARSE_PARAM[self.name]}." in n)
        if task_model.head is not None:
            for p in task_model.head.parameters():
                p.requires_grad_(True)
        return task_model

    def save(self, model: nn.Module, out_dir: Path) -> None:
        """PEFT adapter folder ``out_dir/adapter`` (an encoder's head travels in it, as for LoRA)."""
        from tangentft.methods.lora import save_peft_adapter

        save_peft_adapter(model.peft_model, Path(out_dir) / "adapter", head=model.head)


@register_method
class ShiraMethod(PeftSparseMethod):
    """SHiRA (PEFT ``ShiraConfig``): a random sparse mask of each weight, sized like LoRA."""

    name = "shira"


@register_method
class SupertuningMethod(PeftSparseMethod):
    """Super-Tuning (PEFT ``SupertuningConfig``): the largest-magnitude entries of each weight."""

    name = "supertuning"


def method_for(name: str, task_model, seed: int = 0) -> FineTuneMethod:
    """The method object ``name`` trains with (library methods for s2ft/lora/full), with its config."""
    from tangentft.methods.base import get_method

    options = method_options(name, task_model.structure, task_model.head is not None)
    return get_method(name)(get_method(name).config_class.from_options(name, {**options, "seed": seed}))


def method_options(name: str, structure, encoder: bool) -> dict:
    """Trainer ``method_options`` of ``name``: S2FT's types (matched by the sparse tuners); LoRA's matched rank
    on the same modules, plus an encoder's new head (S2FT and the sparse tuners train it by default)."""
    if name in ("s2ft", *SPARSE_PARAM):
        return {"types": TYPES}
    if name == "lora":
        head = ";head" if encoder else ""
        return {"params": f"lora(r={matched_rank(structure, TYPES)}):{','.join(roles_of(TYPES))}@all{head}"}
    return {}


def adapter_count(task_model) -> int:
    """Trainable entries outside the encoder's task head (the count the methods are matched on)."""
    head = {id(p) for p in task_model.head.parameters()} if task_model.head is not None else set()
    return sum(p.numel() for p in task_model.parameters() if p.requires_grad and id(p) not in head)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(median CPU, min wall) milliseconds of ``fn`` after one warm-up call. CPU time like the step times: on
    this oversubscribed machine a process gets ~10% of a core, so a wall-clock median is mostly waiting."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        t0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - t0)
        wall.append(time.perf_counter() - w0)
    return 1e3 * statistics.median(cpu), 1e3 * min(wall)


@torch.no_grad()
def switch_ms(name: str, task_model, model_name: str, repeats: int) -> tuple[float, float]:
    """Swap between two trained adapters of the whole model with their weights merged, as served."""
    if name == "s2ft":
        from tangentft.adapters import SparseAdapter, SparseDelta, merge, switch
        from tangentft.adapters.sparse import extract
        from tangentft.models.registry import load_model

        a = extract(task_model, "a")
        gen = torch.Generator().manual_seed(1)
        b = SparseAdapter("b", [SparseDelta(d.path, d.axis, d.index, torch.randn(d.values.shape, generator=gen) * 1e-3)
                                for d in a.deltas], a.fingerprints)
        base = load_model(model_name).model  # the served base: un-permuted weights, no S2FT layers
        state = {"record": merge(base, a, check=False), "cur": a, "next": b}

        def go():
            state["record"] = switch(base, state["record"], state["next"], check=False)
            state["cur"], state["next"] = state["next"], state["cur"]

        return _timed(go, repeats)
    if name == "full":
        params = [p for p in task_model.parameters()]
        other = [p.detach().clone() for p in params]
        saved = [p.detach().clone() for p in params]
        state = {"src": other, "dst": saved}

        def go():
            for p, src in zip(params, state["src"], strict=True):
                p.copy_(src)
            state["src"], state["dst"] = state["dst"], state["src"]

        return _timed(go, max(3, repeats // 4))
    import copy

    pm = task_model.peft_model
    config = copy.deepcopy(pm.peft_config["default"])
    if name == "lora":
        config.init_lora_weights = False
    else:
        config.init_weights = False
    config.inference_mode = True
    with torch.random.fork_rng(devices=[]):
        pm.add_adapter("b", config)
    pm.base_model.set_adapter("default")
    pm.merge_adapter()
    state = {"cur": "default"}

    def go():
        state["cur"] = "b" if state["cur"] == "default" else "default"
        pm.unmerge_adapter()
        pm.base_model.set_adapter(state["cur"])
        pm.merge_adapter()

    return _timed(go, repeats)


def measure(name: str, args) -> dict:
    """One method's cost at ``args.size`` on ``args.model`` (run in its own process)."""
    from tangentft.data.types import TaskSpec
    from tangentft.models.registry import load_model
    from tangentft.models.task_model import build_task_model

    load0 = os.getloadavg()[0]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, tokens = (int(x) for x in args.size.split("x"))
    spec = TaskSpec("sst2", "classification", "Review: {sentence}\nSentiment:", [" negative", " positive"])
    tm = build_task_model(load_model(args.model, attn_implementation="eager"), spec, seed=0)
    loaded_gb = s2ft_train._rss_gb()
    method = method_for(name, tm)
    method.prepare(tm)
    params = [p for p in tm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    vocab = tm.hf.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (batch, tokens), generator=gen)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, tm.num_outputs, (batch,), generator=gen)
    tm.train()

    def loss_fn():
        return torch.nn.functional.cross_entropy(tm(ids, mask), labels)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    times, walls = s2ft_train.time_steps(step, args.warmup, args.steps)
    peak = s2ft_train._rss_gb()
    saved, _ = s2ft_train._saved_activation_gb(loss_fn, tm)
    out = {"step_s": statistics.median(times), "step_wall_s": statistics.median(walls), "peak_gb": peak,
           "train_extra_gb": peak - loaded_gb, "saved_gb": saved, "trainable": adapter_count(tm),
           "trainable_all": sum(p.numel() for p in params)}
    if args.profile:
        out["profile"] = s2ft_train._profile_step(step, top=15)
    tm.eval()
    with tempfile.TemporaryDirectory() as tmp:
        method.save(tm, Path(tmp))
        out["disk_mb"] = _dir_bytes(Path(tmp)) / 1e6
    out["switch_ms"], out["switch_wall_min_ms"] = switch_ms(name, tm, args.model, args.switch_repeats)
    out["load"] = [load0, os.getloadavg()[0]]
    return out


# -- accuracy ------------------------------------------------------------------------------------------------
def dense_shira_delta() -> None:
    """Build SHiRA's delta densely (``index_put`` of the same values at the same indices) instead of as a
    sparse COO tensor: the same function and gradients, but differentiable in forward mode, which the trainer's
    linearization probe (``jvp``) needs and torch lacks for ``sparse_coo_tensor``. Accuracy runs only; the
    cost rows time PEFT's code unchanged."""
    from peft.tuners.shira.layer import Linear

    def get_delta_weight(self, adapter):
        idx = self.shira_indices[adapter].to(self.shira_weight[adapter].device).long()
        values = self.shira_weight[adapter] * self.scaling[adapter]
        return values.new_zeros(self.out_features, self.in_features).index_put((idx[0], idx[1]), values)

    Linear.get_delta_weight = get_delta_weight


def train_row(model: str, task: str, name: str, args) -> dict:
    """Train ``name`` on ``task`` with the library's trainer (resumed if a previous run was killed); the
    record of its first and last evaluation (None with ``--finished-only`` when the run has not finished)."""
    from tangentft.models.registry import load_model
    from tangentft.train.config import TrainConfig
    from tangentft.train.run import run_training

    loaded = load_model(model)
    n_train, steps = args.acc[model]
    options = method_options(name, loaded.structure, loaded.kind == "encoder")
    fields = {"model": model, "task": str(DATA / task), "method": name, "method_options": options,
              "lr": LR[name], "max_steps": steps, "n_train": n_train, "n_eval": args.n_eval, "batch_size": 8,
              "eval_every": steps, "probe_size": 8, "seed": 0}
    key = hashlib.sha256(json.dumps({**fields, "task": task}, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = Path(args.runs) / model / f"{task}-{name}-{key}"
    if args.finished_only and not (run_dir / "summary.json").is_file():
        return None
    if not (run_dir / "summary.json").is_file():
        if name == "shira":
            dense_shira_delta()
        resume = (run_dir / "config.json").is_file() and (run_dir / "checkpoint.safetensors").is_file()
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        run_training(TrainConfig(**fields), run_dir, resume=resume, overwrite=not resume and run_dir.exists())
        (run_dir / "bench.json").write_text(json.dumps({"wall_s": time.perf_counter() - t0,
                                                        "load": [load0, os.getloadavg()[0]]}))
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if r.get("eval_metric") is not None]
    bench = json.loads((run_dir / "bench.json").read_text()) if (run_dir / "bench.json").is_file() else {}
    n_eval = json.loads((run_dir / "config.json").read_text())["data"]["eval"]["n"]
    final = evals[-1]["eval_metric"]
    return {"model": model, "task": task, "method": name, "n_train": n_train, "steps": summary["steps"],
            "lr": LR[name], "n_eval": n_eval, "trainable": summary["trainable_params"],
            "metric": evals[-1].get("eval_metric_name", "accuracy"), "base": evals[0]["eval_metric"],
            "final": final, "se": (final * (1 - final) / n_eval) ** 0.5, "final_loss": evals[-1].get("eval_loss"),
            "train_wall_s": bench.get("wall_s"), "load": bench.get("load"), "run": f"{model}/{run_dir.name}"}


# -- driver --------------------------------------------------------------------------------------------------
def _child(name: str, model: str, size: str, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        child_out = fh.name
    cmd = [sys.executable, __file__, "--out", child_out, "--only", name, "--model", model, "--size", size,
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--switch-repeats", str(args.switch_repeats)]
    subprocess.run(cmd + (["--profile"] if args.profile else []), check=True)
    one = json.loads(Path(child_out).read_text())
    os.unlink(child_out)
    return one


def summarize_cost(runs: list[dict]) -> list[dict]:
    """Per (model, size): each method's median over rounds, and its ratio to S2FT."""
    rows = []
    for model, size in dict.fromkeys((r["model"], r["size"]) for r in runs):
        row = {"model": model, "size": size, "methods": {}}
        for m in METHODS:
            mine = [r["result"] for r in runs if (r["model"], r["size"], r["method"]) == (model, size, m)]
            if not mine:
                continue
            row["methods"][m] = {
                **{k: statistics.median(r[k] for r in mine) for k in ("step_s", "step_wall_s", "switch_ms", "switch_wall_min_ms")},
                **{k: max(r[k] for r in mine) for k in ("peak_gb", "train_extra_gb")},
                **{k: mine[0][k] for k in ("saved_gb", "trainable", "trainable_all", "disk_mb")},
                "step_s_rounds": [r["step_s"] for r in mine], "load": [r["load"] for r in mine],
                **({"profile": mine[0]["profile"]} if "profile" in mine[0] else {}),
            }
        s = row["methods"].get("s2ft")
        if s:
            for v in row["methods"].values():
                v["over_s2ft"] = {k: v[k] / s[k] for k in ("step_s", "peak_gb", "saved_gb", "disk_mb", "switch_ms", "trainable")}
        sh = row["methods"].get("shira")
        if s and sh:
            row["targets_met"] = {"s2ft_step<shira": s["step_s"] < sh["step_s"],
                                  "s2ft_peak<shira": s["peak_gb"] < sh["peak_gb"],
                                  "s2ft_saved<shira": s["saved_gb"] < sh["saved_gb"]}
        rows.append(row)
    return rows


def figure(result: dict, path: Path) -> None:
    """Bars: each method's step time, peak memory and switch time over S2FT's per cost row; accuracy per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = result.get("cost", [])
    acc = result.get("accuracy", [])
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.8))
    colors = dict(zip(METHODS, ("C0", "C3", "C1", "C2", "C7"), strict=True))
    for ax, key, title in zip(axes[:4], ("step_s", "peak_gb", "saved_gb", "switch_ms"),
                              ("step CPU time / S2FT's", "peak RSS / S2FT's", "saved for backward / S2FT's",
                               "adapter switch / S2FT's (log)"), strict=True):
        labels = [f"{r['model'].split('-')[0]}\n{r['size']}" for r in cost]
        w = 0.8 / len(METHODS)
        for i, m in enumerate(METHODS):
            ys = [r["methods"].get(m, {}).get("over_s2ft", {}).get(key, float("nan")) for r in cost]
            ax.bar([j + (i - 2) * w for j in range(len(cost))], ys, w, label=m, color=colors[m])
        ax.set_xticks(range(len(cost)), labels, fontsize=8)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set_title(title, fontsize=9)
        if key == "switch_ms":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    ax = axes[4]
    groups = list(dict.fromkeys((r["model"], r["task"]) for r in acc))
    w = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        ys = [next((r["final"] for r in acc if (r["model"], r["task"], r["method"]) == g + (m,)), float("nan"))
              for g in groups]
        errs = [next((r["se"] for r in acc if (r["model"], r["task"], r["method"]) == g + (m,)), 0.0) for g in groups]
        ax.bar([j + (i - 2) * w for j in range(len(groups))], ys, w, yerr=errs, color=colors[m])
    ax.set_xticks(range(len(groups)), [f"{g[0].split('-')[0]}\n{g[1]}" for g in groups], fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_title("accuracy after the same steps (± binomial s.e.)", fontsize=9)
    fig.suptitle("S2FT vs PEFT sparse tuners (SHiRA, Super-Tuning), LoRA, full — equal trainable parameters; "
                 "CPU, 1 thread, shared 2-core machine", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: dict) -> str:
    """The README tables: per cost row and method the measured figures and their ratio to S2FT; accuracy."""
    lines = ["| model, batch × tokens | method | trainable | step (CPU s) | / S2FT | peak RSS GB | saved GB | disk MB "
             "| switch ms (CPU) | load |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result.get("cost", []):
        for m, v in row["methods"].items():
            loads = [x for pair in v["load"] for x in pair]
            lines.append(f"| {row['model']} {row['size'].replace('x', '×')} | {m} | {v['trainable']:,} | {v['step_s']:.3f} "
                         f"| {v.get('over_s2ft', {}).get('step_s', float('nan')):.2f} | {v['peak_gb']:.2f} "
                         f"| {v['saved_gb']:.3f} | {v['disk_mb']:.1f} | {v['switch_ms']:.1f} "
                         f"| {min(loads):.1f}–{max(loads):.1f} |")
    lines += ["", "| model | task | method | n_train | steps | lr | accuracy before → after (± s.e.) | train wall s | load |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result.get("accuracy", []):
        load = "–".join(f"{x:.1f}" for x in r["load"]) if r.get("load") else ""
        wall = f"{r['train_wall_s']:.0f}" if r.get("train_wall_s") else ""
        lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {r['n_train']} | {r['steps']} | {r['lr']:g} "
                     f"| {r['base']:.3f} → {r['final']:.3f} ± {r['se']:.3f} | {wall} | {load} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="cost,accuracy")
    ap.add_argument("--cost-rows", default="smollm2-135m:4x128,smollm2-135m:4x512,minilm:4x128,minilm:4x512")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="Runs per method and row, in alternating order")
    ap.add_argument("--switch-repeats", type=int, default=21)
    ap.add_argument("--profile", action="store_true", help="One profiled step per method in the first round")
    ap.add_argument("--acc-rows", default="minilm:sst2,minilm:cr,smollm2-135m:sst2,smollm2-135m:cr",
                    help="model:task pairs trained for accuracy, in this order")
    ap.add_argument("--acc-methods", default=",".join(METHODS))
    ap.add_argument("--acc-size", action="append", default=[],
                    help="model:n_train:steps (default minilm:1024:300, smollm2-135m:512:150)")
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--finished-only", action="store_true",
                    help="Collect the accuracy rows whose training has finished; train nothing")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "s2ft_peers"))
    ap.add_argument("--table", action="store_true", help="Print the README tables of --out and stop")
    ap.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        Path(args.out).write_text(json.dumps(measure(args.only, args)))
        return
    from tangentft.io import write_json

    if args.table:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    args.acc = {"minilm": (1024, 300), "smollm2-135m": (512, 150)}
    for s in args.acc_size:
        model, n, steps = s.split(":")
        args.acc[model] = (int(n), int(steps))
    partial = Path(str(args.out) + ".partial.json")
    state = json.loads(partial.read_text()) if partial.exists() else {"cost": [], "accuracy": []}
    if Path(args.out).exists():  # a finished result: keep its rows, add what is new
        old = json.loads(Path(args.out).read_text())
        state["cost"] = state["cost"] or old.get("cost_runs", [])
        state["accuracy"] = state["accuracy"] or old.get("accuracy", [])
    methods = args.methods.split(",")
    parts = args.parts.split(",")
    if "cost" in parts:
        for row in args.cost_rows.split(","):
            model, size = row.split(":")
            for k in range(args.rounds):
                # alternating order, so a load change on the shared machine favours no method
                for m in (methods if k % 2 == 0 else methods[::-1]):
                    if any((r["model"], r["size"], r["method"], r["round"]) == (model, size, m, k) for r in state["cost"]):
                        continue
                    print(f"[cost {model} {size} {m} round {k}] …", file=sys.stderr, flush=True)
                    one = _child(m, model, size, argparse.Namespace(**{**vars(args), "profile": args.profile and k == 0}))
                    state["cost"].append({"model": model, "size": size, "method": m, "round": k, "result": one})
                    write_json(partial, state)
                    print(f"   step {one['step_s']:.3f} s, peak {one['peak_gb']:.3f} GB, switch {one['switch_ms']:.2f} ms, "
                          f"trainable {one['trainable']}, load {one['load']}", file=sys.stderr, flush=True)
    if "accuracy" in parts:
        for row in args.acc_rows.split(","):
            model, task = row.split(":")
            for m in args.acc_methods.split(","):
                if any((r["model"], r["task"], r["method"]) == (model, task, m) for r in state["accuracy"]):
                    continue
                print(f"[accuracy {model} {task} {m}] …", file=sys.stderr, flush=True)
                rec = train_row(model, task, m, args)
                if rec is None:
                    continue
                state["accuracy"].append(rec)
                write_json(partial, state)
                print(f"   {rec['metric']} {rec['base']:.3f} -> {rec['final']:.3f}", file=sys.stderr, flush=True)
    result = {
        "setup": {"s2ft_types": TYPES, "threads": 1, "cost_steps": args.steps, "cost_warmup": args.warmup,
                  "rounds": args.rounds, "lr": LR, "batch_size_accuracy": 8, "n_eval": args.n_eval,
                  "peft": __import__("peft").__version__, "torch": torch.__version__,
                  "machine": "CPU, 1 torch thread, nice 10, 2-core machine shared with other developers' jobs; "
                             "load = os.getloadavg() 1-min at start/end of each measurement"},
        "cost": summarize_cost(state["cost"]), "cost_runs": state["cost"], "accuracy": state["accuracy"],
    }
    write_json(args.out, result)
    figure(result, Path(args.out).with_suffix(".png"))
    partial.unlink(missing_ok=True)
    print(json.dumps([{k: v for k, v in r.items() if k != "methods"} for r in result["cost"]], indent=1))


if __name__ == "__main__":
    main()
