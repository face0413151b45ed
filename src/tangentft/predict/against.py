"""A prediction checked against the real run: aligned rows, errors, overlay figures and a markdown table.

The prediction's steps are the run's eval steps (both come from the same step plan), so the comparison is
row by row with metrics.jsonl. The run's linearization columns (lin_gap vs output_shift) say whether it left the
linear regime the prediction assumes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import TangentError
from ..io import atomic_path, atomic_write, format_number
from ..train.plots import read_metrics

LINEAR_REGIME_RATIO = 0.3  # lin_gap / output_shift above this: the run's f is no longer its linearization


def compare(prediction: dict, rows: list[dict]) -> dict:
    """Predicted vs real: best metric and step, mean |curve error| on the shared eval steps, baselines'
    errors, and whether the run stayed in the linear regime."""
    real = {r["step"]: r for r in rows if r.get("eval_metric") is not None}
    steps = [s for s in prediction["steps"] if s in real]
    pm = {s: v for s, v in zip(prediction["steps"], prediction["eval_metric"], strict=True)}
    pl = {s: v for s, v in zip(prediction["steps"], prediction["eval_loss"], strict=True)}
    if not steps:
        return {"steps": [], "note": "no eval step of the run matches the prediction's steps"}
    rm = np.array([real[s]["eval_metric"] for s in steps], dtype=np.float64)
    best_i = int(np.nanargmax(rm))
    real_best, real_step = float(rm[best_i]), steps[best_i]
    last = rows[-1]
    gap, shift = last.get("lin_gap"), last.get("output_shift")
    ratio = gap / shift if gap is not None and shift else None
    b = prediction.get("baselines", {})
    err = abs(prediction["best_metric"] - real_best)
    base_err = {k: abs(b[k] - real_best) for k in ("zero_shot", "majority", "linear_probe")
                if b.get(k) is not None and np.isfinite(b[k])}
    lo, hi = prediction.get("metric_interval", [None, None])
    return {
        "steps": steps,
        "predicted_metric": [pm[s] for s in steps],
        "real_metric": rm.tolist(),
        "predicted_loss": [pl[s] for s in steps],
        "real_loss": [real[s]["eval_loss"] for s in steps],
        "predicted_best": prediction["best_metric"],
        "predicted_best_sample": ((prediction.get("sample_size") or {}).get("best_metric") or [None])[-1],
        "real_best": real_best,
        "best_error": err,
        "predicted_best_step": prediction["best_step"],
        "real_best_step": real_step,
        "step_ratio": (max(prediction["best_step"], 1) / max(real_step, 1)),
        "curve_mae": float(np.nanmean(np.abs(np.array([pm[s] for s in steps]) - rm))),
        "in_interval": bool(lo is not None and lo <= real_best <= hi),
        "baseline_errors": base_err,
        "beats_baselines": bool(base_err) and all(err < e for e in base_err.values()),
        "lin_gap": gap,
        "output_shift": shift,
        "left_linear_regime": None if ratio is None else bool(ratio > LINEAR_REGIME_RATIO),
    }


def comparison_markdown(prediction: dict, cmp: dict) -> str:
    """The predicted-vs-real section of summary.md / the --against report."""
    if not cmp.get("steps"):
        return "## Predicted vs real\n\n" + cmp.get("note", "nothing to compare") + "\n"
    name = prediction.get("metric_name", "metric")
    lo, hi = prediction["metric_interval"]
    ss = prediction.get("sample_size")
    extrapolated = f" and extrapolated to the run's {ss['n_train']} (replays on {ss['n'][0]} and {ss['n'][1]})" if ss else ""
    lines = ["## Predicted vs real", "",
             f"Prediction: {prediction['kernel']} kernel on n = {prediction['n']} training examples, replayed over the "
             f"run's own steps{extrapolated}; best {name} {format_number(prediction['best_metric'])} "
             f"[{format_number(lo)}, {format_number(hi)}] at step {prediction['best_step']}.", "",
             f"| step | predicted eval_loss | real eval_loss | predicted {name} | real {name} |", "|---|---|---|---|---|"]
    for i, s in enumerate(cmp["steps"]):
        lines.append(f"| {s} | {format_number(cmp['predicted_loss'][i])} | {format_number(cmp['real_loss'][i])} | "
                     f"{format_number(cmp['predicted_metric'][i])} | {format_number(cmp['real_metric'][i])} |")
    b = prediction.get("baselines", {})
    lines += ["", f"| | best {name} | best step |", "|---|---|---|",
              f"| predicted | {format_number(cmp['predicted_best'])} | {cmp['predicted_best_step']} |",
              *([f"| the kernel sample's own replay (n = {prediction['n']}) | "
                 f"{format_number(cmp['predicted_best_sample'])} | – |"] if ss else []),
              f"| real | {format_number(cmp['real_best'])} | {cmp['real_best_step']} |",
              f"| zero-shot | {format_number(b.get('zero_shot'))} | 0 |",
              f"| majority class | {format_number(b.get('majority'))} | – |",
              f"| linear probe (head kernel) | {format_number(b.get('linear_probe'))} | – |", "",
              f"Error of the prediction {format_number(cmp['best_error'])}; mean |curve error| "
              f"{format_number(cmp['curve_mae'])}; real best inside the interval: {'yes' if cmp['in_interval'] else 'no'}; "
              f"beats every baseline: {'yes' if cmp['beats_baselines'] else 'no'}."]
    if cmp.get("left_linear_regime") is not None:
        lines.append(f"Linear regime at the last step: lin_gap {format_number(cmp['lin_gap'])} vs output shift "
                     f"{format_number(cmp['output_shift'])} — "
                     + ("the run LEFT the linear regime the prediction assumes." if cmp["left_linear_regime"]
                        else "the run stayed close to its linearization."))
    refreshes = prediction.get("refreshes", [])
    if refreshes:
        f = format_number
        lines += ["", f"Kernel refreshes (kernel re-taken at θ_t, the rest replayed from f_t; real final {name} "
                  f"{f(cmp['real_metric'][-1])}, best {f(cmp['real_best'])} at step {cmp['real_best_step']}):", "",
                  f"| at step | cost (s) | forecast best {name} [interval] (step) | forecast final {name} [interval] |",
                  "|---|---|---|---|"]
        for r in refreshes:
            (blo, bhi), (flo, fhi) = r["metric_interval"], r["final_interval"]
            lines.append(f"| {r['step']} | {f(r['kernel_s'])} | {f(r['best_metric'])} [{f(blo)}, {f(bhi)}] "
                         f"({r['best_step']}) | {f(r['final_metric'])} [{f(flo)}, {f(fhi)}] |")
    lines += [f"- {w}" for w in prediction.get("warnings", [])]
    return "\n".join(lines) + "\n"


def plot_overlay(prediction: dict, rows: list[dict], path: Path) -> Path:
    """``prediction.png``: predicted vs real eval loss and metric against step (interval as a band at the best),
    with the forecast of every kernel refresh (``refreshes``) overlaid from its step on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = prediction.get("metric_name", "metric")
    real = [r for r in rows if r.get("eval_metric") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(prediction["steps"], prediction["eval_loss"], "--", marker=".", label="predicted eval_loss")
    ax1.plot([r["step"] for r in real], [r["eval_loss"] for r in real], marker="o", label="real eval_loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(prediction["steps"], prediction["eval_metric"], "--", marker=".", label=f"predicted ({prediction['kernel']})")
    ax2.plot([r["step"] for r in real], [r["eval_metric"] for r in real], marker="o", label="real")
    for r in prediction.get("refreshes", []):
        ax2.plot(r["steps"], r["eval_metric"], ":", marker=".", ms=3, label=f"refresh at step {r['step']}")
    lo, hi = prediction["metric_interval"]
    ax2.axhspan(lo, hi, alpha=0.15, label="interval of predicted best")
    for key, style in (("zero_shot", ":"), ("linear_probe", "-.")):
        v = prediction.get("baselines", {}).get(key)
        if v is not None and np.isfinite(v):
            ax2.axhline(v, ls=style, lw=1, color="gray", label=key.replace("_", " "))
    ax2.set_xlabel("step")
    ax2.set_ylabel(name)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def check_run(prediction: dict, run_dir: Path, fig_dir: Path) -> tuple[dict, str]:
    """Compare a prediction with the finished run in ``run_dir``; writes the overlay figure into ``fig_dir``."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    cmp = compare(prediction, rows)
    plot_overlay(prediction, rows, Path(fig_dir) / "prediction.png")
    return cmp, comparison_markdown(prediction, cmp)


def predict_against(run_dir: Path, out_dir: Path, *, n: int | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> tuple[dict, dict]:
    """Predict the finished run in ``run_dir`` from the kernel at θ0 with its own config
    (:func:`tangentft.predict.curve.predict_run`, ``n`` caps the kernel sample) and compare it with the run:
    writes prediction.json, against.md and figures/prediction.png into ``out_dir``; returns (prediction, comparison)."""
    from ..train.config import load_config
    from .curve import predict_run, write_prediction

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise TangentError(f"{run_dir}: not a finished train run (no metrics.jsonl)")
    prediction = predict_run(load_config(run_dir), n=n, progress=progress)
    write_prediction(out_dir, prediction)
    cmp, md = check_run(prediction, run_dir, out_dir / "figures")
    atomic_write(out_dir / "against.md", f"# Prediction against {run_dir.name}\n\n" + md)
    return prediction, cmp
