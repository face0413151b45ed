"""Write an analysis: report.json (every number), report.md (what a user shares) and the PNG figures.

All three, and ``analyze --compare``, read one :class:`~tangentft.analysis.result.AnalysisReport`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TangentError
from ..io import atomic_write, write_json
from ..models.spec import DEFAULT_LORA_RANK
from ..schemas import ReportFile, read_json
from . import figures
from .result import AnalysisReport, Recommendation

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _g(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{digits}g}"
    return str(x)


def make_figures(rep: AnalysisReport, kernel_matrix, out_dir: Path) -> dict[str, str]:
    """The four report figures; returns name -> file name (relative to ``out_dir``)."""
    figs = {}
    window = tuple(rep.decay_window) if rep.decay_window else None
    figures.spectrum_figure(rep.eigenvalues, rep.decay_beta, window, out_dir / "spectrum.png")
    figs["spectrum"] = "spectrum.png"
    singles = rep.candidate_singles or []
    if singles:
        figures.candidate_figure([" + ".join(c["groups"]) for c in singles], [c["r_c"] for c in singles],
                                 out_dir / "candidates.png")
        figs["candidates"] = "candidates.png"
    figures.heatmap_figure(kernel_matrix, out_dir / "kernel.png")
    figs["kernel"] = "kernel.png"
    bc = rep.bound_curves
    if bc:
        figures.bounds_figure(bc["steps"], bc["param_distance"], bc["linearization_gap"], out_dir / "bounds.png",
                              t_hat=rep.stopping["T_hat"], radius=(rep.lipschitz or {}).get("radius"))
        figs["bounds"] = "bounds.png"
    return figs


def _stopping_line(rec: Recommendation, st: dict) -> str:
    if rec.steps == 0:
        return (f"- **The stopping rule finds no step worth taking**: the estimated noise {_g(st['noise'])} puts the critical "
                f"radius ({_g(st['critical_radius'])}) above what step size {_g(rec.step_size)} resolves in one step. "
                "Analyse more examples (--n) or stop on a validation set.")
    return (f"- **Stop after about {rec.steps} steps** of step size {_g(rec.step_size)} on the mean squared loss "
            f"(ridge-equivalent λ = {_g(st['ridge_equivalent'])} on that loss, σ = {_g(st['ridge_sigma'])} in K+σI).")


def _t_hat_steps(rep: AnalysisReport) -> str:
    """T̂ as optimizer steps at the recommended run's lr: SGD on the MSE averaged over K outputs moves f like GD
    with step 2·lr, so T̂ GD steps of size α are T̂·α/(2·lr) full-batch SGD steps (AdamW has no such map)."""
    rp, st = rep.run_prediction, rep.stopping
    if not rp or not rp.get("lr") or not st.get("T_hat"):
        return ""
    steps = st["T_hat"] * st["step_size"] / (2 * rp["lr"])
    return (f"; ≈ {_g(steps, 3)} full-batch SGD steps at lr {_g(rp['lr'])} (exact only for SGD + MSE; the "
            f"recommended {rp.get('optimizer', 'adamw')} run's own best step is at the end)")


def _sigma_spread(kr: dict) -> str:
    sp = kr.get("sigma_spread") or {}
    if not sp.get("draws"):
        return ""
    return (f"; over {sp['draws']} resamples σ ranged {_g(sp['min'])}–{_g(sp['max'])} "
            f"({_g(sp['log10_range'], 2)} decades{', stable' if sp['stable'] else ', UNSTABLE'})")


def _theory_section(rec: Recommendation) -> list[str]:
    """The theory's run: the setting λ and T̂ were derived for, as the trainer would run it (not the recommendation)."""
    if rec.theory_lr is None:
        return []
    lines = ["", "### The theory's run", "",
             f"Not the recommendation (that is the run to launch, at the end): the setting the ridge λ and the stopping "
             f"step T̂ were derived for, as the trainer would run it — full-batch SGD on the mean squared loss, "
             f"{rec.theory_steps} steps (T̂ = {rec.steps}), lr = α/2 = {_g(rec.theory_lr)}, λ_train = 2λ/(n·K) = "
             f"{_g(rec.theory_lam)} (l2 pull toward θ0).", ""]
    if rec.theory_command:
        lines += ["```sh", rec.theory_command, "```", ""]
    return lines + [f"- {note}" for note in rec.theory_notes]


def _run_section(rp: dict | None, rec: Recommendation) -> list[str]:
    """The report's end: the decision, the predicted curve of the run to launch, then its ``tangentft train``
    command — or, when no run is predicted to beat zero-shot, that verdict and what to try instead, with the best
    run checked kept as a reference (not a recommendation)."""
    if not rp or not rec.train_command:
        return []
    if rec.predicted_gain is False:
        return ["", "## No run to launch", "", f"**Decision:** {rec.decision}.", "",
                "The best run checked, for reference (not a recommendation):", "", *_run_curve(rp, rec.train_command)]
    decision = [f"**Decision:** {rec.decision}.", ""] if rec.decision else []
    return ["", "## The run to launch", "", *decision, *_run_curve(rp, rec.train_command)]


def _run_curve(rp: dict, command: str) -> list[str]:
    """A predicted run: what it is, its best step against the baselines, its curve and its command."""
    name = rp["metric_name"]
    lo, hi = rp["metric_interval"]
    b = rp.get("baselines", {})
    beats = all(rp["best_metric"] > v for v in (b.get("zero_shot"), b.get("majority"), b.get("linear_probe"))
                if v is not None and v == v)
    lines = [f"{ {'adamw': 'AdamW', 'sgd': 'SGD'}.get(rp['optimizer'], rp['optimizer'])} on the analysed parameters "
             f"plus the recommended candidate groups, stopped at its predicted best step. Predicted from the {rp['kernel']} kernel of exactly these parameters on the run's "
             f"own n = {rp['n']} training examples, replayed over its steps: best eval {name} "
             f"**{_g(rp['best_metric'], 3)}** [{_g(lo, 3)}, {_g(hi, 3)}] at step {rp['best_step']} (over a ten-epoch "
             f"horizon the best was {_g(rp['horizon']['best_metric'], 3)} at step {rp['horizon']['best_step']}). An "
             f"interval below 2 points needs n ≈ {rp['n_for_2_points']}. Baselines: zero-shot "
             f"{_g(b.get('zero_shot'), 3)}, majority {_g(b.get('majority'), 3)}, linear probe "
             f"{_g(b.get('linear_probe'), 3)} — the prediction "
             + ("beats all of them." if beats else "does NOT beat all of them."), "",
             f"| step | predicted eval_loss | predicted eval {name} |", "|---|---|---|"]
    for s_, loss, m in zip(rp["steps"], rp["eval_loss"], rp["eval_metric"], strict=True):
        lines.append(f"| {s_} | {_g(loss)} | {_g(m, 3)} |")
    lines += [""] + [f"- {w}" for w in rp.get("warnings", [])]
    return lines + ["", "```sh", command, "```"]


def render_markdown(rep: AnalysisReport) -> str:
    """The human report: what was analysed, key numbers, recommendation, candidates, figures, conventions with the
    theory's run, and last the decision: the run to launch (its predicted curve and ``tangentft train`` command),
    or that no run is predicted to beat zero-shot and what to try instead."""
    return "\n".join(_sections(rep)) + "\n"


def _sections(rep: AnalysisReport) -> list[str]:
    kr, rec = rep.krr, rep.recommendation
    metric = kr["eval_metric_name"]
    lines = [
        f"# tangentft analysis — {rep.model} on {rep.task_name or rep.task}",
        "",
        f"Before training, the empirical NTK at θ0 of **{_g(rep.num_params)} trainable parameters** "
        f"(`{rep.params}`) predicts an eval {metric} of **{_g(kr['eval_metric'], 3)}** after "
        f"fine-tuning (zero-shot: {_g(kr.get('zero_shot_metric'), 3)}).",
        "",
        "## What was analysed",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{rep.model}` |",
        f"| task | `{rep.task}` ({rep.task_kind}, K = {rep.K} output(s)) |",
        f"| trained parameters | `{rep.params}` — {_g(rep.num_params)} scalars"
        + (f" (no params given: the default, LoRA r = {DEFAULT_LORA_RANK} on q, v of the first, middle and last layers)" if rep.params_default else "")
        + " |",
        f"| candidate groups | `{rep.candidates_spec or '–'}` — {len(rep.candidate_groups or [])} groups |",
        f"| examples | n = {rep.n} train (seed {rep.seed}), {_g(rep.n_eval)} eval from "
        f"{rep.eval_split or '–'} |",
        f"| kernel | full eNTK, {rep.kernel_shape[0]}×{rep.kernel_shape[1]}, float64 |",
    ]
    return (lines + _key_numbers(rep) + _recommendation_section(rep) + _candidates_section(rep) + _figures_section(rep)
            + [f"> **Warning:** {w}\n" for w in rep.warnings or []] + _conventions(rep)
            + _theory_section(rec) + _run_section(rep.run_prediction, rec))


def _key_numbers(rep: AnalysisReport) -> list[str]:
    """The key-numbers table: spectrum, κ, decay, Theorem 5 bounds, the ridge limit, baselines, T̂, Lipschitz."""
    kr, st, rb, cn = rep.krr, rep.stopping, rep.risk_bounds, rep.condition_number
    metric = kr["eval_metric_name"]
    lines = [
        "",
        "## Key numbers",
        "",
        "| quantity | value | meaning |",
        "|---|---|---|",
        f"| λmax / λmin | {_g(rep.lambda_max)} / {_g(rep.lambda_min)} | extreme eigenvalues of K |",
        f"| κ(K+σI), σ = {_g(cn['sigma'])} | {_g(cn['value'])} | lower predicts better fine-tuning (linearization paper, Table 2) |",
        f"| effective rank | {_g(rep.effective_rank)} of {rep.kernel_shape[0]} | entropy rank of the spectrum |",
        f"| decay β | {_g(rep.decay_beta)} ± {_g(rep.decay_beta_stderr, 2)} | λk ∝ k^(−2β) over k ∈ "
        f"{rep.decay_window} (early-stopping paper, eq. 29–32) |",
        f"| training risk bounds (σ = {_g(rb['sigma'])}) | [{_g(rb['lower'])}, {_g(rb['upper'])}] | Theorem 5; kernel-ridge "
        f"risk {_g(kr['train_loss'])} {'inside' if rb.get('brackets_krr') else 'OUTSIDE'} |",
        f"| ridge-limit eval {metric} (theory) | {_g(kr['eval_metric'], 3)} | kernel ridge limit of GD on the squared loss, "
        f"σ = {_g(kr['sigma'])} by {kr['cv']['folds']}-fold CV{_sigma_spread(kr)} — not the curve of a run (see the end) |",
        f"| baselines | zero-shot {_g((rep.baselines or {}).get('zero_shot'), 3)}, majority "
        f"{_g((rep.baselines or {}).get('majority'), 3)}, linear probe "
        f"{_g((rep.baselines or {}).get('linear_probe'), 3)} | a prediction counts only where it beats these |",
        f"| critical radius / T̂ (theory) | {_g(st['critical_radius'])} / {st['T_hat']} steps | GD steps of size "
        f"{_g(st['step_size'])} on the mean squared loss, noise "
        f"{_g(st['noise'])}{' (estimated)' if st['noise_estimated'] else ''} per unit ‖f*‖_H{_t_hat_steps(rep)} |",
    ]
    if rep.lipschitz:
        lip = rep.lipschitz
        lines.append(f"| Lip(f), Lip(∇f) | {_g(lip['lip_f'])}, {_g(lip['lip_grad'])} | within r = {_g(lip['radius'])} of θ0 "
                     "(Algorithm 1) |")
        lines.append(f"| λ∘ | {_g(rep.lambda_circ)} | ridge above which training provably stays linear |")
    return lines


def _recommendation_section(rep: AnalysisReport) -> list[str]:
    """What to tune, the LoRA rank, λ and the stopping step, each with the result it comes from."""
    rec, st = rep.recommendation, rep.stopping
    lines = ["", "## Recommendation", ""]
    if rec.candidate_groups:
        cr = rep.candidate_recommendation
        lines.append(f"- **Also tune {', '.join(rec.candidate_groups)}**: r_C = {_g(cr['r_c'])} "
                     f"(≥ 90 % of the spectral gain of tuning all candidates), Theorem 5 bounds shrink by a factor in "
                     f"[{_g(cr['risk_ratio'][0])}, 1].")
    lines += [
        f"- **LoRA rank r = {rec.lora_rank}**: the smallest r with r(r+1)/2 > K·N = {rep.K * rep.n} "
        "(LoRA-NTK paper, Thm 4.1); scale it with the training-set size N.",
        f"- **Regularization λ = {_g(rec.regularization)}** toward θ0 (sum-of-squares loss): cross-validated ridge "
        f"{_g(rec.regularization_cv)}"
        + (f", linear-regime threshold λ∘ = {_g(rec.regularization_linear_regime)}." if rec.regularization_linear_regime is not None else "."),
        _stopping_line(rec, st),
        "",
    ]
    return lines


def _candidates_section(rep: AnalysisReport) -> list[str]:
    """Algorithm 2's table of candidate groups, the ranking's bootstrap uncertainty and the best subset per size."""
    lines: list[str] = []
    singles = rep.candidate_singles or []
    if singles:
        npc = rep.num_params_candidates or {}
        lines += ["## Candidate groups (Algorithm 2)", "",
                  "| group | params | r_C | η | λmax(K+S) bounds | risk-bound ratio |", "|---|---|---|---|---|---|"]
        for c in singles:
            g = c["groups"][0]
            lines.append(f"| {g} | {_g(npc.get(g))} | {_g(c['r_c'])} | {_g(c['eta'])} | "
                         f"[{_g(c['lambda_max_bounds'][0])}, {_g(c['lambda_max_bounds'][1])}] | "
                         f"[{_g(c['risk_ratio'][0])}, 1] |")
        cu = rep.candidate_uncertainty
        if cu:
            lines += ["", f"Ranking under bootstrap resampling of the kernel sample: **{cu['verdict']}**.", "",
                      "| group | r_C 95% interval | first in |", "|---|---|---|"]
            for c in cu["candidates"]:
                lines.append(f"| {c['name']} | [{_g(c['interval'][0])}, {_g(c['interval'][1])}] | {c['first_fraction']:.0%} |")
        lines += ["", f"Best subset per size ({rep.candidate_method}):", ""]
        for size, c in (rep.candidate_best_by_size or {}).items():
            lines.append(f"- {size}: {', '.join(c['groups'])} — r_C = {_g(c['r_c'])}")
        lines.append("")
    return lines


def _figures_section(rep: AnalysisReport) -> list[str]:
    """The figures, each with its caption."""
    lines: list[str] = []
    figs = rep.figures or {}
    if figs:
        lines += ["## Figures", ""]
        captions = {"spectrum": "eNTK spectrum with the fitted decay", "candidates": "r_C per candidate group",
                    "kernel": "kernel heatmap", "bounds": "Theorems 2–4 bound curves over steps (T̂ dashed)"}
        for name, file in figs.items():
            lines += [f"![{captions.get(name, name)}]({file})", ""]
    return lines


def _conventions(rep: AnalysisReport) -> list[str]:
    """The formulas and conventions behind the numbers, the timings and the numerical notes."""
    notes = list(rep.eigenvalue_notes or []) + list(rep.krr.get("warnings") or [])
    lines = [
        "## Conventions",
        "",
        "- Kernel ridge prediction f* = f0 + K(X*,X)(K+σI)⁻¹(Y − f0(X)) (linearization paper, eq. 14–17); "
        "classification accuracy is the argmax over the K outputs.",
        "- Training risk R = ‖Y − f*(X)‖² summed over examples and outputs; its bounds use the residual targets Y − f0(X).",
        "- The stopping rule follows Raskutti et al. (2014) on K/N (N kernel rows) with gradient descent on the mean "
        "squared loss; its default step is the largest stable one, 1/λ̂max. Its noise level, unless given with --noise, "
        "is the root of the cross-validated kernel-ridge MSE (it also contains approximation error, so T̂ errs early), "
        "divided by the RKHS norm ‖f*‖_H of the kernel-ridge solution since the rule assumes ‖f*‖_H ≤ 1.",
        "- λ∘ and the bound curves use the sum-of-squares loss ½‖f − Y‖² + (λ/2)‖θ − θ0‖², with Lip(f), Lip(∇f) "
        "measured within r = ‖θ_KRR − θ0‖ (the distance the kernel-ridge solution moves the parameters).",
        f"- Timings: {', '.join(f'{k} {v:.1f}s' for k, v in (rep.timings or {}).items() if isinstance(v, float))}.",
    ]
    return lines + [f"- Note: {n}" for n in notes]


def write_report(rep: AnalysisReport, out_dir, kernel_matrix) -> Path:
    """Write figures, report.json and report.md into ``out_dir`` (created); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep.figures = make_figures(rep, np.asarray(kernel_matrix), out)
    write_json(out / REPORT_JSON, rep.to_json())
    atomic_write(out / REPORT_MD, render_markdown(rep))
    return out


def load_report(directory) -> AnalysisReport:
    """Read ``DIR/report.json``; TangentError naming the path when it is missing, not JSON or not a report."""
    path = Path(directory) / REPORT_JSON
    missing = f"{path}: no analysis report here (run `tangentft analyze ... --out {directory}`)"
    data = read_json(path, ReportFile, missing=missing).model_dump()
    try:
        return AnalysisReport.from_json(data)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        raise TangentError(f"{path}: not an analysis report ({exc})") from None


COMPARE_COLUMNS = ("run", "model", "task", "params", "n", "kappa", "beta", "metric", "predicted", "zero_shot", "train_loss",
                   "T_hat", "run_metric", "run_interval", "run_best_step")


def compare_rows(directories) -> list[dict]:
    """One row per analysis folder: κ, β and the predicted metrics (linearization paper, Tables 2 and 5) — the
    ridge limit (``predicted``) and the predicted run's best metric with its bootstrap interval over the kernel
    sample (``run_metric``, ``run_interval``; None for a report made before runs were predicted)."""
    if not directories:
        raise TangentError("comparing analyses needs at least one analysis folder")
    rows = []
    for d in directories:
        r = load_report(d)
        rp = r.run_prediction or {}
        rows.append({
            "run": str(d),
            "model": r.model,
            "task": r.task_name or r.task,
            "params": str(r.params),
            "n": r.n,
            "kappa": r.condition_number["value"],
            "beta": r.decay_beta,
            "metric": r.krr["eval_metric_name"],
            "predicted": r.krr["eval_metric"],
            "zero_shot": r.krr.get("zero_shot_metric"),
            "train_loss": r.krr["train_loss"],
            "T_hat": r.stopping["T_hat"],
            "run_metric": rp.get("best_metric"),
            "run_interval": rp.get("metric_interval"),
            "run_best_step": rp.get("best_step"),
        })
    return rows


def compare_ranking(rows: list[dict]) -> dict:
    """Rank :func:`compare_rows` rows (configurations, tasks) by the predicted run's best metric and say whether
    the ranking decides: the leader is a clear winner only when its bootstrap interval lies above the runner-up's
    (issue 11 §3: every ranking comes with its uncertainty). Returns ``order`` (row indices, best first; rows
    without a predicted run last), ``leader``/``runner_up`` (row runs), ``clear_winner`` (None when nothing can
    be ranked) and a one-line ``verdict``."""
    ranked = [i for i, r in enumerate(rows) if r.get("run_metric") is not None and r.get("run_interval")]
    order = sorted(ranked, key=lambda i: -rows[i]["run_metric"]) + [i for i in range(len(rows)) if i not in ranked]
    out = {"order": order, "leader": None, "runner_up": None, "clear_winner": None}
    metrics = sorted({rows[i]["metric"] for i in ranked})
    if len(ranked) < 2:
        return {**out, "verdict": f"nothing to rank: {len(ranked)} of {len(rows)} analyses have a predicted run "
                                  "(reports made before runs were predicted have none)"}
    if len(metrics) > 1:
        return {**out, "verdict": f"not ranked: the analyses predict different metrics ({', '.join(metrics)})"}

    def show(i: int) -> str:
        lo, hi = rows[i]["run_interval"]
        return f"{rows[i]['run']} {_g(rows[i]['run_metric'], 3)} [{_g(lo, 3)}, {_g(hi, 3)}]"

    best, second = order[0], order[1]
    clear = bool(rows[best]["run_interval"][0] > rows[second]["run_interval"][1])
    verdict = (f"{show(best)} is the best: its interval lies above the runner-up's, {show(second)}" if clear else
               f"no clear winner: the best's interval ({show(best)}) overlaps the runner-up's ({show(second)})")
    return {**out, "leader": rows[best]["run"], "runner_up": rows[second]["run"], "clear_winner": clear,
            "verdict": verdict}
