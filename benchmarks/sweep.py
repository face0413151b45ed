"""Regret at equal compute: tangentft sweep vs random search, Optuna TPE, TPE + ASHA and TPE + Hyperband, as a
replay over cached real runs.

    PYTHONPATH=src python benchmarks/sweep.py --cache experiments/results/predict_vs_real/configs --label cheap

Every configuration of a model × task grid was trained for real once by the calibration harness
(``experiments/predict_vs_real.py``), which caches, per configuration, the real eval curve and the prediction made
before the run (``config``, ``method``, ``params``, ``lr``, ``prediction{steps, eval_metric, best_metric,
best_step, metric_interval}``, ``real{steps, eval_metric, ...}``, ``predict_s``, ``train_s``). A strategy here
queries that cache instead of training: a trial of configuration c "trains" by reporting c's real eval metric at
its real evaluation steps, and pays the steps between them (compute = optimizer steps trained; a configuration
already trained is read back for free, one pruned is pruned again for free; the replay ends when the budget is
spent or every configuration is finished or pruned). A trial still running when the budget runs out stops there. Each
strategy chooses the configuration with the best eval metric it observed; its regret is the grid's best real
metric minus the chosen configuration's real best metric, in points (×100).

Strategies, all on Optuna over one categorical "configuration" dimension:
  - random: ``RandomSampler``, every trial to the end;
  - tpe: ``TPESampler``, every trial to the end;
  - asha: TPE + ``SuccessiveHalvingPruner`` (min resource = the first eval step, reduction factor 3);
  - hyperband: TPE + ``HyperbandPruner`` (min resource = the first eval step, max = the run's steps);
  - tangentft: the prescreen's ranking (each configuration's predicted best metric) enqueued first (the space's
    ``top`` = 3, one at a time, as ``tangentft sweep`` does), then TPE, every trial pruned by
    :class:`tangentft.integrations.optuna.ForecastPruner` on its prediction.
Budgets: 1/8, 1/5 and 1/2 of the grid's compute (Σ steps over its configurations); several sampler seeds.

The prescreen's own cost is not in "steps trained": it is reported beside the regret as the sum of the kernel
passes' wall time over the grid's training wall time (``predict_s``/``train_s`` in the cache; one kernel per
configuration there, since the harness predicted each configuration on its own — a sweep shares one kernel
between configurations of one parameter set).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import optuna

from tangentft.integrations.optuna import PREDICTION_ATTR, ForecastPruner, compact_prediction
from tangentft.io import atomic_path, write_json

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("tangentft", "random", "tpe", "asha", "hyperband")
FRACTIONS = (1 / 8, 1 / 5, 1 / 2)
TOP = 3
MAX_ASKS = 500  # a sampler that keeps proposing configurations it has tried still ends


def load_grid(folder: Path) -> dict[tuple[str, str], list[dict]]:
    """The cached configurations grouped by (model, task), each with its real curve (steps > 0), real best metric,
    steps and prediction."""
    grids = defaultdict(list)
    for path in sorted(Path(folder).glob("*.json")):
        d = json.loads(path.read_text())
        real = d["real"]
        curve = [(s, m) for s, m in zip(real["steps"], real["eval_metric"], strict=True) if s > 0 and m is not None]
        grids[(d["model"], d["task"])].append({
            "name": d["config"], "curve": curve, "best": max(real["eval_metric"]), "steps": real["steps"][-1],
            "prediction": compact_prediction({**d["prediction"], "n_eval": d.get("n_eval")}), "predict_s": d.get("predict_s"),
            "train_s": d.get("train_s"),
            # what a sweep shares between the configurations of one parameter set (the kernel, θ0's outputs, the
            # model load) and what it pays per configuration (the replays)
            "param_set": json.dumps([d["method"], d.get("method_options") or d.get("params")], sort_keys=True),
            "replay_s": (d["prediction"].get("timings") or {}).get("simulate_s"), "device": d.get("device", "cpu")})
    return dict(grids)


def _study(strategy: str, seed: int, steps: int, first: int) -> optuna.Study:
    sampler = (optuna.samplers.RandomSampler(seed=seed) if strategy == "random"
               else optuna.samplers.TPESampler(seed=seed))
    pruner = {"asha": optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3),
              "hyperband": optuna.pruners.HyperbandPruner(min_resource=first, max_resource=steps, reduction_factor=3),
              "tangentft": ForecastPruner()}.get(strategy, optuna.pruners.NopPruner())
    # a fixed name: HyperbandPruner assigns brackets by a hash of the study name
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner, study_name=f"{strategy}-{seed}")


def replay(grid: list[dict], strategy: str, budget: float, seed: int) -> dict:
    """One strategy on one grid within ``budget`` steps: the configuration chosen, steps spent, trials run."""
    by_name = {c["name"]: c for c in grid}
    names = [c["name"] for c in grid]
    study = _study(strategy, seed, max(c["steps"] for c in grid), min(c["curve"][0][0] for c in grid))
    ranked = sorted(grid, key=lambda c: -c["prediction"]["best_metric"])[:TOP]
    seen: dict[str, float] = {}  # best eval metric observed per configuration
    finished: dict[str, float] = {}
    pruned: set[str] = set()
    trained_to: dict[str, int] = {}
    spent, asks, out_of_budget = 0.0, 0, False
    while spent < budget and asks < MAX_ASKS and len(finished) + len(pruned) < len(grid) and not out_of_budget:
        asks += 1
        if strategy == "tangentft":
            tried = {t.params.get("config") for t in study.get_trials(deepcopy=False)}
            nxt = next((c["name"] for c in ranked if c["name"] not in tried), None)
            if nxt is not None:
                study.enqueue_trial({"config": nxt})
        trial = study.ask()
        name = trial.suggest_categorical("config", names)
        c = by_name[name]
        if name in finished:  # already trained to the end: its result is known, nothing to pay
            study.tell(trial, finished[name])
            continue
        if name in pruned:  # the strategy has already stopped it: proposed again, it is stopped again, for free
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        if strategy == "tangentft":
            trial.set_user_attr(PREDICTION_ATTR, c["prediction"])
        pos, state = trained_to.get(name, 0), None  # steps already paid for (a run cut by the budget)
        for step, value in c["curve"]:
            if step > pos:
                if spent + step - pos > budget:
                    out_of_budget = True
                    break
                spent += step - pos
                pos = trained_to[name] = step
            seen[name] = max(seen.get(name, -np.inf), value)
            trial.report(value, step)
            if trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                break
        if out_of_budget:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif state is not None:
            pruned.add(name)
            study.tell(trial, state=state)
        else:
            finished[name] = max(v for _, v in c["curve"])
            study.tell(trial, finished[name])
    chosen = max(seen, key=seen.get) if seen else None
    return {"chosen": chosen, "spent": spent, "trials": len(study.trials), "trained": len(trained_to)}


def prescreen_costs(grid: list[dict]) -> tuple[float, float | None]:
    """The prescreen's wall time over the grid's training wall time: as the harness paid it (one kernel per
    configuration) and as a sweep pays it (one kernel, outputs and load per parameter set — the mean of its
    configurations' — plus every configuration's replays); None where the cache has no timings split."""
    train = max(1e-9, sum(c["train_s"] or 0 for c in grid))
    paid = sum(c["predict_s"] or 0 for c in grid) / train
    if any(c["replay_s"] is None or c["predict_s"] is None for c in grid):
        return paid, None
    sets: dict[str, list[dict]] = defaultdict(list)
    for c in grid:
        sets[c["param_set"]].append(c)
    fixed = sum(float(np.mean([c["predict_s"] - c["replay_s"] for c in cs])) for cs in sets.values())
    return paid, (fixed + sum(c["replay_s"] for c in grid)) / train


def benchmark(grids: dict, seeds: int) -> dict:
    """Regret (points) of every strategy at every budget fraction for every model × task grid, over ``seeds``."""
    rows = []
    for (model, task), grid in sorted(grids.items()):
        best = max(c["best"] for c in grid)
        total = sum(c["steps"] for c in grid)
        pre, shared = prescreen_costs(grid)
        for frac in FRACTIONS:
            for strategy in STRATEGIES:
                regrets, spent = [], []
                for seed in range(seeds):
                    r = replay(grid, strategy, frac * total, seed)
                    chosen = r["chosen"]
                    real = next(c["best"] for c in grid if c["name"] == chosen) if chosen else min(c["best"] for c in grid)
                    regrets.append(100 * (best - real))
                    spent.append(r["spent"] / total)
                rows.append({"model": model, "task": task, "configs": len(grid), "grid_steps": total,
                             "fraction": frac, "strategy": strategy, "mean_regret": float(np.mean(regrets)),
                             "std_regret": float(np.std(regrets)), "within_1pt": float(np.mean(np.array(regrets) <= 1)),
                             "spent_fraction": float(np.mean(spent)), "regrets": regrets,
                             "prescreen_cost_vs_grid_train": pre if strategy == "tangentft" else None,
                             "prescreen_cost_shared_vs_grid_train": shared if strategy == "tangentft" else None})
    return {"rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """Per budget and strategy: mean regret over pairs, pairs with mean regret ≤ 1 point; and the issue's targets."""
    out = {}
    pairs = sorted({(r["model"], r["task"]) for r in rows})
    for frac in FRACTIONS:
        key = f"1/{round(1 / frac)}"
        out[key] = {s: {"mean_regret": float(np.mean([r["mean_regret"] for r in rows
                                                        if r["fraction"] == frac and r["strategy"] == s])),
                        "pairs_within_1pt": sum(1 for r in rows if r["fraction"] == frac and r["strategy"] == s
                                                and r["mean_regret"] <= 1)}
                    for s in STRATEGIES}
    at5 = out["1/5"]["tangentft"]["pairs_within_1pt"]
    beats = {k: v["tangentft"]["mean_regret"] < min(v["asha"]["mean_regret"], v["hyperband"]["mean_regret"])
             for k, v in out.items()}
    first = [r for r in rows if r["strategy"] == "tangentft" and r["fraction"] == FRACTIONS[0]]
    costs = {}
    for k in ("prescreen_cost_vs_grid_train", "prescreen_cost_shared_vs_grid_train"):
        v = [r[k] for r in first if r[k] is not None]
        costs[k] = {"min": min(v), "mean": float(np.mean(v)), "max": max(v)} if v else None
    return {"by_budget": out, "pairs": len(pairs), **costs,
            "target_within_1pt_at_1_5": {"pairs": at5, "of": len(pairs), "met": at5 >= min(4, len(pairs))},
            "target_beats_asha_and_hyperband": {"by_budget": beats, "met": all(beats.values())}}


def figure(result: dict, path: Path, title: str) -> None:
    """Mean regret over model × task pairs per strategy, one panel per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = result["summary"]["by_budget"]
    fig, axes = plt.subplots(1, len(by), figsize=(4 * len(by), 3.4), sharey=True)
    for ax, (key, v) in zip(axes, by.items(), strict=True):
        vals = [v[s]["mean_regret"] for s in STRATEGIES]
        ax.bar(STRATEGIES, vals, color=["C3", "C7", "C0", "C1", "C2"])
        ax.set_title(f"budget {key} of the grid")
        ax.tick_params(axis="x", rotation=30)
    axes[0].set_ylabel("mean regret (points)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="experiments/results/predict_vs_real/configs",
                   help="Folder of the harness's per-configuration JSON files (repo-relative or absolute).")
    p.add_argument("--label", default="cheap", help="Names the outputs: benchmarks/results/sweep_LABEL.{json,png}.")
    p.add_argument("--seeds", type=int, default=20)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cache = Path(args.cache)
    folder = cache if cache.is_absolute() else ROOT / cache
    grids = load_grid(folder)
    if not grids:
        raise SystemExit(f"error: no configuration JSON files in {args.cache}")
    result = benchmark(grids, args.seeds)
    shown = str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else folder.name
    sizes = sorted({len(g) for g in grids.values()})
    result["meta"] = {
        "label": args.label, "cache": shown, "seeds": args.seeds, "fractions": [f"1/{round(1 / f)}" for f in FRACTIONS],
        "grids": {f"{m}/{t}": len(g) for (m, t), g in sorted(grids.items())},
        "compute": "optimizer steps trained (replayed from the cache); the prescreen's cost is reported apart",
        "device": "CPU replay of cached runs (no training in this script)",
        "runs_trained_on": {d: sum(c["device"] == d for g in grids.values() for c in g)
                            for d in sorted({c["device"] for g in grids.values() for c in g})},
        "note": (f"{args.label} cache: {sizes} configurations per model × task pair. " + (
            "The cheap harness grid is only 5 configurations per pair (48 examples, 24 steps, runs that barely "
            "move): budgets of 1/8 and 1/5 are less than one full run. The realistic grid (≥ 16 configurations × "
            "5 tasks on MiniLM, ≥ 8 on SmolLM2) comes from the issue-26 harness; rerun with --cache on its folder."
            if args.label == "cheap" else "")),
    }
    out = ROOT / "benchmarks" / "results" / f"sweep_{args.label}.json"
    write_json(out, result)
    figure(result, out.with_suffix(".png"), f"tangentft sweep vs tuners, regret at equal compute — {args.label} cache "
           f"({shown}, {sizes} configs per pair, {args.seeds} seeds)")
    for key, v in result["summary"]["by_budget"].items():
        print(key, "  ".join(f"{s} {v[s]['mean_regret']:.2f} ({v[s]['pairs_within_1pt']})" for s in STRATEGIES))
    print(json.dumps({k: v for k, v in result["summary"].items() if k != "by_budget"}))


if __name__ == "__main__":
    main()
