"""An analysis's recommendation as runs of the trainer: the run to launch, its predicted curve, and the theory's run.

:mod:`tangentft.analysis.analyze` computes the recommendation's numbers (it cannot build a :class:`TrainConfig`:
analysis sits below train and predict); this module turns them into configs. The run to launch (:func:`recommended_run`) is
AdamW on the analysed parameters plus the recommended candidate groups, stopped at the best step its predicted
curve shows (:func:`predict_recommended`); its command is the report's ``train_command``, the one the report ends
with. The theory's run (:func:`theory_run`) is the setting the ridge and stopping numbers were derived for —
full-batch SGD on the mean squared loss — kept in the report as the theory's numbers, not as the recommendation.
Both commands come from :meth:`TrainConfig.command_line`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..analysis.result import AnalysisReport
from ..models.spec import Spec
from ..train.config import TrainConfig
from .curve import predict_with, run_kernels

RUN_OUT = "runs/recommended"  # the --out the report's commands name; the user picks their own
THEORY_OUT = "runs/theory"


def _method(params: Spec) -> str:
    """lora when the selection trains LoRA factors (its candidates are LoRA adapters too), full otherwise."""
    return "lora" if params.lora_terms else "full"


def _params(rep: AnalysisReport) -> Spec:
    rec = rep.recommendation
    return rec.params if rec is not None and rec.params else rep.params


def _task_fields(rep: AnalysisReport) -> dict:
    """The analysed task's declared classes / score range, as a run's config carries them (so the recommended run
    builds the task model the analysis measured)."""
    opts = rep.task_options or {}
    rng = opts.get("score_range")
    return {"num_labels": opts.get("num_labels"), "score_range": list(rng) if rng is not None else None}


def recommended_run(rep: AnalysisReport, *, steps: int | None = None, lr: float | None = None) -> TrainConfig:
    """The run that applies an ``analyze`` report's recommendation: its parameters plus the recommended candidate
    groups (:func:`tangentft.analysis.analyze.recommended_params`), the LoRA method when they are LoRA factors, AdamW,
    trained on the analysis's own kernel sample (``n_train`` = n, same seed and eval examples); ``steps`` defaults
    to ten epochs at batch 8 (10 to 200 steps), ``lr`` to the config's default."""
    params = _params(rep)
    n = int(rep.n)
    total = steps or max(10, min(200, 10 * math.ceil(n / 8)))
    return TrainConfig(model=rep.model, task=rep.task, template=rep.template, label_words=rep.label_words,
                       **_task_fields(rep),
                       method=_method(params), method_options={"params": params}, optimizer="adamw",
                       lr=lr or TrainConfig.default("lr"), n_train=n, n_eval=int(rep.n_eval or n), max_steps=total,
                       eval_every=max(1, total // 10), seed=int(rep.seed))


def _round(x: float) -> float:
    return float(f"{x:.4g}")  # four digits keep the command readable; the theory's numbers are not that exact


def theory_run(rep: AnalysisReport) -> TrainConfig:
    """The theory's run of a report whose recommendation has its numbers
    (:func:`tangentft.analysis.analyze.theory_run_numbers`): full-batch SGD on the mean squared loss over the n
    analysed examples, lr = α/2, the pull λ_train = 2λ/(n·K) toward θ0, T̂ steps (stretched where the pull
    needs smaller steps), no warmup."""
    rec = rep.recommendation
    params = _params(rep)
    options: dict[str, Any] = {"params": params}
    if rec.theory_lora_rank is not None:
        options["lora_r"] = rec.theory_lora_rank
    return TrainConfig(model=rep.model, task=rep.task, template=rep.template, label_words=rep.label_words,
                       **_task_fields(rep),
                       method=_method(params), method_options=options, loss="mse", optimizer="sgd",
                       lr=_round(rec.theory_lr), reg="l2", lam=_round(rec.theory_lam), max_steps=rec.theory_steps,
                       n_train=int(rep.n), batch_size=int(rep.n), warmup_ratio=0.0, seed=int(rep.seed))


def predict_recommended(rep: AnalysisReport, *, n: int | None = None,
                        progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Predict the run to launch and write it into ``rep``: the curve of :func:`recommended_run` over a ten-epoch
    horizon, then the run stopping at the predicted best step with its own curve (the schedule depends on the
    run's length). Sets ``rep.run_prediction`` (with the run's ``max_steps``), ``rep.recommendation.train_command``
    (that run, with ``--predict``) and ``theory_command`` (:func:`theory_run`); returns the prediction."""
    cfg = recommended_run(rep)
    rk = run_kernels(cfg, n=n, progress=progress)
    horizon = predict_with(rk, cfg)
    best = horizon["best_step"]
    chosen = cfg if best <= 0 else replace(cfg, max_steps=best, eval_every=max(1, best // 5))
    pred = predict_with(rk, chosen)
    pred["max_steps"] = chosen.max_steps
    pred["horizon"] = {"steps": horizon["steps"], "eval_metric": horizon["eval_metric"],
                       "best_step": best, "best_metric": horizon["best_metric"]}
    if best <= 0:
        pred["warnings"] = [*pred["warnings"], "the replay predicts no gain over θ0 within ten epochs"]
    rep.run_prediction = pred
    rec = rep.recommendation
    if rec is not None:
        rec.train_command = chosen.command_line(RUN_OUT, predict=True)
        rec.predicted_gain, rec.decision = decide(pred, rep)
        if rec.theory_lr is not None:
            rec.theory_command = theory_run(rep).command_line(THEORY_OUT)
    return pred


def decide(pred: dict, rep: AnalysisReport) -> tuple[bool, str]:
    """Whether to launch the predicted run: it must beat not training — the zero-shot model and the majority
    class — at its predicted best step. Returns (gain, the sentence saying so); without a gain the sentence names
    what to try instead, read off the prediction (a curve best at step 0, an interval too wide, a probe that
    matches) rather than a fixed list."""
    b = pred.get("baselines", {})
    name, best = pred["metric_name"], pred["best_metric"]
    bars = {k: v for k, v in (("zero-shot", b.get("zero_shot")), ("majority", b.get("majority")))
            if v is not None and v == v}
    if bars and all(best > v for v in bars.values()):
        return True, (f"launch it: predicted best {name} {best:.3g} at step {pred['best_step']} beats "
                      + ", ".join(f"{k} {v:.3g}" for k, v in bars.items()))
    bar, value = max(bars.items(), key=lambda kv: kv[1]) if bars else ("zero-shot", float("nan"))
    tries = []
    if pred["horizon"]["best_step"] <= 0:
        tries.append(f"a smaller learning rate (at --lr {pred['lr']:g} the predicted curve is best at step 0)")
    if pred.get("n_for_2_points") and pred["n_for_2_points"] > pred["n"]:
        tries.append(f"more examples (the interval needs n ≈ {pred['n_for_2_points']} for ±2 points; "
                     f"analyze with --num-examples {min(pred['n_for_2_points'], 4 * pred['n'])})")
    probe = b.get("linear_probe")
    if probe is not None and probe == probe and probe > value:
        tries.append(f"a linear probe on the frozen features (predicted {probe:.3g})")
    tries.append("other parameters (more layers or a higher rank in --params, or the candidates the ranking puts "
                 "first)")
    if rep.task_kind == "classification":
        tries.append("another prompt (--template/--label-words): zero-shot sets the bar here")
    return False, (f"no candidate is predicted to beat {bar} ({value:.3g}): the best predicted run reaches {name} "
                   f"{best:.3g} at step {pred['best_step']}, so keep the model as it is, or try " + "; ".join(tries))


def analyze_and_recommend(model: str, task: str, params: Spec | None = None, candidates: Spec | None = None, *,
                          n: int = 32, out: str | Path | None = None,
                          progress: Callable[[str, int, int], None] | None = None, **options: Any) -> AnalysisReport:
    """``analyze``: the pre-training analysis (:func:`tangentft.analysis.analyze.analyze`, ``options`` are its keyword
    arguments; ``params``/``candidates`` parsed specs), then the run to launch and its predicted curve (:func:`predict_recommended`). With ``out``, writes
    report.json, report.md, the figures and the kernel there. Returns the report."""
    from ..analysis.analyze import analyze
    from ..analysis.report import write_report

    rep, k_base, kernel = analyze(model, task, params, candidates, n=n, progress=progress, **options)
    predict_recommended(rep, n=n, progress=progress)
    if out is not None:
        write_report(rep, out, k_base)
        kernel.save(Path(out) / "kernel")
    return rep
