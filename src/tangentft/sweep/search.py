"""The search: an Optuna study in RDB storage whose trials are real training runs, pruned by their forecast.

:func:`run_sweep` opens (or joins) the study — a SQLite file in the output folder by default, any SQLAlchemy URL
otherwise, so several processes or machines can work on one study — prescreens the space (:mod:`.prescreen`),
enqueues the prescreen's best configurations first, and runs trials until the budget is spent. Each trial is a
:func:`tangentft.train.run.run_training` run in its own folder (``runs/<set>-<config hash>``, with the trial's
``prediction.json``), reports its eval metric at every evaluation and is pruned by
:class:`tangentft.integrations.optuna.ForecastPruner`.

Resuming. Every trial records its worker (host, pid, the process's start time). A trial left RUNNING by a worker
that is gone is marked FAIL and enqueued again with the same parameters (:func:`retry`, at most
:data:`MAX_RETRY` times): on this host at once, when the next sweep starts or a worker picks its next trial (the
pid no longer runs that process); on another host through Optuna's heartbeat (``heartbeat_interval``
:data:`HEARTBEAT_S`, stale after :data:`GRACE_S`). The retry trains in the same run folder, so the run resumes
from its last checkpoint (bit-identical on CPU): no trial is lost and no configuration is trained twice. A
configuration already finished — by another trial, or in this run folder by an earlier sweep — is read back, not
trained again; one a live worker is training now is skipped.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from ..errors import TangentError
from ..integrations.optuna import PREDICTION_ATTR, ForecastPruner, compact_prediction
from ..io import ensure_dir, fingerprint, remove_dir
from ..predict.curve import FILE as PREDICTION_FILE
from ..predict.curve import predict_with, write_prediction
from ..schemas import MetricsRow, read_jsonl
from ..train.checkpoint import checkpoint_step
from ..train.config import CONFIG, TrainConfig
from ..train.run import resume_config, run_training
from .prescreen import cached_kernels, default_cache, kernel_fields, label, prescreen, task_fingerprint
from .space import Budget, Space

DB = "study.db"
RUNS = "runs"
HEARTBEAT_S = 30
GRACE_S = 120
MAX_RETRY = 3
MAX_IDLE = 10  # trials in a row that train nothing new: the space is exhausted


def default_storage(out: Path) -> str:
    """The study's default storage: a SQLite file in the output folder."""
    return f"sqlite:///{Path(out) / DB}"


def open_storage(url: str) -> RDBStorage:
    """Optuna's RDB storage at ``url`` with heartbeats; an unreachable or unknown database is one TangentError."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise TangentError(f"storage '{url}' is not a SQLAlchemy database URL (e.g. sqlite:///runs/sweep/study.db)") from None
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    last = None
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.8
                return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                  heartbeat_stale_trial_callback=retry)
        except sqlalchemy.exc.IntegrityError as exc:
            last = exc  # two workers creating a new database's tables at once: the loser retries, then finds them
            time.sleep(1 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
            last = exc
            break
    why = str(getattr(last, "orig", None) or last).splitlines()[0]
    raise TangentError(f"storage {shown} is unreachable: {why}")


def study_identity(model: str, task: str, space: Space) -> dict:
    """What a study is about — the model, the task (its name and data fingerprint, so the same data under another
    path matches) and the space's fingerprint; a study made for another one is refused."""
    cfg = space.config(space.grid()[0], model, task)
    return {"model": model, "task": Path(task).name, "data": fingerprint(task_fingerprint(cfg)),
            "space": space.fingerprint()}


def open_study(storage: RDBStorage, name: str, identity: dict, seed: int | None = None) -> optuna.Study:
    """Create or join study ``name`` (maximizing the eval metric, TPE sampler, :class:`ForecastPruner`), checking
    that an existing one was made for the same model, task and space (``identity`` in its user attributes)."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=ForecastPruner())
    stored = study.user_attrs.get("tangentft")
    if stored is None:
        study.set_user_attr("tangentft", identity)
    elif stored != identity:
        diff = [k for k in identity if stored.get(k) != identity[k]]
        raise TangentError(f"study '{name}' was made for {', '.join(f'{k} {stored.get(k)!r}' for k in diff)}, not "
                           f"{', '.join(f'{k} {identity[k]!r}' for k in diff)}: give another study name or storage")
    return study


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: /proc/PID/stat field 22), None when it does not run; with the
    pid it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"


def worker_id() -> dict:
    """This process as a trial records it: host, pid and the process's start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue a failed trial again with its parameters (Optuna's ``RetryHeartbeatStaleTrialCallback`` without the
    dead worker's mark, so no other worker mistakes the retry for a dead trial before it starts), at most
    :data:`MAX_RETRY` times; ``failed_trial``/``retry_history`` in its system attributes say what it retries."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k != "worker"},
        system_attrs={**trial.system_attrs, "failed_trial": trial.number, "retry_history": history}))


def reclaim_dead(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """Fail and re-enqueue the RUNNING trials of ``study`` (in ``storage``) whose worker ran on this host and is
    gone (module docstring); returns their numbers. Two workers racing for one trial: the one whose state change
    loses skips it."""
    here = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    reclaimed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if not w or w.get("host") != here:
            continue
        start = _process_start(int(w["pid"]))
        if start is not None and (start == "?" or start == w.get("start")):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue
        retry(study, storage.get_trial(trial_id))
        reclaimed.append(t.number)
    return reclaimed


def enqueue_next(study: optuna.Study, best: list[dict]) -> None:
    """Enqueue the first of the prescreen's ``best`` rows no trial has tried, when nothing waits: one at a time,
    so a retried trial (enqueued earlier) runs before the next new configuration."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return
    tried = {json.dumps(t.params, sort_keys=True) for t in trials}
    for row in best:
        if json.dumps(row["params"], sort_keys=True) not in tried:
            study.enqueue_trial(row["params"], skip_if_exists=True)
            return


def run_folder(out: Path, params: dict, cfg: TrainConfig) -> Path:
    """A configuration's run folder: ``runs/<set>-<hash of its config>`` under the sweep's output."""
    slug = "".join(c if c.isalnum() else "-" for c in params["set"]).strip("-")
    return Path(out) / RUNS / f"{slug}-{fingerprint(cfg.to_json())[:10]}"


def compute_of(cfg: TrainConfig, steps: int) -> int:
    """Examples trained on in ``steps`` optimizer steps (the sweep's unit of compute)."""
    return steps * cfg.batch_size * cfg.grad_accum


def spent(study: optuna.Study, budget: Budget) -> float:
    """What the study's trials have spent or committed, in the budget's unit: examples trained (finished trials:
    what they trained; running ones: their whole planned run) or training seconds (running ones: so far)."""
    now = datetime.datetime.now()
    total = 0.0
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if budget.seconds is not None:
            if t.datetime_start is not None:
                total += ((t.datetime_complete or now) - t.datetime_start).total_seconds()
        elif t.state == TrialState.RUNNING:
            total += a.get("planned_compute", 0) - a.get("start_compute", 0)
        else:
            total += a.get("compute", 0) - a.get("start_compute", 0)
    return total


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [r.model_dump() for r in read_jsonl(path, MetricsRow)] if path.is_file() else []


def real_curve(run: Path) -> dict:
    """The eval curve of a run folder: steps, eval metric, its best and the step of the best."""
    rows = [r for r in _rows(run) if r.get("eval_metric") is not None]
    steps, metric = [r["step"] for r in rows], [r["eval_metric"] for r in rows]
    best = max(range(len(metric)), key=lambda i: metric[i]) if metric else None
    return {"steps": steps, "eval_metric": metric, "best_metric": None if best is None else metric[best],
            "best_step": None if best is None else steps[best]}


class Objective:
    """One trial: draw a configuration, predict it from the cached kernels, train it in its run folder,
    report the eval metric at each evaluation (the pruner's input); its value is the run's best eval metric."""

    def __init__(self, space: Space, model: str, task: str, out: Path, cache: Path,
                 on_step: Callable[[int, int, str], None] | None = None):
        self.space, self.model, self.task, self.out, self.cache = space, model, task, Path(out), cache
        self.on_step = on_step
        self._kernels: dict = {}
        self.trained = False

    def __call__(self, trial: optuna.Trial) -> float:
        self.trained = False  # whether this trial trains (or resumes) a run, rather than reading one back
        params = self.space.suggest(trial)
        cfg = self.space.config(params, self.model, self.task)
        run = run_folder(self.out, params, cfg)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("run", str(run.relative_to(self.out)))
        trial.set_user_attr("planned_compute", compute_of(cfg, cfg.max_steps))
        others = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
                  if t.number != trial.number and t.user_attrs.get("run") == trial.user_attrs["run"]]
        finished = [t for t in others if t.state == TrialState.COMPLETE]
        if finished:  # trained by an earlier trial (another worker's, or a duplicate enqueue): read its result
            trial.set_user_attr("real", finished[0].user_attrs.get("real"))
            trial.set_user_attr("reused", True)
            trial.set_user_attr("planned_compute", 0)
            return finished[0].value
        if any(t.number < trial.number for t in others):  # a live worker trains it now; its trial carries the result
            trial.set_user_attr("planned_compute", 0)
            raise optuna.TrialPruned("another trial trains this configuration now")
        key = fingerprint(kernel_fields(cfg))
        if key not in self._kernels:
            self._kernels[key] = cached_kernels(cfg, self.space.predict_n, self.cache)[0]
        full = predict_with(self._kernels[key], cfg, draws=self.space.draws)
        pred, name = compact_prediction(full), full["metric_name"]
        trial.set_user_attr(PREDICTION_ATTR, pred)
        if (run / "summary.json").is_file():  # trained by an earlier sweep into this folder: read it
            curve = real_curve(run)
            trial.set_user_attr("real", curve)
            trial.set_user_attr("reused", True)
            trial.set_user_attr("planned_compute", 0)
            return curve["best_metric"]
        self.trained = True
        resume = (run / CONFIG).is_file()
        if resume:
            cfg = resume_config(run)
        elif run.exists():
            remove_dir(run)  # killed before it wrote its config: nothing to continue
        ensure_dir(run.parent)
        start = (checkpoint_step(run) or 0) if resume else 0  # where the resumed run continues from
        trial.set_user_attr("start_compute", compute_of(cfg, start))
        for r in _rows(run):
            if r.get("eval_metric") is not None and 0 < r["step"] <= start:
                trial.report(r["eval_metric"], r["step"])
        evals = set(pred["steps"])

        def callback(step: int, total: int, info: dict) -> None:
            if not (run / PREDICTION_FILE).is_file():  # the folder exists from the first step on
                write_prediction(run, full)  # as `train --predict` leaves it: `analyze --against` reads it
            if self.on_step:
                self.on_step(step, total, label(params))
            if step not in evals or info.get(name) is None:
                return
            trial.report(float(info[name]), step)
            trial.set_user_attr("compute", compute_of(cfg, step))
            if trial.should_prune():
                trial.set_user_attr("real", real_curve(run))
                raise optuna.TrialPruned(f"forecast below the best finished trial at step {step}")

        try:
            run_training(cfg, run, resume=resume, callback=callback)
        except TangentError as exc:  # this configuration cannot train (it diverged, …): a failed trial, not a stop
            trial.set_user_attr("error", exc.message)
            return math.nan
        curve = real_curve(run)
        trial.set_user_attr("real", curve)
        trial.set_user_attr("compute", compute_of(cfg, curve["steps"][-1] if curve["steps"] else cfg.max_steps))
        return curve["best_metric"]


def run_sweep(space: Space, model: str, task: str, out: Path, budget: Budget, *, storage: str | None = None,
              study_name: str = "sweep", cache: Path | None = None, seed: int | None = None,
              progress: Callable[[str, int, int, str | None], None] | None = None) -> dict:
    """Prescreen ``space``, then search it on Optuna until ``budget`` is spent (module docstring); returns the
    report dict (:func:`tangentft.sweep.report.build_report`) after writing report.json/report.md into ``out``.
    Started again with the same arguments it continues the study; started N times on one ``storage`` and
    ``study_name`` the processes share the study and its budget."""
    from .report import build_report, write_report

    out = Path(out)
    ensure_dir(out)
    cache = Path(cache) if cache is not None else default_cache()
    # the study first: a wrong storage or a study of another model, task or space is refused before any kernel
    rdb = open_storage(storage or default_storage(out))
    study = open_study(rdb, study_name, study_identity(model, task, space), seed=seed)
    screen = prescreen(space, model, task, cache=cache,
                       progress=(lambda s, d, t: progress(s, d, t, None)) if progress else None)
    limit = budget.seconds if budget.seconds is not None else budget.runs * screen["grid_compute"] / len(screen["rows"])
    objective = Objective(space, model, task, out, cache,
                          on_step=(lambda d, t, what: progress("trial", d, t, what)) if progress else None)
    idle = 0
    while idle < MAX_IDLE:
        reclaim_dead(study, rdb)
        used = spent(study, budget)
        if progress:
            progress("budget", min(used, limit), limit, None)
        if used >= limit:
            break
        enqueue_next(study, screen["rows"][: space.top])
        study.optimize(objective, n_trials=1)
        # a trial that trained nothing read back a configuration already trained: in a small discrete space the
        # sampler ends up proposing only those, and the space is exhausted before the budget
        idle = 0 if objective.trained else idle + 1
    report = build_report(study, space, model, task, out, budget, screen, limit, used)
    report["exhausted"] = idle >= MAX_IDLE
    write_report(out, report)
    return report
