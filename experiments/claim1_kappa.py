"""Claim 1 — linearization paper, Tables 2 and 5: the condition number κ(K + σI) predicts fine-tuned accuracy.

    python -m experiments.claim1_kappa [--quick] [--model minilm]

For each task and each LoRA (r = 8) layer set — q,v of {first}, {last}, {first,last}, {first,mid,last}, and k
of {first,mid,last}; an encoder's new head trains with every set — one ``analyze`` pass (n kernel samples) gives κ(K + σI) (σ = 1e-4, paper §4) and the
eigenvalue decay β; then the same selection is fine-tuned (AdamW, selective pull λ = 1, 10 epochs of a small
training sample). The paper reports a negative correlation between κ and accuracy; we report Spearman(κ,
accuracy) across layer sets within each task, and across tasks at each fixed layer set.

Default: sst2, cr, mr, cola × 5 layer sets, n = 32, 64 training examples × 10 epochs (80 steps).
Quick: sst2, cola × 3 layer sets, n = 16, 32 examples × 4 epochs (16 steps).
Claims 4 (analysis vs fine-tune wall time) and 5 (β vs learning curves) read these same records.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import common

DOC = __doc__
NAME = "claim1_kappa"
CLAIM = common.Claim(
    claim_id="1", paper="linearization", where="Tables 2 and 5",
    paper_claim="κ(K+σI) of the trained layers predicts accuracy: lower κ, higher accuracy",
    paper_figure="negative correlation between κ and accuracy across layer choices and tasks",
)


def layer_sets(model: str, quick: bool) -> list[tuple[str, str]]:
    """(label, LoRA selection spec) for the paper's layer sets, resolved to this model's layer count (plus an
    encoder's new head, which trains with every set)."""
    n_layers = common.num_layers(model)
    first, mid, last = 0, n_layers // 2, n_layers - 1
    fml = ",".join(str(i) for i in dict.fromkeys((first, mid, last)))
    sets = [("first", f"lora(r=8):q,v@{first}"), ("last", f"lora(r=8):q,v@{last}"),
            ("first_last", f"lora(r=8):q,v@{first},{last}"), ("first_mid_last", f"lora(r=8):q,v@{fml}"),
            ("k_first_mid_last", f"lora(r=8):k@{fml}")]
    sets = [(label, common.with_head(model, spec)) for label, spec in sets]
    return [s for s in sets if s[0] in ("first", "last", "first_mid_last")] if quick else sets


def settings(ctx: common.Context) -> dict:
    n_train = ctx.pick(32, 64)
    epochs = ctx.pick(4, 10)
    steps = ctx.train_steps(epochs * -(-n_train // 8))
    return {"tasks": ctx.pick(["sst2", "cola"], ["sst2", "cr", "mr", "cola"]), "n_kernel": ctx.pick(16, 32),
            "n_train": n_train, "steps": steps, "eval_every": max(1, min(steps, -(-n_train // 8))),
            "n_eval": ctx.pick(32, 64), "lam": 1.0, "lr": 1e-3}


def records(ctx: common.Context) -> tuple[dict, list[dict]]:
    """Every (task, layer set) record — analysis + fine-tune — computing only those not cached yet."""
    ctx = ctx.sibling(NAME)
    s = settings(ctx)
    sets = layer_sets(ctx.model, ctx.quick)
    out = []
    for task in s["tasks"]:
        for label, params in sets:
            config = {"model": ctx.model, "task": task, "params": params, **s, "tasks": None}

            def compute(task=task, params=params, label=label):
                an = common.analyze(ctx, ctx.task(task), params, n=s["n_kernel"], n_eval=s["n_eval"])
                tr = common.train(ctx, f"{task}-{label}", task=ctx.task(task), method="lora",
                                  method_options={"params": params}, reg="selective", lam=s["lam"], lr=s["lr"],
                                  n_train=s["n_train"], max_steps=s["steps"], n_eval=s["n_eval"],
                                  eval_every=s["eval_every"])
                return {"task": task, "layer_set": label, "params": params, "analysis": an, "train": tr}

            out.append(common.cached(ctx, f"{task}-{label}", config, compute))
    return s, out


def main(argv: Sequence[str] | None = None) -> dict:
    ctx, _ = common.parse(NAME, DOC, argv, model="minilm")
    s, recs = records(ctx)
    rows = []
    for r in recs:
        ev = common.last_eval(r["train"])
        rows.append({"task": r["task"], "layer_set": r["layer_set"], "params": r["params"],
                     "kappa": r["analysis"]["kappa"], "beta": r["analysis"]["decay_beta"],
                     "train_loss": ev.get("train_loss"), "eval_loss": ev.get("eval_loss"),
                     "accuracy": ev.get("eval_metric"), "zero_shot": r["analysis"]["zero_shot_metric"]})
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    sets = list(dict.fromkeys(r["layer_set"] for r in rows))
    within = {t: common.spearman([r["kappa"] for r in rows if r["task"] == t],
                                 [r["accuracy"] for r in rows if r["task"] == t]) for t in tasks}
    across = {c: common.spearman([r["kappa"] for r in rows if r["layer_set"] == c],
                                 [r["accuracy"] for r in rows if r["layer_set"] == c]) for c in sets}
    w_mean, a_mean = common.mean(within.values()), common.mean(across.values())
    undefined = [f"{t}" for t, v in within.items() if v is None] + [f"at {c}" for c, v in across.items() if v is None]
    caveat = f" ({len(undefined)} of {len(within) + len(across)} correlations undefined: ties or < 3 points)" if undefined else ""
    if w_mean is None and a_mean is None:
        verdict, why = "not testable", "too few distinct κ or accuracy values for a rank correlation"
    elif w_mean is not None and a_mean is not None and w_mean < 0 and a_mean < 0:
        verdict, why = "holds", "κ and accuracy are negatively rank-correlated within tasks and across tasks" + caveat
    elif (w_mean is not None and w_mean < 0) or (a_mean is not None and a_mean < 0):
        which = "within tasks" if (w_mean is not None and w_mean < 0) else "across tasks"
        other = "undefined" if (w_mean is None or a_mean is None) else "not negative"
        verdict, why = "partly", f"the correlation is negative {which}; the other one is {other}" + caveat
    else:
        verdict, why = "does not", ("κ and accuracy are not negatively rank-correlated at this scale "
                                    f"(n = {s['n_kernel']} kernel samples, {s['steps']} steps)" + caveat)
    fig, axes = common.figure(2)
    for t in tasks:
        pts = [r for r in rows if r["task"] == t]
        axes[0][0].scatter([r["kappa"] for r in pts], [r["accuracy"] for r in pts], label=t)
    axes[0][0].set_xscale("log")
    axes[0][0].set_xlabel("κ(K + σI), σ = 1e-4")
    axes[0][0].set_ylabel("eval accuracy after fine-tuning")
    axes[0][0].legend(fontsize=7)
    labels = [f"in {t}" for t in tasks] + [f"at {c}" for c in sets]
    vals = [within[t] if within[t] is not None else 0.0 for t in tasks] + \
           [across[c] if across[c] is not None else 0.0 for c in sets]
    axes[0][1].barh(labels, vals, color=["C0"] * len(tasks) + ["C1"] * len(sets))
    axes[0][1].axvline(0, color="k", lw=0.8)
    axes[0][1].set_xlabel("Spearman(κ, accuracy)")
    our = (f"Spearman(κ, acc) within task mean {common.fmt(w_mean)} "
           f"({', '.join(f'{t} {common.fmt(v)}' for t, v in within.items())}); across tasks mean {common.fmt(a_mean)}")
    return common.write_claim(
        ctx, CLAIM, fig, our_figure=our, verdict=verdict, why=why,
        data={"settings": s, "rows": rows, "spearman_within_task": within, "spearman_across_tasks": across})


if __name__ == "__main__":
    main()
