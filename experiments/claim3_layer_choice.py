"""Claim 3 — linearization paper, Figure 3 / Algorithm 2: the kernel ranks which layer to add before training.

    python -m experiments.claim3_layer_choice [--quick] [--model minilm]

Base selection: the v projection of the last layer (trained in place; plus an encoder's new head). Candidates: the o projection of each
other layer. One ``analyze`` pass scores each candidate C by Algorithm 2's r_C = λmax(K + S_C + σI)/λmax(K + σI);
then the base plus each candidate is really fine-tuned (AdamW, same data and schedule), and the base alone
as the reference. Reported: Spearman(r_C, −final eval loss) and (r_C, eval accuracy), and whether
Algorithm 2's top pick is in the real top 2 (by eval loss).

Default: sst2, candidates o of every layer but the last, n = 32, 64 examples, 40 steps.
Quick: sst2, 3 candidates (first, middle, second-to-last layer), n = 16, 32 examples, 12 steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import common

DOC = __doc__
NAME = "claim3_layer_choice"
CLAIM = common.Claim(
    claim_id="3", paper="linearization", where="Figure 3 / Algorithm 2",
    paper_claim="ranking candidate layers by r_C picks the layer whose addition helps fine-tuning most",
    paper_figure="r_C order matches the fine-tuned accuracy order of the added layers",
)


def main(argv: Sequence[str] | None = None) -> dict:
    ctx, _ = common.parse(NAME, DOC, argv, model="minilm")
    n_layers = common.num_layers(ctx.model)
    last = n_layers - 1
    layers = list(range(last)) if not ctx.quick else sorted({0, last // 2, max(0, last - 1)})
    base = common.with_head(ctx.model, f"v@{last}")
    cands = "o@" + ",".join(str(i) for i in layers)
    s = {"task": "sst2", "base": base, "candidates": cands, "n_kernel": ctx.pick(16, 32),
         "n_train": ctx.pick(32, 64), "steps": ctx.train_steps(ctx.pick(12, 40)), "n_eval": ctx.pick(32, 64),
         "lr": 2e-4}
    s["eval_every"] = max(1, s["steps"] // 4)
    task = ctx.task(s["task"])
    an = common.cached(ctx, "analysis", {"model": ctx.model, **s},
                       lambda: {"analysis": common.analyze(ctx, task, base, cands, n=s["n_kernel"], n_eval=s["n_eval"])})
    scores = {c["groups"][0]: c["r_c"] for c in an["analysis"]["candidate_singles"]}

    def fine_tune(label: str, params: str) -> dict:
        config = {"model": ctx.model, "params": params, **s}
        return common.cached(ctx, label, config, lambda: {"train": common.train(
            ctx, label, task=task, method="full", method_options={"params": params}, lr=s["lr"],
            n_train=s["n_train"], max_steps=s["steps"], n_eval=s["n_eval"], eval_every=s["eval_every"])})

    ref = common.last_eval(fine_tune("base", base)["train"])
    rows = []
    for layer in layers:
        group = f"L{layer}.o"
        ev = common.last_eval(fine_tune(f"base+{group}", f"{base};o@{layer}")["train"])
        rows.append({"group": group, "r_c": scores.get(group), "eval_loss": ev.get("eval_loss"),
                     "accuracy": ev.get("eval_metric"), "train_loss": ev.get("train_loss")})
    rho_loss = common.spearman([r["r_c"] for r in rows], [-r["eval_loss"] for r in rows])
    rho_acc = common.spearman([r["r_c"] for r in rows], [r["accuracy"] for r in rows])
    top_pick = max(rows, key=lambda r: r["r_c"])["group"]
    real_order = [r["group"] for r in sorted(rows, key=lambda r: r["eval_loss"])]
    in_top2 = top_pick in real_order[:2]
    if len(rows) < 3:
        verdict, why = "not testable", f"{len(rows)} candidate layer(s): too few to compare two rankings"
    elif rho_loss is not None and rho_loss > 0 and in_top2:
        verdict, why = "holds", "Algorithm 2's order agrees with the real fine-tunes and its top pick is in the real top 2"
    elif (rho_loss is not None and rho_loss > 0) or in_top2:
        verdict = "partly"
        why = ("the top pick is in the real top 2 but the full order does not agree" if in_top2 else
               "the order agrees on balance but the top pick is not in the real top 2")
    else:
        verdict, why = "does not", "Algorithm 2's ranking does not agree with the real fine-tunes' eval loss"
    fig, axes = common.figure(2)
    axes[0][0].bar([r["group"] for r in rows], [r["r_c"] for r in rows])
    axes[0][0].set_ylabel("r_C (Algorithm 2)")
    axes[0][1].bar([r["group"] for r in rows], [r["eval_loss"] for r in rows], color="C1")
    axes[0][1].axhline(ref.get("eval_loss", float("nan")), color="k", lw=0.8, ls="--", label="base only")
    axes[0][1].set_ylabel("eval loss after fine-tuning")
    axes[0][1].legend(fontsize=7)
    for ax in axes[0]:
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    our = (f"Spearman(r_C, −eval loss) {common.fmt(rho_loss)}, (r_C, acc) {common.fmt(rho_acc)}; "
           f"top pick {top_pick} is {'in' if in_top2 else 'not in'} the real top 2 ({', '.join(real_order[:2])})")
    return common.write_claim(
        ctx, CLAIM, fig, our_figure=our, verdict=verdict, why=why,
        data={"settings": s, "rows": rows, "base_only": ref, "spearman_rc_neg_eval_loss": rho_loss,
              "spearman_rc_accuracy": rho_acc, "top_pick": top_pick, "real_order_by_eval_loss": real_order,
              "top_pick_in_real_top2": in_top2})


if __name__ == "__main__":
    main()
