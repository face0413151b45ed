"""A sweep's report: the chosen configuration and its ``tangentft train`` command, predicted vs real for every
trained trial, the compute spent against the whole grid's, and the prescreen table (report.json, report.md)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..integrations.optuna import PREDICTION_ATTR
from ..io import atomic_write, format_number, write_json
from .prescreen import label
from .space import Budget, Space


def _trial_row(t: optuna.trial.FrozenTrial) -> dict:
    pred = t.user_attrs.get(PREDICTION_ATTR) or {}
    real = t.user_attrs.get("real") or {}
    return {"trial": t.number, "state": t.state.name, "config": label(t.params) if "set" in t.params else None,
            "params": t.params, "run": t.user_attrs.get("run"), "predicted": pred.get("best_metric"),
            "interval": pred.get("metric_interval"), "real": real.get("best_metric"),
            "real_best_step": real.get("best_step"), "value": t.value,
            "pruned_at": max(t.intermediate_values) if t.state == TrialState.PRUNED and t.intermediate_values else None,
            "compute": t.user_attrs.get("compute", 0) - t.user_attrs.get("start_compute", 0),
            "reused": bool(t.user_attrs.get("reused")), "retry_of": t.system_attrs.get("failed_trial"),
            "error": t.user_attrs.get("error")}


def build_report(study: optuna.Study, space: Space, model: str, task: str, out: Path, budget: Budget, screen: dict,
                 limit: float, used: float) -> dict:
    """The report dict (module docstring); ``limit``/``used`` are the budget and what was spent, in its unit."""
    trials = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    chosen = None
    if done:
        best = max(done, key=lambda t: t.value)
        cfg = space.config(best.params, model, task)
        pred = best.user_attrs.get(PREDICTION_ATTR) or {}
        chosen = {"trial": best.number, "config": label(best.params), "params": best.params, "run": best.user_attrs["run"],
                  "real": best.value, "real_best_step": (best.user_attrs.get("real") or {}).get("best_step"),
                  "predicted": pred.get("best_metric"), "interval": pred.get("metric_interval"),
                  # a fresh folder: the trial's own run folder already holds this run (train refuses to overwrite it)
                  "command": cfg.command_line(Path(out) / "chosen"), "train": cfg.to_json()}
    trained = sum(t["compute"] for t in trials)
    unit = "seconds of training" if budget.seconds is not None else "examples trained (steps × batch)"
    return {
        "format": "tangentft-sweep/1", "model": model, "task": str(task), "study": study.study_name,
        "metric": screen["rows"][0]["metric"] if screen["rows"] else None,
        "budget": {"asked": budget.describe(), "limit": limit, "spent": used, "unit": unit},
        "compute": {"trained": trained, "grid": screen["grid_compute"],
                    "fraction_of_grid": trained / screen["grid_compute"] if screen["grid_compute"] else None,
                    "unit": "examples trained (steps × batch)"},
        "chosen": chosen,
        "trials": trials,
        "prescreen": {"rows": [{**r, "config": label(r["params"])} for r in screen["rows"]],
                      "ranking": screen["ranking"], "kernels": screen["kernels"]},
    }


def _f(v) -> str:
    return "–" if v is None else format_number(v)


def _iv(v) -> str:
    return "–" if not v else f"[{format_number(v[0])}, {format_number(v[1])}]"


def render_markdown(rep: dict) -> str:
    """report.md from the report dict."""
    c, comp = rep["chosen"], rep["compute"]
    lines = [f"# tangentft sweep: {rep['model']} on {Path(rep['task']).name}", ""]
    if c:
        lines += [f"**Chosen**: trial {c['trial']}, `{c['config']}` — real best {rep['metric']} {_f(c['real'])} "
                  f"(step {c['real_best_step']}), predicted {_f(c['predicted'])} {_iv(c['interval'])}.", "",
                  "```", c["command"], "```", ""]
    if rep.get("exhausted"):
        lines += ["The search stopped before the budget: its last trials only proposed configurations already "
                  "trained (the space is exhausted).", ""]
    if not c:
        lines += ["**No trial finished**: nothing to choose yet (raise the budget and run the same command again).", ""]
    frac = comp["fraction_of_grid"]
    lines += [f"Compute: {_f(comp['trained'])} {comp['unit']}, {_f(100 * frac) if frac is not None else '–'} % of "
              f"the whole grid ({_f(comp['grid'])}); budget {rep['budget']['asked']}, spent {_f(rep['budget']['spent'])} "
              f"of {_f(rep['budget']['limit'])} {rep['budget']['unit']}.", "",
              "## Trials (predicted vs real)", "",
              "| trial | state | configuration | predicted best | interval | real best | compute | note |",
              "|---|---|---|---|---|---|---|---|"]
    for t in rep["trials"]:
        note = "; ".join(n for n in (
            f"pruned at step {t['pruned_at']}" if t["pruned_at"] is not None else "",
            "reused a finished run" if t["reused"] else "",
            f"retry of trial {t['retry_of']}" if t["retry_of"] is not None else "", t["error"] or "") if n)
        lines.append(f"| {t['trial']} | {t['state']} | {t['config'] or '–'} | {_f(t['predicted'])} | {_iv(t['interval'])} "
                     f"| {_f(t['real'])} | {_f(t['compute'])} | {note} |")
    p = rep["prescreen"]
    lines += ["", "## Prescreen (every configuration, predicted)", "", p["ranking"]["verdict"], "",
              "| rank | configuration | predicted best | interval | best step |", "|---|---|---|---|---|"]
    for i, r in enumerate(p["rows"], 1):
        lines.append(f"| {i} | {r['config']} | {_f(r['predicted'])} | {_iv(r['interval'])} | {r['best_step']} |")
    cached = sum(1 for k in p["kernels"].values() if k["cached"])
    lines += ["", f"Kernels: {len(p['kernels'])} parameter sets ({cached} from the cache).", ""]
    return "\n".join(lines)


def write_report(out: Path, rep: dict) -> None:
    """Write report.json and report.md into ``out`` atomically."""
    write_json(Path(out) / "report.json", rep)
    atomic_write(Path(out) / "report.md", render_markdown(rep))
