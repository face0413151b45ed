"""Claim 8 — early-stopping paper §5.2: low cross-task kernel alignment ⇒ task-vector addition works.

    python -m experiments.claim8_taskvec_alignment [--quick] [--model smollm2-135m]

This is the alignment-vs-harm study only (the merge-method comparison of the task-arithmetic experiment is
separate). For LoRA and for S2FT task vectors (the parameter-matched fine-tunes of claim 7(a), reused), on
each pair of tasks: the normalized cross-kernel alignment ‖K(X1,X2)‖_F / sqrt(‖K(X1,X1)‖_F‖K(X2,X2)‖_F) at θ0
over the parameters the vectors touch (``tangentft.taskvec.compare``, paper Assumption 5.1), and how much
adding the pair hurts each task: 1 − merged/own metric (``tangentft.taskvec.add``; α grid-searched on
validation in the default mode, α = 1 in the quick mode). The claim holds when harm rises with alignment
(Spearman > 0 over the (pair, task) points) for both kinds of task vector.

Default: sst2, cola, cr (3 pairs, 6 points per kind), 16 kernel samples per task, 64 test examples.
Quick: sst2, cola (1 pair: reported, too few points for a rank correlation), 8 kernel samples, 32 examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from . import claim7a_s2ft_generalization as c7a
from . import common

DOC = __doc__
NAME = "claim8_taskvec_alignment"
CLAIM = common.Claim(
    claim_id="8", paper="early-stopping", where="§5.2",
    paper_claim="tasks whose kernels are weakly aligned at θ0 can be added as task vectors without hurting each other",
    paper_figure="low cross-task kernel alignment ⇒ merged ≈ own performance",
)
KINDS = ("lora", "s2ft")


def main(argv: Sequence[str] | None = None) -> dict:
    from tangentft.taskvec.ops import add, compare

    ctx, _ = common.parse(NAME, DOC, argv, model="smollm2-135m")
    s = {"tasks": ctx.pick(["sst2", "cola"], ["sst2", "cola", "cr"]), "n_kernel": ctx.pick(8, 16),
         "n_eval": ctx.pick(32, 64), "n_val": 32, "alpha_search": not ctx.quick}
    points, align = [], {}
    for kind in KINDS:
        dirs = {t: c7a.train_method(ctx, kind, t)[1] for t in s["tasks"]}
        # Runs by folder name (label and settings hash), not path: the cache holds wherever --runs points.
        cfg = {"model": ctx.model, "kind": kind, "runs": [d.name for d in dirs.values()], **s}
        cmp_rec = common.cached(ctx, f"compare-{kind}", cfg, lambda dirs=dirs: {
            "compare": compare([str(d) for d in dirs.values()], n_kernel=s["n_kernel"], seed=ctx.seed)})
        a = cmp_rec["compare"]["kernel_alignment"]
        align[kind] = {"tasks": s["tasks"], "matrix": a, "cosine": cmp_rec["compare"]["cosine"]}
        for (i, ti), (j, tj) in itertools.combinations(enumerate(s["tasks"]), 2):
            pair = [dirs[ti], dirs[tj]]
            pcfg = {**cfg, "pair": [ti, tj]}
            rec = common.cached(ctx, f"add-{kind}-{ti}+{tj}", pcfg, lambda pair=pair, ti=ti, tj=tj, kind=kind: {
                "add": add([str(p) for p in pair], alphas=None if s["alpha_search"] else [1.0],
                           n_eval=s["n_eval"], n_val=s["n_val"], seed=ctx.seed,
                           out=ctx.runs_root / NAME / ctx.mode / f"add-{kind}-{ti}+{tj}")})
            for row, task in zip(rec["add"]["tasks"], (ti, tj), strict=True):
                harm = 1 - row["normalized"] if row["normalized"] is not None else None
                points.append({"kind": kind, "pair": f"{ti}+{tj}", "task": task, "alignment": a[i][j],
                               "own": row["own_finetune"], "merged": row["merged"], "base": row["base"],
                               "harm": harm, "alphas": rec["add"]["alphas"]})
    rho = {k: common.spearman([p["alignment"] for p in points if p["kind"] == k],
                              [p["harm"] for p in points if p["kind"] == k]) for k in KINDS}
    defined = {k: v for k, v in rho.items() if v is not None}
    if not defined:
        verdict = "not testable"
        why = (f"{len(list(itertools.combinations(s['tasks'], 2)))} task pair(s) give too few points for a rank "
               "correlation")
    elif all(v > 0 for v in defined.values()) and len(defined) == len(KINDS):
        verdict, why = "holds", "harm from addition rises with cross-task kernel alignment for LoRA and S2FT vectors"
    elif any(v > 0 for v in defined.values()):
        verdict = "partly"
        why = "harm rises with alignment only for " + ", ".join(k for k, v in defined.items() if v > 0)
    else:
        verdict, why = "does not", "harm from addition does not rise with cross-task kernel alignment"
    fig, axes = common.figure(1)
    for k in KINDS:
        pts = [p for p in points if p["kind"] == k]
        axes[0][0].scatter([p["alignment"] for p in pts], [p["harm"] for p in pts], label=f"{k} vectors")
        for p in pts:
            axes[0][0].annotate(f"{p['task']}|{p['pair']}", (p["alignment"], p["harm"] or 0), fontsize=5)
    axes[0][0].set_xlabel("cross-task kernel alignment at θ0")
    axes[0][0].set_ylabel("harm = 1 − merged/own")
    axes[0][0].axhline(0, color="k", lw=0.8)
    axes[0][0].legend(fontsize=7)
    parts = []
    for k in KINDS:
        pts = [p for p in points if p["kind"] == k]
        parts.append(f"{k}: Spearman(alignment, harm) {common.fmt(rho[k])}, alignment "
                     f"{common.fmt(min(p['alignment'] for p in pts))}–{common.fmt(max(p['alignment'] for p in pts))}, "
                     f"harm {common.fmt(min((p['harm'] for p in pts if p['harm'] is not None), default=None))}–"
                     f"{common.fmt(max((p['harm'] for p in pts if p['harm'] is not None), default=None))}")
    return common.write_claim(
        ctx, CLAIM, fig, our_figure="; ".join(parts), verdict=verdict, why=why,
        data={"settings": s, "alignment": align, "points": points, "spearman_alignment_harm": rho})


if __name__ == "__main__":
    main()
