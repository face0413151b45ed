"""LoRA's A path before training, without a pilot: the kernel taken at a look-ahead point where B ≠ 0.

    PYTHONPATH=src python experiments/lora_lookahead.py     # the realistic harness's LoRA rows, ~2 min a MiniLM row

PEFT starts every LoRA B at 0, so the kernel at θ0 holds ΔB·A0 but not B·ΔA (issue #26 §2); the kernel refresh
re-takes it after a real pilot where B ≠ 0. This measures a pilot-free stand-in with no free parameter: AdamW moves
each entry of B by about lr per step in the direction of −sign of its gradient, so B is put at −(Σ lr / 2)·sign(∂L/∂B)
— the midpoint of the largest travel the run's schedule allows, the gradient taken at θ0 on the kernel sample — and
the kernel (A and B blocks, head) is re-taken there; the run is then replayed from θ0's outputs with that kernel
(:func:`tangentft.predict.curve.predict_with`, extrapolated to n_train as every prediction). The full travel (Σ lr)
is reported beside it to show how much the answer depends on the point. Scored against the real runs cached by
``experiments/predict_vs_real.py --regime realistic``; writes ``experiments/results/lora_lookahead.json``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from predict_vs_real import DATA, row_config  # this script runs from experiments/, beside the harness

from tangentft.data.sampling import sample_n
from tangentft.io import write_json
from tangentft.predict.curve import parameterized_model, predict_with, run_kernels, step_plan
from tangentft.train.loop import TrainConfig, split_data

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "experiments" / "results" / "predict_vs_real_realistic" / "configs"
OUT = ROOT / "experiments" / "results" / "lora_lookahead.json"
TRAVELS = {"half": 0.5, "full": 1.0}  # × Σ lr over the run's schedule


def lookahead_state(cfg: TrainConfig, n: int, travel: float) -> dict[str, torch.Tensor]:
    """The run's trained tensors at θ0 with every LoRA B at −travel·sign(∂L/∂B), the gradient of the mean training
    loss over the kernel sample of ``n`` examples at θ0."""
    task = cfg.load_task()
    data = split_data(task, cfg)
    x = sample_n(data.train, n, cfg.seed)
    method, tm, _ = parameterized_model(cfg, task.spec, data.train)
    tm.eval()  # dropout off: the gradient of the function the kernel describes
    params = method.trainable_parameters(tm)
    for i in range(0, len(x), 16):
        batch = x[i : i + 16]
        enc = tm.encode(batch)
        f = tm(enc["input_ids"], enc["attention_mask"]).float()
        y = tm.targets(batch).to(f.device)
        loss = (F.cross_entropy(f, y.argmax(1), reduction="sum") if task.spec.kind == "classification"
                else ((f - y) ** 2).mean(1).sum())
        (loss / len(x)).backward()
    state = method.checkpoint_state(tm)
    for name, p in params.items():
        if "lora_B" in name:
            state[name] = -travel * torch.sign(p.grad)
    return state


def check(path: Path) -> dict:
    """θ0 prediction vs the look-ahead kernels' predictions vs the real run, for one cached LoRA row."""
    row = json.loads(path.read_text())
    cfg = row_config(row, DATA)
    n = row["kernel_n"]
    rk0 = run_kernels(cfg, n=n)
    out = {"row": path.stem, "real": row["comparison"]["real_best"],
           "theta0": predict_with(rk0, cfg)["best_metric"], "sum_lr": float(sum(step_plan(cfg, row["n_train"]).lrs))}
    for label, frac in TRAVELS.items():
        rk = run_kernels(cfg, n=n, state=lookahead_state(cfg, n, frac * out["sum_lr"]))
        # The kernel of the look-ahead point, the outputs and baselines of θ0: the replay starts where the run does.
        rk = replace(rk, f0=rk0.f0, f0_eval=rk0.f0_eval, kp_train=rk0.kp_train, kp_cross=rk0.kp_cross,
                     j_theta0=rk0.j_theta0)
        out[label] = predict_with(rk, cfg)["best_metric"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="*lora*", help="Glob over the realistic cache's row files.")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for path in sorted(CACHE.glob(f"{args.rows}.json")):
        r = check(path)
        rows.append(r)
        print(f"{r['row']:45s} real {r['real']:.3f}  θ0 {r['theta0']:.3f}  "
              + "  ".join(f"{k} {r[k]:.3f}" for k in TRAVELS), flush=True)
    errors = {k: [100 * (r[k] - r["real"]) for r in rows] for k in ("theta0", *TRAVELS)}
    summary = {k: {"mean_error_pts": float(np.mean(v)), "rmse_pts": float(np.sqrt(np.mean(np.square(v))))}
               for k, v in errors.items()}
    write_json(OUT, {"rows": rows, "summary": summary, "threads": 1})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
