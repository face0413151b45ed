"""What every reproduction script shares: arguments, the per-configuration cache, training and analysis calls
through the library, rank statistics, figures and the claim summary that the README table is built from.

Each script reproduces one paper claim. It writes, under ``<out>/<script>/<mode>/``:

* ``configs/<key>.json`` — one finished configuration (kernel analysis, training record, …); a rerun reads it
  instead of recomputing, so an interrupted script resumes where it stopped;
* ``claim.json`` — the claim, our figure, the verdict (holds / partly / does not) and why, computed from the
  configuration records by the script's own rule;
* ``<script>.png`` — the figure.

Training runs live under ``<runs>/<script>/<key>/`` (ignored by git: weights never enter ``experiments/``);
a run killed mid-way continues from its checkpoint (``tangentft train --resume`` semantics).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tangentft.io import atomic_path, fingerprint, write_json

REPO = Path(__file__).resolve().parents[1]
# Relative to the repository root (scripts run there), so committed JSON names no /work or /tmp path.
RESULTS = Path("experiments/results")
RUNS = Path("runs/experiments")
DATA = Path(os.environ.get("TANGENTFT_DATA", "../shared/data"))
# "not testable": the statistic is undefined (too few distinct points), so the data neither support nor refute.
VERDICTS = ("holds", "partly", "does not", "not testable")


@dataclass
class Context:
    """Parsed arguments of one reproduction script plus the folders it writes."""

    name: str
    quick: bool
    model: str
    steps: int | None
    seed: int
    out_root: Path
    runs_root: Path
    data: Path
    started: float = field(default_factory=time.perf_counter)  # claim.json's wall_s counts from here

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "default"

    @property
    def out(self) -> Path:
        """``<out>/<script>/<mode>``: configs/, claim.json and the figure."""
        return self.out_root / self.name / self.mode

    def sibling(self, name: str) -> Context:
        """The same arguments for another script (to share its cached configurations)."""
        return Context(name, self.quick, self.model, self.steps, self.seed, self.out_root, self.runs_root, self.data,
                       self.started)

    def task(self, name: str) -> str:
        return str(self.data / name)

    def pick(self, quick, default):
        """``quick`` in quick mode, else ``default``."""
        return quick if self.quick else default

    def train_steps(self, default: int) -> int:
        """Training steps: ``--steps`` when given (the tests run one or two), else ``default``."""
        return self.steps if self.steps is not None else default


def parse(name: str, doc: str, argv: Sequence[str] | None, *, model: str,
          extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[Context, argparse.Namespace]:
    """The shared command line: --quick, --model, --steps, --seed, --out, --runs, --data (+ ``extra`` options)."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="Minutes instead of the default ≤ 40 min.")
    p.add_argument("--model", default=model, help=f"Registry name (default {model}; tests pass tiny-llama/tiny-bert).")
    p.add_argument("--steps", type=int, default=None, help="Override the number of training steps of every run.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="Results root (JSON + PNG).")
    p.add_argument("--runs", type=Path, default=RUNS, help="Root of the training-run folders (weights; not committed).")
    p.add_argument("--data", type=Path, default=DATA, help="Task data folder (sst2/, cola/, …).")
    if extra:
        extra(p)
    a = p.parse_args(argv)
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps must be ≥ 1, got {a.steps}")
    given = [a.out, a.runs, a.data]
    a.out, a.runs, a.data = (_from_repo(x) for x in given)
    os.chdir(REPO)
    if not (a.data / "sst2").is_dir():
        p.error(f"--data {a.data}: no sst2/ task folder there")
    return Context(name, a.quick, a.model, a.steps, a.seed, a.out, a.runs, a.data), a


def _from_repo(path: Path) -> Path:
    """A path given relative to the caller's folder, re-expressed relative to the repository when possible."""
    if path in (RESULTS, RUNS, DATA):
        return path
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(REPO)
    except ValueError:
        return p


def rel(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (committed JSON never names /work or /tmp)."""
    p = Path(os.path.abspath(path))
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return p.name


def key_of(label: str, config: dict) -> str:
    """File-name key of a configuration: a readable label plus a short hash of everything that defines it."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return f"{safe}-{fingerprint(config)[:8]}"


def cached(ctx: Context, label: str, config: dict, compute: Callable[[], dict]) -> dict:
    """The record of one configuration: read from ``configs/<key>.json`` if it is there, else computed and saved."""
    path = ctx.out / "configs" / f"{key_of(label, config)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[{ctx.name}] {label} …", flush=True)
    t = time.perf_counter()
    record = {"label": label, "config": config, **compute()}
    record["wall_s"] = time.perf_counter() - t
    write_json(path, record)
    print(f"[{ctx.name}] {label} done in {record['wall_s']:.0f} s", flush=True)
    return record


# -- library calls ------------------------------------------------------------------------------------------
@functools.cache
def _model_facts(model: str) -> tuple[int, str]:
    from tangentft.models.registry import load_model

    loaded = load_model(model)
    return loaded.structure.num_layers, loaded.kind


def num_layers(model: str) -> int:
    """Transformer layers of a registry model (from its structure map)."""
    return _model_facts(model)[0]


def with_head(model: str, params: str) -> str:
    """``params`` plus the classification head for an encoder, whose head is new (seeded) and must train with
    the selection — as in RoBERTa fine-tuning; a causal LM's outputs are its own label-word logits."""
    return f"{params};head" if _model_facts(model)[1] == "encoder" else params


def train_config(ctx: Context, **fields: Any):
    """The :class:`~tangentft.train.config.TrainConfig` of a run of ``ctx.model`` with ``ctx.seed``."""
    from tangentft.train.config import TrainConfig

    return TrainConfig(model=ctx.model, seed=ctx.seed, **fields)


def run_path(ctx: Context, label: str, fields: dict) -> Path:
    """The run folder of a training configuration: ``<runs>/<script>/<mode>/<label>-<hash>``, the hash over the
    fields the script sets (not every TrainConfig default, so a new library field does not orphan a run)."""
    return ctx.runs_root / ctx.name / ctx.mode / key_of(label, {"model": ctx.model, "seed": ctx.seed, **fields})


def run_dir_of(record: dict) -> Path:
    """The run folder a cached training record was written to."""
    return Path(record["train"]["run_dir"])


def train(ctx: Context, label: str, **fields: Any) -> dict:
    """One training run through :func:`tangentft.train.run.run_training`, resumed if a previous one was killed.

    Returns the summary (without the per-tensor pull fractions), the metrics rows and the run folder.
    """
    from tangentft.train.plots import read_metrics
    from tangentft.train.run import run_training

    cfg = train_config(ctx, **fields)
    run_dir = run_path(ctx, label, fields)
    summary_path = run_dir / "summary.json"
    t = time.perf_counter()
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        resume = (run_dir / "config.json").is_file() and (run_dir / "checkpoint.safetensors").is_file()
        summary = run_training(cfg, run_dir, resume=resume)
    rows = read_metrics(run_dir / "metrics.jsonl")
    summary = {k: v for k, v in summary.items() if k != "pull_fraction"}
    return {"train_config": cfg.to_json(), "summary": summary, "metrics": rows, "run_dir": str(run_dir),
            "call_wall_s": time.perf_counter() - t}


def analyze(ctx: Context, task: str, params: str, candidates: str | None = None, *, n: int, n_eval: int) -> dict:
    """:func:`tangentft.analysis.analyze.analyze` (one eNTK pass, spectrum, KRR, Algorithm 2, stopping rule), trimmed
    to the numbers the experiments read, with its wall time."""
    from tangentft.analysis.analyze import analyze as run_analyze
    from tangentft.models.spec import Spec

    t = time.perf_counter()
    rep, _, _ = run_analyze(ctx.model, task, Spec.parse(params),
                            None if candidates is None else Spec.parse(candidates), n=n,
                            n_eval=n_eval, seed=ctx.seed, lipschitz_examples=2)
    wall = time.perf_counter() - t
    keep = ("n", "K", "lambda_max", "lambda_min", "effective_rank", "decay_beta", "decay_beta_stderr", "decay_r2",
            "num_params", "candidate_singles", "lora_min_rank", "timings", "recommendation")
    data = rep.to_json()
    out = {k: data.get(k) for k in keep}
    out["kappa"] = rep.condition_number["value"]
    out["kappa_sigma"] = rep.condition_number["sigma"]
    out["krr_eval_metric"] = rep.krr["eval_metric"]
    out["zero_shot_metric"] = rep.krr["zero_shot_metric"]
    out["stopping"] = {k: rep.stopping[k] for k in ("T_hat", "step_size", "noise", "critical_radius", "ridge_sigma")}
    out["wall_s"] = wall
    return out


def last_eval(record: dict) -> dict:
    """The last metrics row with an evaluation (the end-of-run numbers)."""
    rows = [r for r in record["metrics"] if r.get("eval_loss") is not None]
    return rows[-1] if rows else {}


def best_eval_step(record: dict) -> int | None:
    """Step of the lowest evaluation loss among the run's evaluations."""
    rows = [r for r in record["metrics"] if r.get("eval_loss") is not None]
    return min(rows, key=lambda r: r["eval_loss"])["step"] if rows else None


def curve_area(record: dict, key: str = "eval_loss") -> float | None:
    """Area under the ``key`` curve by the trapezoid rule, divided by the run length (a mean level)."""
    pts = [(r["step"], r[key]) for r in record["metrics"] if r.get(key) is not None]
    if len(pts) < 2:
        return pts[0][1] if pts else None
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(pts, pts[1:], strict=False))
    return area / (pts[-1][0] - pts[0][0])


# -- statistics ---------------------------------------------------------------------------------------------
def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman rank correlation over the pairs where both values are finite; None with < 3 pairs or a tie-only side."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if _finite(a) and _finite(b)]
    if len(pairs) < 3:
        return None
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(stats.spearmanr(xs, ys)[0])


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def mean(values) -> float | None:
    vals = [v for v in values if _finite(v)]
    return sum(vals) / len(vals) if vals else None


def fmt(v, digits: int = 3) -> str:
    """A number for a sentence: 3 significant digits, 'n/a' for None."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


# -- output -------------------------------------------------------------------------------------------------
def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.2, 3.4)):
    """A matplotlib figure with the Agg backend (no display on the machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, axes


def save_figure(fig, ctx: Context) -> Path:
    """Write ``<script>.png`` atomically and close the figure."""
    import matplotlib.pyplot as plt

    path = ctx.out / f"{ctx.name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a script reproduces it: its number, the paper and where in it, what it claims and what
    its figure shows (the fixed columns of the README "Reproductions" row)."""

    claim_id: str
    paper: str
    where: str
    paper_claim: str
    paper_figure: str


def write_claim(ctx: Context, claim: Claim, fig, *, our_figure: str, verdict: str, why: str, data: dict) -> dict:
    """Save ``fig`` as ``<script>.png`` (:func:`save_figure`; None: no figure) and write ``claim.json``: the row of
    the README "Reproductions" table plus the numbers behind it."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    figure_path = save_figure(fig, ctx) if fig is not None else None
    record = {"claim": claim.claim_id, "script": f"experiments/{ctx.name}.py", "paper": claim.paper,
              "where": claim.where, "paper_claim": claim.paper_claim, "paper_figure": claim.paper_figure,
              "our_figure": our_figure, "verdict": verdict, "why": why, "mode": ctx.mode, "model": ctx.model,
              "figure": rel(figure_path) if figure_path else None, "wall_s": time.perf_counter() - ctx.started,
              "note": "CPU, shared 2-core machine", "data": data}
    write_json(ctx.out / "claim.json", record)
    print(f"[{ctx.name}] {verdict}: {our_figure}", flush=True)
    return record
