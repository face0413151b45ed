"""A training run with its predicted curve: predict first (``prediction.json``), train, then compare.

The prediction is computed before the run starts, so a run refused by it (no eval examples, too few training
examples) leaves no folder behind; it is written into the run folder with the run's first step, so a killed run
keeps it and its resume compares against the same prediction instead of paying for the kernel again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .. import distributed
from ..errors import TangentError
from ..io import atomic_write, write_json
from ..schemas import PredictionRecord, read_json
from ..train.config import TrainConfig, load_run_config
from ..train.run import check_fresh_out, run_training
from .against import check_run
from .curve import FILE, check_refreshable, predict_run, write_prediction


def train_with_prediction(cfg: TrainConfig, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
                          callback: Callable[[int, int, dict], None] | None = None, n: int | None = None,
                          refresh: int | Sequence[int] | None = None,
                          progress: Callable[[str, int, int], None] | None = None) -> dict:
    """:func:`tangentft.train.run.run_training` with the run's curve predicted from the kernel at θ0 before it
    (:func:`tangentft.predict.curve.predict_run`, ``n`` caps the kernel sample; a resumed run reuses its
    ``prediction.json``) and compared with the real curve after it: figures/prediction.png, a predicted-vs-real
    section in summary.md and ``prediction`` in summary.json, whose dict it returns. ``progress(stage, done, total)``
    follows the prediction's kernel passes.

    ``refresh``: every that many steps, or at the given steps — at the first eval step at or after each, the kernel
    is re-taken at θ_t on the same kernel sample and the rest of the run re-forecast from f_t
    (:func:`tangentft.predict.refresh.refresh`); each refresh is appended to ``refreshes`` in prediction.json as it
    happens and overlaid in the figure."""
    out = Path(out_dir)
    main = distributed.is_main()
    if refresh is not None:
        check_refreshable(cfg)
        if isinstance(refresh, int) and refresh < 1:  # refused before the kernel is paid for
            raise TangentError(f"refresh interval must be a positive number of steps, got {refresh}")
    if resume:
        load_run_config(out)  # not a run: refused before the kernel is paid for
    elif main:
        check_fresh_out(out, overwrite)
    if resume and (out / FILE).is_file():
        prediction = read_json(out / FILE, PredictionRecord).model_dump()
    else:
        prediction = predict_run(cfg, n=n, progress=progress)

    def keep_prediction() -> None:
        # The run folder exists (and, with overwrite, the old run is gone) once the first step is done.
        if main and not (out / FILE).is_file():
            write_prediction(out, prediction)

    schedule = None
    if refresh is not None:
        from .refresh import RefreshSchedule, refresh_steps

        steps = refresh_steps(cfg, prediction["n_train"], refresh) if isinstance(refresh, int) else refresh
        done = max((r["step"] for r in prediction.get("refreshes", [])), default=-1)  # a resumed run's refreshes
        schedule = RefreshSchedule(cfg, prediction["n_train"], [s for s in steps if s > done])

    def on_step(step: int, total: int, info: dict) -> None:
        keep_prediction()
        if main and schedule is not None and schedule.due(step):
            from .refresh import refresh as refresh_now

            prediction.setdefault("refreshes", []).append(refresh_now(cfg, out, n=prediction["n"]))
            write_prediction(out, prediction)
        if callback:
            callback(step, total, info)

    def compare(summary: dict) -> dict:
        keep_prediction()
        cmp, md = check_run(prediction, out, out / "figures")
        summary["prediction"] = cmp
        write_json(out / "summary.json", summary)
        atomic_write(out / "summary.md", (out / "summary.md").read_text() + "\n" + md)
        return summary

    return run_training(cfg, out, resume=resume, overwrite=overwrite, callback=on_step, finish=compare)


def launch_run(cfg: TrainConfig, out_dir: Path, predict: bool = False, *, resume: bool = False,
               overwrite: bool = False, callback: Callable[[int, int, dict], None] | None = None,
               n: int | None = None, refresh: int | Sequence[int] | None = None,
               progress: Callable[[str, int, int], None] | None = None) -> dict:
    """The ``train`` command's run: with ``predict``, :func:`train_with_prediction` (``n``, ``refresh`` and
    ``progress`` are its own); without, :func:`tangentft.train.run.run_training`. Returns the run's summary."""
    if not predict:
        return run_training(cfg, out_dir, resume=resume, overwrite=overwrite, callback=callback)
    return train_with_prediction(cfg, out_dir, resume=resume, overwrite=overwrite, callback=callback, n=n,
                                 refresh=refresh, progress=progress)
