"""tangentft sweep: the forecast pruner under a plain Optuna objective, the space file's validation, a tiny sweep end
to end, its resumption after a killed worker, and two workers on one SQLite study."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from tangentft.cli.main import app
from tangentft.errors import TangentError
from tangentft.integrations.optuna import PREDICTION_ATTR, ForecastPruner, forecast_bound
from tangentft.sweep import Budget, load_space
from tangentft.train.checkpoint import checkpoint_step

ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY_SPACE = """
steps = [{steps}]
batch_size = [4]
ranks = [2]
top = 2
draws = 4
[lr]
low = 1e-3
high = 1e-2
points = 2
[train]
n_train = 12
n_eval = 8
{extra}
[[sets]]
method = "lora"
params = "q,v@0"
"""


def _space(tmp_path: Path, steps: int = 4, extra: str = "") -> Path:
    path = tmp_path / "space.toml"
    path.write_text(TINY_SPACE.format(steps=steps, extra=extra))
    return path


# -- the pruner ----------------------------------------------------------------------------------------------------
PRED = {"steps": [0, 2, 4, 6], "eval_metric": [0.5, 0.6, 0.65, 0.7], "best_metric": 0.7, "metric_interval": [0.6, 0.75]}


def test_forecast_bound_is_the_in_run_forecasts_upper_end_for_the_best_value():
    from scipy.stats import norm

    half = norm.ppf(0.9) * (0.75 - 0.6) / (2 * norm.ppf(0.975))  # the 80% half-width from the 95% interval's spread
    # at step 2 the run reads 0.55, 0.05 under the prediction: the rest of the predicted curve is carried 0.05 lower
    assert forecast_bound(PRED, {2: 0.55}) == pytest.approx(0.70 - 0.05 + half)
    # a better value already seen is never forecast away; past the last predicted step nothing is left to gain
    assert forecast_bound(PRED, {2: 0.9, 4: 0.1}) >= 0.9
    assert forecast_bound(PRED, {6: 0.4}) == pytest.approx(0.4)
    # a wider level bounds higher
    assert forecast_bound(PRED, {2: 0.55}, level=0.95) > forecast_bound(PRED, {2: 0.55})
    # minimizing: the mirror image (a loss predicted to fall to 0.6 reads 0.1 above its prediction at step 2)
    loss = {**PRED, "eval_metric": [1.0, 0.8, 0.7, 0.6], "best_metric": 0.6, "metric_interval": [0.45, 0.6],
            "metric_name": "loss"}
    assert forecast_bound(loss, {2: 0.9}, maximize=False) == pytest.approx(0.6 + 0.1 - half)


def test_forecast_pruner_prunes_a_plain_optuna_objective_only_when_the_forecast_cannot_win():
    curves = [  # (real curve reported at steps 2, 4, 6; the prediction the trial carries or None)
        ([0.7, 0.8, 0.8], PRED),                                            # finishes: best 0.8
        ([0.5, 0.5, 0.5], PRED),                                            # 0.5 + 0.1 + 0.05 < 0.8 → pruned at 2
        ([0.5, 0.7, 0.9], {**PRED, "eval_metric": [0.5, 0.6, 0.8, 1.0]}),   # 0.5 + 0.4 + 0.05 ≥ 0.8 → runs on
        ([0.1, 0.1, 0.1], None),                                            # no prediction: never pruned
    ]

    def objective(trial: optuna.Trial) -> float:
        real, pred = curves[trial.number]
        if pred is not None:
            trial.set_user_attr(PREDICTION_ATTR, pred)
        for step, value in zip((2, 4, 6), real, strict=True):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return max(real)

    study = optuna.create_study(direction="maximize", pruner=ForecastPruner())
    study.optimize(objective, n_trials=len(curves))
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    assert list(study.trials[1].intermediate_values) == [2]
    assert study.best_value == 0.9
    assert isinstance(ForecastPruner(), optuna.pruners.BasePruner)
    with pytest.raises(TangentError, match="n_finished"):
        ForecastPruner(n_finished=0)


# -- the space -------------------------------------------------------------------------------------------------------
def test_the_space_grid_and_its_configs(tmp_path):
    space = load_space(_space(tmp_path), "tiny-llama", "sst2")
    grid = space.grid()
    assert [g["lr"] for g in grid] == [0.001, 0.01]
    cfg = space.config(grid[1], "tiny-llama", "sst2")
    assert (cfg.method, cfg.to_json()["method_options"], cfg.lr, cfg.max_steps, cfg.batch_size, cfg.n_train) == (
        "lora", {"params": "q,v@0", "lora_r": 2}, 0.01, 4, 4, 12)


@pytest.mark.parametrize("text,named", [
    ('steps = [0]\n[lr]\nlow = 1e-3\nhigh = 1e-2\n[[sets]]\nmethod = "lora"\n', "steps: every entry must be ≥ 1"),
    ('steps = [4]\n[lr]\nlow = 1e-2\nhigh = 1e-3\n[[sets]]\nmethod = "lora"\n', "lr: Value error" if False else "lr: needs"),
    ('steps = [4]\n[lr]\nlow = 1e-3\nhigh = 1e-2\n[[sets]]\nmethod = "lorax"\n', "sets[0]: unknown method 'lorax'"),
    ('steps = [4]\n[lr]\nlow = 1e-3\nhigh = 1e-2\n[[sets]]\nmethod = "full"\nparams = "zz@0"\n', "sets[0]: set"),
    ('steps = [4]\nbogus = 1\n[lr]\nlow = 1e-3\nhigh = 1e-2\n[[sets]]\nmethod = "full"\n', "bogus: Extra inputs"),
    ('steps = [4]\npull = ["selective"]\n[lr]\nlow = 1e-3\nhigh = 1e-2\n[[sets]]\nmethod = "full"\n', "pull: pull 'selective'"),
    ('steps = [4]\n[lr]\nlow = 1e-3\nhigh = 1e-2\n[train]\nlr = 1\n[[sets]]\nmethod = "full"\n', "train: 'lr' is set by the space"),
    ('steps = [4]\n[lr]\nlow = 1e-3\nhigh = 1e-2\n[train]\nn_eval = "x"\n[[sets]]\nmethod = "full"\n', "field 'n_eval'"),
    ('steps = [4]\n[lr]\nlow = 1e-3\n[[sets]]\nmethod = "full"\n', "lr.high: Field required"),
    ('steps = [4\n', "not a TOML file"),
])
def test_a_bad_space_is_refused_in_one_line_naming_the_key(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TangentError) as err:
        load_space(path, "tiny-llama", "sst2")
    assert named in err.value.message and "\n" not in err.value.message and str(path) in err.value.message


def test_every_bad_entry_is_named_not_only_the_first(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('steps = [0]\nbatch_size = [-1]\n[lr]\nlow = -1\nhigh = 1\n[[sets]]\nmethod = "full"\n')
    with pytest.raises(TangentError) as err:
        load_space(path, "tiny-llama", "sst2")
    assert all(k in err.value.message for k in ("steps:", "batch_size:", "lr.low:"))


def test_the_shipped_example_space_validates_for_the_documented_models():
    for model in ("tiny-llama", "smollm2-135m"):
        space = load_space(ROOT / "examples" / "space.toml", model, "sst2")
        assert len(space.grid()) == 36


def test_budget_in_full_runs_or_wall_clock():
    assert Budget.parse("2.5") == Budget(runs=2.5)
    assert Budget.parse("30m") == Budget(seconds=1800) and Budget.parse("90s") == Budget(seconds=90)
    for bad in ("0", "x", "-1h", "inf"):
        with pytest.raises(TangentError, match="budget"):
            Budget.parse(bad)


def test_the_budget_counts_finished_and_committed_compute_or_training_time():
    import datetime

    from tangentft.sweep.search import spent

    study = optuna.create_study(direction="maximize")
    t0 = datetime.datetime(2026, 1, 1)
    for state, attrs, secs in [
        ("COMPLETE", {"compute": 100, "start_compute": 0}, 10),
        ("PRUNED", {"compute": 30, "start_compute": 0}, 3),
        ("COMPLETE", {"compute": 100, "start_compute": 40}, 6),  # a retry that resumed at compute 40
        ("FAIL", {"compute": 40, "start_compute": 0}, 4),        # the dead trial it retried
        ("COMPLETE", {"reused": True}, 1),                       # read back a finished configuration
    ]:
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, state=getattr(optuna.trial.TrialState, state), value=0.5 if state == "COMPLETE" else None,
            datetime_start=t0, datetime_complete=t0 + datetime.timedelta(seconds=secs), params={}, distributions={},
            user_attrs=attrs, system_attrs={}, intermediate_values={}, trial_id=0))
    assert spent(study, Budget(runs=1)) == 100 + 30 + 60 + 40
    assert spent(study, Budget(seconds=60)) == pytest.approx(24)


# -- end to end ------------------------------------------------------------------------------------------------------
def _sweep_args(data_dir, space, out, budget="1", *extra):
    return ["sweep", "--model", "tiny-llama", "--task", str(data_dir / "sst2"), "--space", str(space),
            "--budget", budget, "--out", str(out), "--seed", "0", *extra]


def test_a_tiny_sweep_runs_end_to_end_and_refuses_another_task_or_an_unreachable_storage(tmp_path, data_dir,
                                                                                         monkeypatch):
    monkeypatch.setenv("TANGENTFT_CACHE", str(tmp_path / "cache"))
    space, out = _space(tmp_path), tmp_path / "sweep"
    res = CliRunner().invoke(app, _sweep_args(data_dir, space, out, "2"))
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    chosen = rep["chosen"]
    assert chosen["command"].startswith("tangentft train --model tiny-llama") and "--lora-r" not in chosen["command"]
    assert "lora_r=2" in chosen["command"] and (out / chosen["run"] / "summary.json").is_file()
    assert json.loads((out / chosen["run"] / "prediction.json").read_text())["best_metric"] == chosen["predicted"]
    trained = [t for t in rep["trials"] if t["state"] == "COMPLETE"]
    assert len(trained) == 2 and all(t["predicted"] is not None and t["real"] is not None for t in trained)
    assert {t["params"]["lr"] for t in trained} == {0.001, 0.01}  # the prescreen's two enqueued first
    assert rep["compute"]["trained"] == rep["compute"]["grid"] == 2 * 4 * 4  # two runs of 4 steps × batch 4
    assert len(rep["prescreen"]["rows"]) == 2 and "winner" in rep["prescreen"]["ranking"]["verdict"]
    md = (out / "report.md").read_text()
    assert "## Prescreen" in md and chosen["command"] in md
    assert all(not k["cached"] for k in rep["prescreen"]["kernels"].values())

    # the same command again: the budget is spent, nothing is trained again; the kernel now comes from the cache
    res = CliRunner().invoke(app, _sweep_args(data_dir, space, out, "2"))
    assert res.exit_code == 0, res.output
    again = json.loads((out / "report.json").read_text())
    assert len(again["trials"]) == 2 and all(k["cached"] for k in again["prescreen"]["kernels"].values())

    bad = tmp_path / "bad.toml"
    bad.write_text(space.read_text().replace("steps = [4]", "steps = [0]"))
    for args, said in [
        (_sweep_args(data_dir, space, out, "2")[:4] + [str(data_dir / "cr")] + _sweep_args(data_dir, space, out)[5:],
         "study 'sweep' was made for task"),
        (_sweep_args(data_dir, space, tmp_path / "x", "1", "--storage", f"sqlite:///{tmp_path}/no/such/dir/s.db"),
         "is unreachable"),
        (_sweep_args(data_dir, space, tmp_path / "x", "1", "--storage", "not a url"), "not a SQLAlchemy database URL"),
        (_sweep_args(data_dir, bad, tmp_path / "x", "1"), "steps: every entry must be ≥ 1"),
        (_sweep_args(data_dir, space, tmp_path / "x", "lots"), "budget 'lots'"),
    ]:
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert said in res.output and "Traceback" not in res.output and res.output.count("error:") == 1


def test_a_sweep_of_a_space_smaller_than_its_budget_stops_when_the_space_is_exhausted(tmp_path, data_dir):
    from tangentft.sweep import run_sweep

    path = _space(tmp_path)
    path.write_text(path.read_text().replace("points = 2", "points = 1").replace("high = 1e-2", "high = 1e-3"))
    space = load_space(path, "tiny-llama", str(data_dir / "sst2"))
    assert len(space.grid()) == 1
    rep = run_sweep(space, "tiny-llama", str(data_dir / "sst2"), tmp_path / "sweep", Budget(runs=3),
                    cache=tmp_path / "cache", seed=0)
    assert rep["exhausted"] and rep["compute"]["trained"] == rep["compute"]["grid"]  # trained once, not 3 times
    assert sum(not t["reused"] for t in rep["trials"]) == 1 and rep["chosen"]["trial"] == 0
    assert "the space is exhausted" in (tmp_path / "sweep" / "report.md").read_text()


def _cli(data_dir, space, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tangentft", *_sweep_args(data_dir, space, out, *extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _in_process(data_dir, space, out, *extra):
    return CliRunner().invoke(app, _sweep_args(data_dir, space, out, *extra))


def _trials(out: Path, storage: str | None = None):
    return optuna.load_study(study_name="sweep", storage=storage or f"sqlite:///{out}/study.db").get_trials()


def _started(db: Path) -> bool:
    """Whether a worker has started a trial in the SQLite study ``db`` (read directly: creating Optuna's tables from
    here would race with the worker creating them)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("select count(*) from trials").fetchone()[0] > 0
    except sqlite3.OperationalError:  # no database or no tables yet
        return False


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_killed_sweep_continues_with_the_same_command(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("TANGENTFT_CACHE", str(tmp_path / "cache"))
    space, out = _space(tmp_path, steps=40, extra="eval_every = 5"), tmp_path / "sweep"
    proc = _cli(data_dir, space, out, "1")
    deadline = time.time() + 240
    # killed once a checkpoint past step 0 exists (each evaluation writes one)
    while time.time() < deadline and not any((checkpoint_step(r.parent) or 0) > 0
                                             for r in out.glob("runs/*/checkpoint.safetensors")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)  # the run has 35 steps left to be killed in
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    dead = _trials(out)
    assert [t.state.name for t in dead] == ["RUNNING"]  # killed mid-run: the trial is left RUNNING
    run = out / dead[0].user_attrs["run"]
    done_before = _steps(run)
    assert 0 < done_before[-1] < 40

    res = _in_process(data_dir, space, out, "1")  # the same command again (in-process: no second import)
    assert res.exit_code == 0, res.output
    trials = _trials(out)
    assert trials[0].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == trials[0].params
    assert retry[0].user_attrs["run"] == trials[0].user_attrs["run"]
    steps = _steps(run)
    assert steps[: len(done_before)] == done_before and steps == sorted(set(steps)) and steps[-1] == 40
    assert retry[0].user_attrs["start_compute"] > 0  # resumed from the checkpoint, not trained again from 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["chosen"]["trial"] == retry[0].number


def test_two_workers_share_one_sqlite_study(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("TANGENTFT_CACHE", str(tmp_path / "cache"))
    space, out = _space(tmp_path, steps=4), tmp_path / "sweep"
    storage = f"sqlite:///{tmp_path}/shared.db"
    proc = _cli(data_dir, space, out, "4", "--storage", storage)  # one worker in a process of its own; once it
    deadline = time.time() + 240                                     # trains its first trial, a second one here
    while time.time() < deadline and not _started(tmp_path / "shared.db"):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    res = _in_process(data_dir, space, out, "4", "--storage", storage)
    assert proc.wait(timeout=400) == 0 and res.exit_code == 0, (proc.stdout.read(), res.output)
    pids = {proc.pid, os.getpid()}
    trials = _trials(out, storage)
    # trials that trained (finished or pruned by the forecast); the others found their configuration trained or
    # in training by another worker's trial and read its result
    trained = [t for t in trials if "start_compute" in t.user_attrs]
    runs = [t.user_attrs["run"] for t in trained]
    assert len(trained) >= 3 and len(set(runs)) == len(runs)  # no configuration trained twice
    assert {t.user_attrs["worker"]["pid"] for t in trials} == pids  # both worked on it
    for t in trained:  # each run trained once, by one worker: its steps neither repeat nor stop early unless pruned
        steps = _steps(out / t.user_attrs["run"])
        assert steps == list(range(len(steps))) and (steps[-1] == 4 or t.state.name == "PRUNED")
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    rep = json.loads((out / "report.json").read_text())
    assert rep["chosen"]["real"] == best.value
    assert rep["budget"]["spent"] <= rep["budget"]["limit"] + 2 * 4 * 4  # each worker overshoots by a run at most


def test_the_benchmark_replay_spends_steps_and_follows_the_prescreen():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "benchmarks" / "sweep.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def config(name, real, predicted):
        steps = [4, 8, 12]
        return {"name": name, "curve": list(zip(steps, real, strict=True)), "best": max(real), "steps": 12,
                "prediction": {"steps": [0, *steps], "eval_metric": [0.5, *predicted], "best_metric": max(predicted),
                               "metric_interval": [max(predicted) - 0.01, max(predicted) + 0.01]}}

    grid = [config("a", [0.5, 0.55, 0.6], [0.52, 0.55, 0.58]), config("b", [0.6, 0.7, 0.8], [0.6, 0.7, 0.8]),
            config("c", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])]
    first = bench.replay(grid, "tangentft", 12, seed=0)  # one run's compute: the predicted best, trained
    assert first == {"chosen": "b", "spent": 12, "trials": 1, "trained": 1}
    whole = bench.replay(grid, "tangentft", 36, seed=0)  # the rest are pruned at their first evaluation
    assert whole["chosen"] == "b" and whole["spent"] == 12 + 4 + 4 and whole["trained"] == 3
    for strategy in bench.STRATEGIES:
        r = bench.replay(grid, strategy, 6, seed=1)  # less than a run: one trial cut at the budget
        assert r["spent"] == 4 and r["trials"] == 1


def test_the_benchmark_prescreen_cost_shares_one_kernel_per_parameter_set():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "benchmarks" / "sweep.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # two lrs of one parameter set (kernel 8 s + replay 2 s each) and one other set (4 + 1): the harness paid
    # 10 + 10 + 5, a sweep pays one kernel per set (8 + 4) and every replay (2 + 2 + 1)
    grid = [{"param_set": "lora", "predict_s": 10.0, "replay_s": 2.0, "train_s": 50.0},
            {"param_set": "lora", "predict_s": 10.0, "replay_s": 2.0, "train_s": 50.0},
            {"param_set": "full", "predict_s": 5.0, "replay_s": 1.0, "train_s": 100.0}]
    paid, shared = bench.prescreen_costs(grid)
    assert paid == pytest.approx(25 / 200) and shared == pytest.approx(17 / 200)
    grid[0]["replay_s"] = None  # a cache without the timings' split: only what was paid
    assert bench.prescreen_costs(grid) == (pytest.approx(25 / 200), None)
