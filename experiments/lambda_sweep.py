"""Claim 2 — linearization paper, Table 1: the pull toward θ0 keeps the run linear; the selective pull keeps accuracy.

    python -m experiments.lambda_sweep [--quick] [--model minilm,smollm2-135m]

LoRA (r = 8, q,v of the first, middle and last layers; plus the new head of an encoder) on sst2 with the pull (λ/2)‖θ − θ0‖² in two forms —
plain (``reg=l2``) and selective (``reg=selective``, only where ∇R·(θ − θ0) ≥ 0, paper eq. 8) — for each λ,
same seed, data and schedule. The paper's columns per run: ‖θt − θ0‖, the linearization gap ‖f − f̄‖ and
KL(f‖f̄) on a fixed probe set, and eval accuracy. The claim holds when the distances fall as λ grows for both
forms and the selective pull keeps at least the plain pull's accuracy at the largest λ.

Default: both models, λ ∈ {0, 1, 10, 100}, 128 training examples, 60 steps (MiniLM) / 30 steps (SmolLM2).
Quick: MiniLM, λ ∈ {0, 10, 100}, 32 examples, 12 steps. λ = 0 is one unregularized run shared by both forms.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from . import common

DOC = __doc__
NAME = "lambda_sweep"
CLAIM = common.Claim(
    claim_id="2", paper="linearization", where="Table 1",
    paper_claim="a larger λ keeps fine-tuning in the linear regime; the selective pull does so without losing accuracy",
    paper_figure="‖θt−θ0‖, ‖f−f̄‖ and KL fall as λ grows; selective keeps eval accuracy",
)
COLUMNS = ("eval_metric", "eval_loss", "theta_dist", "lin_gap", "lin_kl", "output_shift")
REGS = {"plain": "l2", "selective": "selective"}


def settings(ctx: common.Context, model: str) -> dict:
    small = model != "smollm2-135m"
    steps = ctx.train_steps(ctx.pick(12, 60 if small else 30))
    return {"task": "sst2", "lams": ctx.pick([0.0, 10.0, 100.0], [0.0, 1.0, 10.0, 100.0]),
            "n_train": ctx.pick(32, 128), "steps": steps, "n_eval": ctx.pick(32, 64),
            "eval_every": max(1, steps // 3), "lr": 1e-3}


def sweep(ctx: common.Context, model: str) -> tuple[dict, list[dict]]:
    """One row per (form, λ) for ``model``; the λ = 0 run is shared."""
    mctx = common.Context(ctx.name, ctx.quick, model, ctx.steps, ctx.seed, ctx.out_root, ctx.runs_root, ctx.data)
    s = settings(ctx, model)
    params = _params(model)
    rows = []
    for form, lam in itertools.product(REGS, s["lams"]):
        reg = REGS[form] if lam > 0 else "none"
        label = f"{model}-{reg}-lam{lam:g}"
        config = {"model": model, "reg": reg, "lam": lam, "params": params, **s, "lams": None}

        def compute(reg=reg, lam=lam, label=label):
            return {"train": common.train(mctx, label, task=ctx.task(s["task"]), method="lora",
                                          method_options={"params": params}, reg=reg, lam=lam, lr=s["lr"],
                                          n_train=s["n_train"], max_steps=s["steps"], n_eval=s["n_eval"],
                                          eval_every=s["eval_every"])}

        rec = common.cached(mctx, label, config, compute)
        last = common.last_eval(rec["train"])
        rows.append({"model": model, "form": form, "lam": lam, "steps": rec["train"]["summary"]["steps"],
                     **{k: last.get(k) for k in COLUMNS}})
    return s, rows


def _params(model: str) -> str:
    n = common.num_layers(model)
    layers = ",".join(str(i) for i in dict.fromkeys((0, n // 2, n - 1)))
    return common.with_head(model, f"lora(r=8):q,v@{layers}")


def _non_increasing(values: list) -> bool:
    vals = [v for v in values if v is not None]
    return len(vals) >= 2 and all(a >= b * (1 - 1e-9) for a, b in itertools.pairwise(vals))


def main(argv: Sequence[str] | None = None) -> dict:
    ctx, _ = common.parse(NAME, DOC, argv, model="")
    models = [m for m in (ctx.model or ctx.pick("minilm", "minilm,smollm2-135m")).split(",") if m]
    ctx.model = ",".join(models)
    per_model, all_rows, settings_by_model = {}, [], {}
    for model in models:
        s, rows = sweep(ctx, model)
        settings_by_model[model] = s
        all_rows += rows
        checks = {}
        for form in REGS:
            fr = sorted((r for r in rows if r["form"] == form), key=lambda r: r["lam"])
            checks[f"{form}_theta_dist_falls"] = _non_increasing([r["theta_dist"] for r in fr])
            checks[f"{form}_lin_gap_falls"] = _non_increasing([r["lin_gap"] for r in fr])
        top = max(s["lams"])
        acc = {form: next(r["eval_metric"] for r in rows if r["form"] == form and r["lam"] == top) for form in REGS}
        checks["selective_keeps_accuracy"] = acc["selective"] >= acc["plain"]
        per_model[model] = {"checks": checks, "accuracy_at_max_lam": acc, "max_lam": top}
    dist_ok = {m: all(v for k, v in p["checks"].items() if k != "selective_keeps_accuracy") for m, p in per_model.items()}
    acc_ok = {m: p["checks"]["selective_keeps_accuracy"] for m, p in per_model.items()}
    if all(dist_ok.values()) and all(acc_ok.values()):
        verdict, why = "holds", "the distances fall with λ for both pulls and the selective pull keeps accuracy"
    elif any(dist_ok.values()) or any(acc_ok.values()):
        failed = [f"{m}: {k}" for m, p in per_model.items() for k, v in p["checks"].items() if not v]
        verdict, why = "partly", "failed checks — " + "; ".join(failed)
    else:
        verdict, why = "does not", "neither the distances fall with λ nor does the selective pull keep accuracy"
    fig, axes = common.figure(4, len(models), size=(3.3, 2.8))
    for i, model in enumerate(models):
        for j, key in enumerate(("theta_dist", "lin_gap", "lin_kl", "eval_metric")):
            ax = axes[i][j]
            for form in REGS:
                fr = sorted((r for r in all_rows if r["model"] == model and r["form"] == form), key=lambda r: r["lam"])
                ax.plot([r["lam"] for r in fr], [r[key] for r in fr], "o-", label=form)
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_title(f"{model}: {key}", fontsize=8)
            ax.set_xlabel("λ")
        axes[i][0].legend(fontsize=7)
    parts = []
    for model in models:
        fr = {form: sorted((r for r in all_rows if r["model"] == model and r["form"] == form), key=lambda r: r["lam"])
              for form in REGS}
        sel = fr["selective"]
        parts.append(f"{model}: ‖θ−θ0‖ {common.fmt(sel[0]['theta_dist'])}→{common.fmt(sel[-1]['theta_dist'])}, "
                     f"‖f−f̄‖ {common.fmt(sel[0]['lin_gap'])}→{common.fmt(sel[-1]['lin_gap'])} (selective, λ 0→"
                     f"{sel[-1]['lam']:g}); acc at λ={sel[-1]['lam']:g} selective "
                     f"{common.fmt(sel[-1]['eval_metric'])} vs plain {common.fmt(fr['plain'][-1]['eval_metric'])}")
    return common.write_claim(
        ctx, CLAIM, fig, our_figure="; ".join(parts), verdict=verdict, why=why,
        data={"settings": settings_by_model, "rows": all_rows, "per_model": per_model})


if __name__ == "__main__":
    main()
