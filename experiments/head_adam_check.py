"""Where the realistic head-only predictions lose their points: the Adam replay, or the kernel sample?

    PYTHONPATH=src python experiments/head_adam_check.py --tasks sst2,cr,mr,stsb     # about 2 minutes a task

A MiniLM run that trains only the head (classifier, or the regression head of stsb) is exactly linear in what it trains (f = W φ(x) + b on
frozen features φ), so its linearization is the model itself and every gap between the prediction and the run is
the replay's. This replays the harness's realistic head rows (issue #26 §1: 1,024 training examples, 300 AdamW
steps of batch 16, lr 1e-2, eval on 512) four ways on the run's own features, batches and schedule:

* exact AdamW on W, b (torch.optim.AdamW's update, done in numpy on every training example);
* the same on the 256-example kernel sample the realistic harness predicts from;
* the library's function-space replay (SignGD kernel, Adam's moments in function space —
  :func:`tangentft.analysis.dynamics.simulate`) on every training example, and on the 256 sample.

Against the real run's curve from the harness cache (``predict_vs_real_realistic/configs``). Writes
``experiments/results/head_adam_check.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from predict_vs_real import DATA, REALISTIC_SIZES, RESULTS, row_config  # this script runs from experiments/

from tangentft.analysis import baselines
from tangentft.analysis.dynamics import ADAM_BETAS, StepPlan, loss_and_grad, metric, simulate
from tangentft.data.sampling import sample_indices
from tangentft.io import write_json
from tangentft.predict.curve import parameterized_model, step_plan
from tangentft.train.loop import split_data

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(f"{RESULTS}_realistic") / "configs"
OUT = ROOT / "experiments" / "results" / "head_adam_check.json"
SAMPLE = REALISTIC_SIZES["minilm"]["kernel_n"]  # the realistic harness's kernel sample for MiniLM


def exact_adam(phi, y, phie, ye, w0, b0, plan: StepPlan, rows: np.ndarray, kind: str) -> dict[int, float]:
    """Eval metric at ``plan.eval_steps`` of AdamW (torch's update, weight decay 0, eps 1e-8) on the linear head
    f = W φ + b — cross-entropy (classification) or squared error (regression), as the trainer — the batches of
    ``plan`` indexing ``rows`` of the training features."""
    w, b = w0.copy(), b0.copy()
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    b1, b2 = ADAM_BETAS
    classes = kind == "classification"
    loss = "ce" if classes else "mse"

    def score() -> float:
        return metric(phie @ w.T + b, ye, ye.argmax(1) if classes else None, kind)[1]

    out = {0: score()}
    for t, (lr, batch) in enumerate(zip(plan.lrs, plan.batches, strict=True), start=1):
        idx = rows[np.asarray(batch)]
        _, chi = loss_and_grad(phi[idx] @ w.T + b, y[idx], y[idx].argmax(1) if classes else None, loss)
        chi /= len(idx)
        for p, g, mi, vi in ((w, chi.T @ phi[idx], m[0], v[0]), (b, chi.sum(0), m[1], v[1])):
            mi *= b1
            mi += (1 - b1) * g
            vi *= b2
            vi += (1 - b2) * g**2
            p -= lr * (mi / (1 - b1**t)) / (np.sqrt(vi / (1 - b2**t)) + 1e-8)
        if t in plan.eval_steps:
            out[t] = score()
    return out


def check(task: str) -> dict:
    """The four replays of the realistic head row of ``task`` and the real curve."""
    row = json.loads((CACHE / f"minilm__{task}__head_lr1e-2.json").read_text())
    cfg = row_config(row, DATA)
    spec_task = cfg.load_task()
    kind = spec_task.spec.kind
    data = split_data(spec_task, cfg)
    _, tm, _ = parameterized_model(cfg, spec_task.spec, data.train)
    (f0, phi), (f0e, phie) = tm.predict_and_features(data.train), tm.predict_and_features(data.eval)
    phi, phie = phi.numpy(), phie.numpy()
    f0, f0e = f0.double().numpy(), f0e.double().numpy()
    y, ye = tm.targets(data.train).double().numpy(), tm.targets(data.eval).double().numpy()
    w0, b0 = tm.head.weight.detach().double().numpy(), tm.head.bias.detach().double().numpy()
    sample = sample_indices(len(data.train), SAMPLE, cfg.seed)
    every = np.arange(len(data.train))
    curves = {}
    for label, rows in (("all", every), ("sample", sample)):
        plan = step_plan(cfg, len(rows))
        curves[f"exact AdamW, {label}"] = exact_adam(phi, y, phie, ye, w0, b0, plan, rows, kind)
        kt, kc = baselines.probe_kernels_of(tm, phi[rows], phie, signgd=True)
        c = simulate(kt, kc, f0[rows], f0e, y[rows], ye, plan, loss="ce" if kind == "classification" else "mse",
                     optimizer="adamw", task_kind=kind)
        curves[f"function-space replay, {label}"] = dict(zip(c.steps, c.eval_metric, strict=True))
    real = row["real"]
    curves["real run"] = dict(zip(real["steps"], real["eval_metric"], strict=True))
    out = {"task": task, "n_train": len(every), "sample": SAMPLE, "curves": {}}
    for name, c in curves.items():
        vals = [c[s] for s in sorted(c)]
        out["curves"][name] = {"steps": sorted(c), "eval_metric": vals, "best": max(vals), "final": vals[-1]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="sst2,cr,mr,stsb")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [check(t) for t in args.tasks.split(",")]
    write_json(OUT, {"rows": rows, "threads": 1})
    for r in rows:
        real = r["curves"]["real run"]
        for name, c in r["curves"].items():
            print(f"{r['task']:5s} {name:34s} best {c['best']:.4f} (real {real['best']:.4f})  final {c['final']:.4f}")


if __name__ == "__main__":
    main()
