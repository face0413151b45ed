"""Claim 5 — early-stopping paper §7.1 and §3.5: the eigenvalue decay β orders learning curves; T̂ finds the stop.

    python -m experiments.claim5_beta [--quick] [--model minilm]

Reads claim 1's configurations (computing any that are missing): per task and layer set, the decay rate β of
the eNTK spectrum (λk/λ1 ≈ k^(−2β), with its standard error; paper eq. 29–32) and the real learning curve of
the fine-tune (eval loss at every epoch). The paper ties faster decay to a faster convergence rate, so a
larger β should give a lower eval-loss curve: we report Spearman(β, area under the eval-loss curve) within
each task (expected negative). §3.5: the data-dependent stopping step against the run's real best step (highest
eval metric), in the run's own steps: the best step of the function-space prediction of that very run
(``tangentft.predict.curve.predict_run``: the SignGD kernel of the run's parameters on its own examples, replayed
over its AdamW steps, schedule and pull); agreement within a factor 2 is counted. Beside it, Raskutti et al.'s
T̂ as ``analyze`` computes it, which counts gradient-descent steps with step size 1/λ̂max on the linearized
squared loss — a different unit, reported only for reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from . import claim1_kappa, common

DOC = __doc__
NAME = "claim5_beta"
CLAIM = common.Claim(
    claim_id="5", paper="early-stopping", where="§7.1 and §3.5",
    paper_claim="faster eigenvalue decay (larger β) gives faster convergence; the kernel gives a data-dependent stopping step",
    paper_figure="β orders the learning curves; the data-dependent stopping step matches the best step",
)


def predicted(ctx: common.Context, record: dict) -> dict:
    """The function-space prediction of a claim-1 run (its own examples, steps and optimizer), cached."""
    from tangentft.predict.curve import predict_run
    from tangentft.train.config import TrainConfig

    cfg = TrainConfig.from_json(record["train"]["train_config"])
    config = {"train_config": record["train"]["train_config"], "n": min(cfg.n_train or 64, 64), "draws": 20}

    def compute():
        p = predict_run(cfg, n=config["n"], draws=config["draws"])
        return {k: p[k] for k in ("steps", "eval_loss", "eval_metric", "best_step", "best_metric", "metric_interval",
                                  "kernel", "warnings", "timings")}

    return common.cached(ctx, f"predict-{record['task']}-{record['layer_set']}", config, compute)


def best_metric_step(record: dict) -> int | None:
    """Step of the highest eval metric (the first such step), the real run's best step."""
    rows = [r for r in record["metrics"] if r.get("eval_metric") is not None]
    return max(rows, key=lambda r: r["eval_metric"])["step"] if rows else None


def within_2x(predicted_step: int | None, real_step: int | None) -> bool:
    """Both steps known and within a factor 2 (both 0 counts as agreement)."""
    if predicted_step is None or real_step is None:
        return False
    if predicted_step == 0 or real_step == 0:
        return predicted_step == real_step
    return abs(math.log(predicted_step / real_step)) <= math.log(2)


def main(argv: Sequence[str] | None = None) -> dict:
    ctx, _ = common.parse(NAME, DOC, argv, model="minilm")
    s, recs = claim1_kappa.records(ctx)
    rows = []
    for r in recs:
        an = r["analysis"]
        pred = predicted(ctx, r)
        rows.append({"task": r["task"], "layer_set": r["layer_set"], "beta": an["decay_beta"],
                     "beta_stderr": an["decay_beta_stderr"], "auc_eval_loss": common.curve_area(r["train"]),
                     "best_step": best_metric_step(r["train"]), "predicted_best_step": pred["best_step"],
                     "predicted_best_metric": pred["best_metric"], "T_hat": an["stopping"]["T_hat"],
                     "steps": r["train"]["summary"]["steps"],
                     "curve": [(m["step"], m["eval_loss"]) for m in r["train"]["metrics"] if m.get("eval_loss") is not None]})
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    within = {t: common.spearman([r["beta"] for r in rows if r["task"] == t],
                                 [r["auc_eval_loss"] for r in rows if r["task"] == t]) for t in tasks}
    w = [v for v in within.values() if v is not None]
    stop_ok = [r for r in rows if within_2x(r["predicted_best_step"], r["best_step"])]
    stop_rho = common.spearman([r["predicted_best_step"] for r in rows], [r["best_step"] for r in rows])
    beta_holds = bool(w) and all(v < 0 for v in w)
    beta_partly = bool(w) and common.mean(w) < 0
    stop_holds = len(stop_ok) * 2 > len(rows)
    if beta_holds and stop_holds:
        verdict, why = "holds", "β orders the curves within every task and the predicted stop is within 2× of the best step"
    elif beta_holds or beta_partly or stop_holds:
        bits = ["β orders the eval-loss curves " + ("in every task" if beta_holds else "on average only")
                if (beta_holds or beta_partly) else "β does not order the eval-loss curves",
                f"the predicted stopping step is within 2× of the real best step in {len(stop_ok)}/{len(rows)} runs"]
        verdict, why = "partly", "; ".join(bits)
    else:
        verdict, why = "does not", (f"β does not order the eval-loss curves and the predicted stopping step is within 2× "
                                    f"of the real best step in {len(stop_ok)}/{len(rows)} runs")
    fig, axes = common.figure(2)
    for t in tasks:
        pts = [r for r in rows if r["task"] == t]
        axes[0][0].errorbar([r["beta"] for r in pts], [r["auc_eval_loss"] for r in pts],
                            xerr=[r["beta_stderr"] or 0 for r in pts], fmt="o", label=t)
    axes[0][0].set_xlabel("eigenvalue decay β (± s.e.)")
    axes[0][0].set_ylabel("mean eval loss over the run")
    axes[0][0].legend(fontsize=7)
    axes[0][1].scatter([r["predicted_best_step"] for r in rows], [r["best_step"] for r in rows])
    top = max([r["steps"] for r in rows] + [1])
    axes[0][1].plot([0, top], [0, top], "k--", lw=0.8)
    axes[0][1].set_xlabel("predicted best step (function-space replay)")
    axes[0][1].set_ylabel("real best step (AdamW)")
    our = (f"Spearman(β, eval-loss area) within task: {', '.join(f'{t} {common.fmt(v)}' for t, v in within.items())}; "
           f"predicted stop within 2× of the real best step in {len(stop_ok)}/{len(rows)}, Spearman {common.fmt(stop_rho)}")
    return common.write_claim(
        ctx, CLAIM, fig, our_figure=our, verdict=verdict, why=why,
        data={"settings": s, "rows": rows, "spearman_beta_auc_within_task": within,
              "predicted_stop_within_2x": len(stop_ok), "spearman_predicted_real_best_step": stop_rho,
              "stopping_units": "predicted and real best steps: the run's AdamW steps; T_hat (reference only): "
                                "gradient descent on the linearized MSE with step 1/λ̂max"})


if __name__ == "__main__":
    main()
