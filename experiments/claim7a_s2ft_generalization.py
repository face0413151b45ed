"""Claim 7(a) — S2FT paper: at equal trainable parameters S2FT forgets less and generalizes better than LoRA.

    python -m experiments.claim7a_s2ft_generalization [--quick] [--model smollm2-135m]

S2FT (o and down projections, 10% of heads/channels, strategy R) and PEFT LoRA on the same module types with
the rank that matches S2FT's trainable count are trained on sst2 with the same data and schedule. Each
fine-tuned model is then evaluated in-distribution (sst2), on near-out-of-distribution sentiment tasks
(cr, mr: same label words, other text) and on far-out-of-distribution tasks with their own label words
(cola; stsb in the default mode), against the pretrained base — through ``tangentft.taskvec.add`` with one
run and α = 1, i.e. the fine-tuned model itself. Forgetting = base − fine-tuned metric on the far tasks;
generalization = fine-tuned − base on the near tasks.

Default: 256 examples, 60 steps, 128 evaluation examples per task. Quick: 64 examples, 10 steps evaluated at the
end only (linearization probe of 8), 32 evaluation examples per task (sst2, cr, cola).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tangentft.errors import TangentError

from . import common

DOC = __doc__
NAME = "claim7a_s2ft_generalization"
S2FT_TYPES = "o:0.1,down:0.1"
CLAIM = common.Claim(
    claim_id="7a", paper="S2FT", where="generalization (§5)",
    paper_claim="at equal trainable parameters S2FT forgets less and generalizes better out of distribution than LoRA",
    paper_figure="S2FT above LoRA on out-of-distribution tasks, with less forgetting",
)


def lora_rank_matching(model: str, trainable: int, roles: Sequence[str]) -> int:
    """LoRA rank whose trainable count r·Σ(d_in + d_out) over ``roles`` of every layer is closest to ``trainable``."""
    from tangentft.models.registry import load_model

    smap = load_model(model).structure
    per_rank = smap.num_layers * sum(smap.in_features(r) + smap.out_features(r) for r in roles)
    return max(1, round(trainable / per_rank))


def evaluate_on(ctx: common.Context, label: str, run_dir, tasks: list[str], n_eval: int) -> dict:
    """Base vs fine-tuned metric on each task (``taskvec.add`` with the one run at α = 1), cached."""
    from tangentft.taskvec.ops import add

    # The run by its folder name (its label and settings hash), not its path: the cache holds wherever --runs points.
    config = {"model": ctx.model, "run": run_dir.name, "tasks": tasks, "n_eval": n_eval}
    return common.cached(ctx, f"eval-{label}", config, lambda: {"add": add(
        [str(run_dir)], alphas=[1.0], eval_tasks=[ctx.task(t) for t in tasks], n_eval=n_eval, n_val=0,
        seed=ctx.seed, out=run_dir / "eval_add")})


def settings(ctx: common.Context) -> dict:
    s = {"task": "sst2", "n_train": ctx.pick(64, 256), "steps": ctx.train_steps(ctx.pick(10, 60)),
         "n_eval": ctx.pick(32, 128), "near": ["cr"] if ctx.quick else ["cr", "mr"],
         "far": ["cola"] if ctx.quick else ["cola", "stsb"], "lr": {"s2ft": 2e-4, "lora": 1e-3}}
    # Only the final model is compared, so the quick mode evaluates at the end alone and keeps the library's
    # linearization probe small: at 10 steps the mid-run evaluations and probes cost more than the steps.
    s["eval_every"] = s["steps"] if ctx.quick else max(1, s["steps"] // 2)
    if ctx.quick:
        s["probe_size"] = 8
    return s


def train_method(ctx: common.Context, method: str, task: str) -> tuple[dict, Path]:
    """(record, run folder) of the S2FT or the parameter-matched LoRA fine-tune on ``task`` (claim 8 reuses these)."""
    ctx = ctx.sibling(NAME)
    s = settings(ctx)
    fields = {"task": ctx.task(task), "n_train": s["n_train"], "max_steps": s["steps"], "n_eval": s["n_eval"],
              "eval_every": s["eval_every"], "lr": s["lr"][method],
              **({"probe_size": s["probe_size"]} if "probe_size" in s else {})}
    if method == "s2ft":
        opts = {"types": S2FT_TYPES, "strategy": "R"}
    else:
        s2ft, _ = train_method(ctx, "s2ft", task)
        r = lora_rank_matching(ctx.model, s2ft["train"]["summary"]["trainable_params"], ["o", "down"])
        opts = {"params": f"lora(r={r}):o,down@all"}
    label = f"{task}-{method}"
    rec = common.cached(ctx, label, {"model": ctx.model, **s, **fields, **opts},
                        lambda: {"train": common.train(ctx, label, method=method, method_options=opts, **fields)})
    return rec, common.run_dir_of(rec)


def main(argv: Sequence[str] | None = None) -> dict:
    ctx, _ = common.parse(NAME, DOC, argv, model="smollm2-135m")
    s = settings(ctx)
    runs = {m: train_method(ctx, m, s["task"]) for m in ("s2ft", "lora")}
    trainable = {m: rec["train"]["summary"]["trainable_params"] for m, (rec, _) in runs.items()}
    r = lora_rank_matching(ctx.model, trainable["s2ft"], ["o", "down"])
    tasks = [s["task"], *s["near"], *s["far"]]
    results = {}
    errors = {}
    for method, (_, run_dir) in runs.items():
        try:
            ev = evaluate_on(ctx, method, run_dir, tasks, s["n_eval"])
        except TangentError as exc:  # a library refusal is a result to report, not a reason to lose the others
            errors[method] = exc.message
            continue
        results[method] = {Path(t["task"]).name: t for t in ev["add"]["tasks"]}
    if errors:
        return common.write_claim(
            ctx, CLAIM, None, our_figure="fine-tunes trained; evaluation failed for " + ", ".join(errors),
            verdict="not testable", why="; ".join(f"{m}: {e}" for m, e in errors.items()), data={"settings": s, "trainable": trainable, "lora_rank": r, "errors": errors,
                                    "evaluated": {m: list(v.values()) for m, v in results.items()}})
    rows = []
    for method, per_task in results.items():
        for name, t in per_task.items():
            kind = "in-distribution" if name == s["task"] else ("near" if name in s["near"] else "far")
            rows.append({"method": method, "task": name, "kind": kind, "metric": t["metric"], "base": t["base"],
                         "finetuned": t["merged"], "delta": t["merged"] - t["base"]})

    def mean_delta(method, kind):
        return common.mean([r["delta"] for r in rows if r["method"] == method and r["kind"] == kind])

    d = {m: {k: mean_delta(m, k) for k in ("in-distribution", "near", "far")} for m in runs}
    if any(d[m][k] is None for m in runs for k in ("near", "far")):
        raise RuntimeError("claim 7a: a near or far task produced no metric")
    forgets_less = d["s2ft"]["far"] > d["lora"]["far"]
    generalizes = d["s2ft"]["near"] > d["lora"]["near"]
    if d["s2ft"] == d["lora"]:
        verdict, why = "not testable", "S2FT and LoRA change every metric by exactly the same amount (too few steps)"
    elif forgets_less and generalizes:
        verdict, why = "holds", "S2FT loses less on the far tasks and gains more on the near ones than LoRA"
    elif forgets_less or generalizes:
        verdict = "partly"
        why = "S2FT forgets less but generalizes no better" if forgets_less else "S2FT generalizes better but forgets no less"
    else:
        verdict, why = "does not", "LoRA forgets no more and generalizes at least as well at this scale"
    fig, axes = common.figure(1, size=(6, 3.4))
    names = list(dict.fromkeys(r["task"] for r in rows))
    for i, method in enumerate(runs):
        vals = [next(r["delta"] for r in rows if r["method"] == method and r["task"] == n) for n in names]
        axes[0][0].bar([j + (i - 0.5) * 0.4 for j in range(len(names))], vals, width=0.4, label=method)
    axes[0][0].set_xticks(range(len(names)), names)
    axes[0][0].axhline(0, color="k", lw=0.8)
    axes[0][0].set_ylabel("fine-tuned − base metric")
    axes[0][0].legend(fontsize=7)
    our = (f"mean Δ vs base (ID / near / far): S2FT {common.fmt(d['s2ft']['in-distribution'])} / "
           f"{common.fmt(d['s2ft']['near'])} / {common.fmt(d['s2ft']['far'])}, LoRA r={r} "
           f"{common.fmt(d['lora']['in-distribution'])} / {common.fmt(d['lora']['near'])} / {common.fmt(d['lora']['far'])}")
    return common.write_claim(
        ctx, CLAIM, fig, our_figure=our, verdict=verdict, why=why,
        data={"settings": s, "trainable": trainable,
              "lora_rank": r, "rows": rows, "mean_delta": d})


if __name__ == "__main__":
    main()
