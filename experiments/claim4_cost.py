"""Claim 4 — linearization paper, Table 3: the kernel analysis is cheaper than the fine-tune it informs.

    python -m experiments.claim4_cost [--quick] [--model minilm]

Reads claim 1's configurations (computing any that are missing, with claim 1's settings): for each task and
layer set, the wall time of ``analyze`` (model load, eNTK of n samples, spectrum, kernel ridge, Algorithm 2,
stopping rule, Lipschitz probes) against the training loop's wall time of the fine-tune of the same
selection (model load excluded, so the comparison favours training), and the analysis expressed in
training steps. Same process, same machine state, measured back to back.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import claim1_kappa, common

DOC = __doc__
NAME = "claim4_cost"
CLAIM = common.Claim(
    claim_id="4", paper="linearization", where="Table 3",
    paper_claim="computing the kernel and its analysis costs less than the fine-tune it informs",
    paper_figure="analysis time well below fine-tuning time",
)


def main(argv: Sequence[str] | None = None) -> dict:
    ctx, _ = common.parse(NAME, DOC, argv, model="minilm")
    s, recs = claim1_kappa.records(ctx)
    rows = []
    for r in recs:
        last = r["train"]["metrics"][-1]
        steps = r["train"]["summary"]["steps"]
        train_s = last["wall_s"]
        an_s = r["analysis"]["wall_s"]
        rows.append({"task": r["task"], "layer_set": r["layer_set"], "analyze_s": an_s,
                     "kernel_s": r["analysis"]["timings"].get("kernel_s"), "train_s": train_s, "steps": steps,
                     "ratio": an_s / train_s if train_s else None,
                     "analysis_in_steps": an_s / (train_s / steps) if train_s and steps else None})
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    cheaper = sum(x < 1 for x in ratios)
    med = sorted(ratios)[len(ratios) // 2] if ratios else None
    med_steps = sorted(r["analysis_in_steps"] for r in rows if r["analysis_in_steps"] is not None)
    med_steps = med_steps[len(med_steps) // 2] if med_steps else None
    if ratios and cheaper == len(ratios):
        verdict, why = "holds", "every analysis finished faster than the fine-tune it informs"
    elif cheaper:
        verdict, why = "partly", f"the analysis was cheaper in {cheaper} of {len(ratios)} configurations"
    else:
        verdict = "does not"
        why = (f"at CPU scale the fine-tunes are only {s['steps']} steps, shorter than one analysis "
               f"(≈ {common.fmt(med_steps)} training steps); the paper's fine-tunes run many epochs")
    fig, axes = common.figure(1, size=(6, 3.4))
    labels = [f"{r['task']}:{r['layer_set']}" for r in rows]
    x = range(len(rows))
    axes[0][0].bar([i - 0.2 for i in x], [r["analyze_s"] for r in rows], width=0.4, label="analyze")
    axes[0][0].bar([i + 0.2 for i in x], [r["train_s"] for r in rows], width=0.4, label=f"fine-tune ({s['steps']} steps)")
    axes[0][0].set_xticks(list(x), labels, rotation=60, fontsize=6)
    axes[0][0].set_ylabel("wall s (CPU, shared)")
    axes[0][0].legend(fontsize=7)
    our = (f"median analyze/fine-tune wall ratio {common.fmt(med)} ({cheaper}/{len(ratios)} cheaper); "
           f"one analysis ≈ {common.fmt(med_steps)} training steps")
    return common.write_claim(
        ctx, CLAIM, fig, our_figure=our, verdict=verdict, why=why,
        data={"settings": s, "rows": rows, "median_ratio": med, "median_analysis_in_steps": med_steps})


if __name__ == "__main__":
    main()
