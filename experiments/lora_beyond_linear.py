"""LoRA beyond the linear regime (issue #26 §2): which prediction accounts for the A path?

    PYTHONPATH=src nice -n 10 python -m experiments.lora_beyond_linear      # resumable; re-run to continue
    PYTHONPATH=src python -m experiments.lora_beyond_linear --report-only

PEFT starts B at 0, so the kernel at θ0 holds ΔB·A0 but not B·ΔA; AdamW moves A by about lr per coordinate per
step, and the cheap-mode harness's LoRA runs that left the linear regime were mispredicted by 8 points on average.
For each of those runs (the cached rows of ``experiments/results/predict_vs_real/configs`` with
``left_linear_regime``) this re-runs the same configuration with kernel refreshes after a short pilot (at the eval
steps 4 and 8 of 24: the kernel re-taken at θ_t where B ≠ 0, so it holds the A path, and the rest replayed from
f_t) and scores, against the real run, the θ0 prediction, the pilot refreshes, the θ0 prediction anchored on the
pilot's partial curve (no new kernel), and power-law / exponential extrapolations of the partial curve.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import numpy as np

from tangentft.io import atomic_write, format_number, write_json
from tangentft.predict.launch import train_with_prediction
from tangentft.train.config import TrainConfig

from .predict_vs_real import CONFIGS, DATA, RESULTS, ROOT, forecasts_at, key, method_options

OUT = ROOT / "experiments" / "results" / "lora_beyond_linear"
RUNS = ROOT / "runs" / "lora_beyond_linear"
PILOT_STEPS = (4, 8)
# MiniLM first (a few minutes each), then SmolLM2 by the size of the θ0 prediction's error.


def todo() -> list[dict]:
    rows = [json.loads(f.read_text()) for f in sorted((RESULTS / "configs").glob("*.json"))]
    left = [r for r in rows if r["method"] == "lora" and r["comparison"]["left_linear_regime"]]
    return sorted(left, key=lambda r: (r["model"] != "minilm", -r["comparison"]["best_error"]))


def run_one(cached: dict) -> dict:
    conf = next(c for c in CONFIGS[cached["model"]] if c[0] == cached["config"])
    cfg = TrainConfig(model=cached["model"], task=str(DATA / cached["task"]), method="lora",
                      method_options=method_options(conf), optimizer=cached["optimizer"], lr=cached["lr"],
                      n_train=cached["n_train"], n_eval=cached["n_eval"], max_steps=cached["steps"],
                      batch_size=cached["batch_size"], eval_every=cached["eval_every"], probe_size=16,
                      seed=cached["seed"])
    run_dir = RUNS / key(cached["model"], cached["task"], cached["config"])
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train_with_prediction(cfg, run_dir, n=cached["n_train"], refresh=list(PILOT_STEPS))
    pred = json.loads((run_dir / "prediction.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {**{k: cached[k] for k in ("model", "task", "config", "method", "lr", "optimizer", "n_train", "n_eval",
                                      "steps", "batch_size", "eval_every", "seed")},
            "prediction": {k: pred[k] for k in ("steps", "eval_metric", "metric_name", "best_step", "best_metric",
                                                  "metric_interval", "lora_a_travel", "timings")},
            "refreshes": pred["refreshes"],
            "real": {"steps": [r["step"] for r in rows], "eval_metric": [r.get("eval_metric") for r in rows],
                     "lin_gap": [r.get("lin_gap") for r in rows], "output_shift": [r.get("output_shift") for r in rows],
                     "train_wall_s": rows[-1]["wall_s"]},
            "cached_real_best": cached["comparison"]["real_best"]}


def summarize(results: list[dict]) -> dict:
    rows = []
    for r in results:
        real_best = max(m for m in r["real"]["eval_metric"] if m is not None)
        row = {"model": r["model"], "task": r["task"], "config": r["config"], "metric": r["prediction"]["metric_name"],
               "real_best": real_best, "theta0_best": r["prediction"]["best_metric"],
               "theta0_error": abs(r["prediction"]["best_metric"] - real_best), "at": {}}
        for step in PILOT_STEPS:
            fc = forecasts_at(r, step)
            row["at"][str(step)] = {k: {"best": v["best"], "best_error": v["best_error"], "final_error": v["final_error"]}
                                    for k, v in fc["methods"].items()}
            ref = next((x for x in r["refreshes"] if x["step"] == step), None)
            if ref is not None:  # the refresh's own replay, not anchored: what the A path changes
                row["at"][str(step)]["refresh kernel_s"] = ref["kernel_s"]
        rows.append(row)
    methods = ["kernel θ0 (anchored)", "kernel refresh", "power", "exp"]
    mean = {}
    for step in PILOT_STEPS:
        for m in methods:
            errs = [x["at"][str(step)][m]["best_error"] for x in rows if m in x["at"][str(step)]]
            mean[f"{m}@{step}"] = 100 * float(np.mean(errs)) if errs else None
    mean["theta0"] = 100 * float(np.mean([x["theta0_error"] for x in rows])) if rows else None
    return {"rows": rows, "mean_best_error_pts": mean}


def table(summary: dict) -> str:
    f = format_number
    m = summary["mean_best_error_pts"]
    lines = ["# LoRA beyond the linear regime (experiments/lora_beyond_linear.py)", "",
             "Cheap-mode runs (48 training examples, 24 AdamW steps of batch 8, 64 eval examples) that left the "
             "linear regime, re-run with kernel refreshes after a pilot of 4 and 8 steps. CPU, shared 2-core machine "
             "under heavy load, one thread. |error| of the best eval metric (accuracy; Pearson r for stsb).", "",
             "| model | task | config | real best | θ0 prediction (error) | "
             + " | ".join(f"{k} @{s}" for s in PILOT_STEPS for k in ("refresh", "θ0 anchored", "power", "exp")) + " |",
             "|---|---|---|---|---|" + "---|" * (4 * len(PILOT_STEPS))]
    for r in summary["rows"]:
        cells = []
        for s in PILOT_STEPS:
            a = r["at"][str(s)]
            for k in ("kernel refresh", "kernel θ0 (anchored)", "power", "exp"):
                cells.append(f"{f(a[k]['best'])} ({f(a[k]['best_error'])})" if k in a else "–")
        lines.append(f"| {r['model']} | {r['task']} | {r['config']} | {f(r['real_best'])} | "
                     f"{f(r['theta0_best'])} ({f(r['theta0_error'])}) | " + " | ".join(cells) + " |")
    lines += ["", "| prediction | mean |error| of the best metric (points) |", "|---|---|",
              f"| kernel at θ0 (before the run) | {f(m['theta0'])} |"]
    for s in PILOT_STEPS:
        for k in ("kernel refresh", "kernel θ0 (anchored)", "power", "exp"):
            lines.append(f"| {k} after a pilot of {s} steps | {f(m[f'{k}@{s}'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--models", default="minilm,smollm2-135m")
    args = p.parse_args()
    (OUT / "configs").mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for cached in todo():
            if cached["model"] not in args.models.split(","):
                continue
            path = OUT / "configs" / f"{key(cached['model'], cached['task'], cached['config'])}.json"
            if path.is_file():
                continue
            t = time.perf_counter()
            write_json(path, run_one(cached))
            print(f"{cached['model']} {cached['task']} {cached['config']} ({time.perf_counter() - t:.0f} s)", flush=True)
    results = [json.loads(f.read_text()) for f in sorted((OUT / "configs").glob("*.json"))]
    if not results:
        print("no results yet")
        return
    summary = summarize(results)
    write_json(OUT / "summary.json", summary)
    atomic_write(OUT / "README.md", table(summary))
    print(json.dumps(summary["mean_best_error_pts"], indent=1))


if __name__ == "__main__":
    main()
