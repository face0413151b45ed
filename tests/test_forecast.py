"""Kernel refresh and partial-run forecasts (issue #26 §2): a refresh at step 0 is the plain prediction, a refresh
at the last step is the run's own tail, forecasts anchor on the observed curve, baselines fit the partial curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tangentft.errors import TangentError
from tangentft.predict.curve import (
    check_refreshable,
    load_trained_state,
    parameterized_model,
    predict_with,
    run_kernels,
)
from tangentft.predict.forecast import extrapolate, forecast
from tangentft.predict.refresh import (
    RefreshSchedule,
    forecast_from,
    refresh,
    refresh_steps,
)
from tangentft.train.config import TrainConfig


def _cfg(data_dir, **kw) -> TrainConfig:
    base = dict(model="tiny-llama", task=str(data_dir / "sst2"), method="lora",
                method_options={"params": "lora(r=4):q,v@all"}, optimizer="adamw", lr=1e-2, n_train=8, n_eval=8,
                max_steps=4, batch_size=4, eval_every=2, probe_size=4, seed=0)
    return TrainConfig(**{**base, **kw})


def test_refresh_at_step_0_equals_the_plain_prediction(data_dir):
    cfg = _cfg(data_dir)
    method, tm, _ = parameterized_model(cfg, cfg.load_task().spec, [])
    plain = predict_with(run_kernels(cfg), cfg, draws=5)
    refreshed = forecast_from(run_kernels(cfg, state=method.checkpoint_state(tm)), cfg, 0, draws=5)
    assert refreshed["steps"] == plain["steps"]
    assert np.allclose(refreshed["eval_loss"], plain["eval_loss"], rtol=1e-10)
    assert refreshed["eval_metric"] == plain["eval_metric"]
    assert (refreshed["best_metric"], refreshed["best_step"]) == (plain["best_metric"], plain["best_step"])


def _s2ft_cfg(data_dir, model: str) -> TrainConfig:
    return _cfg(data_dir, model=model, method="s2ft", method_options={"types": "o:0.5,down:0.25"})


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
def test_s2ft_refresh_at_step_0_equals_the_plain_prediction(data_dir, model):
    """The state at θ0 of a run the S2FT way (zero deltas, and tiny-bert's seeded head), merged into the un-adapted
    model, gives the plain prediction's curve."""
    from tangentft.methods.base import get_method
    from tangentft.models.task_model import build_task_model

    cfg = _s2ft_cfg(data_dir, model)
    method = get_method("s2ft")(cfg.method_config())
    adapted = method.prepare(build_task_model(cfg.model, cfg.load_task().spec, seed=cfg.seed))
    state = method.checkpoint_state(adapted)
    assert any(".s2ft_delta." in k for k in state) and (model == "tiny-llama") == ("head.weight" not in state)
    plain = predict_with(run_kernels(cfg), cfg, draws=5)
    refreshed = forecast_from(run_kernels(cfg, state=state), cfg, 0, draws=5)
    assert refreshed["steps"] == plain["steps"]
    assert np.allclose(refreshed["eval_loss"], plain["eval_loss"], rtol=1e-10)
    assert refreshed["eval_metric"] == plain["eval_metric"]
    assert (refreshed["best_metric"], refreshed["best_step"]) == (plain["best_metric"], plain["best_step"])


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
def test_s2ft_refresh_model_is_the_trained_run_at_theta_t(tmp_path, data_dir, model):
    """After a few steps of an S2FT run, the un-adapted model the refresh builds from the run's checkpoint computes
    the trained (co-permuted, adapted) model's outputs, and its kernel over the run's slices is not θ0's."""
    from tangentft.methods.base import get_method
    from tangentft.models.task_model import build_task_model
    from tangentft.ntk import empirical_ntk
    from tangentft.train.checkpoint import load_checkpoint
    from tangentft.train.loop import Trainer, split_data

    cfg = _s2ft_cfg(data_dir, model)
    task = cfg.load_task()
    data = split_data(task, cfg)
    build = lambda: build_task_model(cfg.model, task.spec, seed=cfg.seed)  # noqa: E731
    Trainer(build(), get_method("s2ft")(cfg.method_config()), data, cfg, tmp_path / "run").fit()
    ck = load_checkpoint(tmp_path / "run")
    assert ck.state.step == 4
    trained = get_method("s2ft")(cfg.method_config())
    run_model = trained.prepare(build())  # the run's own model at θ_t: the adapter on the co-permuted base
    trained.load_checkpoint_state(run_model, ck.model_state)

    method, tm, sel = parameterized_model(cfg, task.spec, data.train)
    x = data.train[:4]
    f0, k0 = tm.predict(data.eval), empirical_ntk(tm, sel, x, signgd=True).matrix
    load_trained_state(cfg, method, tm, ck.model_state)
    assert getattr(tm, "peft_model", None) is None  # still the plain model the kernel engine differentiates
    ft, kt = tm.predict(data.eval), empirical_ntk(tm, sel, x, signgd=True).matrix
    assert torch.allclose(ft, run_model.predict(data.eval), rtol=1e-4, atol=1e-5)
    assert (ft - f0).abs().max() > 1e-3 * f0.abs().max()  # the run moved f ...
    assert np.abs(kt - k0).max() > 1e-3 * np.abs(k0).max()  # ... and the kernel at θ_t is another one


def test_refresh_at_the_last_step_is_the_real_tail(tmp_path, data_dir):
    from tangentft.methods.base import get_method
    from tangentft.models.task_model import build_task_model
    from tangentft.train.loop import Trainer, split_data

    cfg = _cfg(data_dir)
    task = cfg.load_task()
    tm = build_task_model(cfg.model, task.spec, seed=cfg.seed)
    # The trainer leaves its checkpoint at the last eval step.
    Trainer(tm, get_method(cfg.method)(cfg.method_config()), split_data(task, cfg), cfg, tmp_path / "run").fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    r = refresh(cfg, tmp_path / "run")
    assert r["step"] == rows[-1]["step"] == 4
    assert r["final_metric"] == rows[-1]["eval_metric"]
    assert r["eval_loss"][0] == pytest.approx(rows[-1]["eval_loss"], rel=1e-4)
    f = forecast(rows, r)
    assert f["final"] == rows[-1]["eval_metric"] and f["best"] == max(x["eval_metric"] for x in rows)


def test_forecast_anchors_the_prediction_on_the_observed_curve():
    steps = [0, 10, 20, 30, 40]
    prediction = {"steps": steps, "eval_metric": [0.5, 0.6, 0.7, 0.75, 0.8], "metric_interval": [0.78, 0.82],
                  "metric_name": "accuracy", "n_eval": 400}
    real = [0.5, 0.65, 0.75, 0.8, 0.85]  # runs 5 points above the prediction after the start
    rows = [{"step": s, "eval_metric": v} for s, v in zip(steps[:3], real[:3], strict=True)]
    f = forecast(rows, prediction)
    assert f["at_step"] == 20 and f["final_step"] == 40
    assert f["final"] == pytest.approx(0.8 + np.mean([0.0, 0.05, 0.05]))
    lo, hi = f["final_interval"]
    assert lo < f["final"] < hi and hi - lo < 0.2
    assert f["best_interval"][0] >= 0.75  # never below what the run already reached
    # At the last step the forecast is the real tail, whatever the prediction said.
    full = [{"step": s, "eval_metric": v} for s, v in zip(steps, real, strict=True)]
    g = forecast(full, prediction)
    assert (g["final"], g["best"], g["best_step"]) == (0.85, 0.85, 40)
    with pytest.raises(TangentError, match="evaluated row"):
        forecast([{"step": 0}], prediction)
    with pytest.raises(TangentError, match="level"):
        forecast(rows, prediction, level=1.5)
    assert forecast(rows, prediction, level=0.95)["final_interval"][0] < lo  # wider at a higher level


@pytest.mark.parametrize("family,curve", [("power", lambda s: 0.9 - 0.4 * (s + 1.0) ** -0.7),
                                          ("exp", lambda s: 0.9 - 0.4 * np.exp(-3 * s / 60))])
def test_extrapolation_baselines_recover_their_own_family(family, curve):
    steps = list(range(0, 301, 15))
    rows = [{"step": s, "eval_metric": float(curve(s))} for s in steps if s <= 60]
    e = extrapolate(rows, steps, family)
    assert e["fitted"] and e["final"] == pytest.approx(curve(300), abs=1e-3)
    flat = extrapolate(rows[:2], steps, family)  # too few points to fit three parameters
    assert not flat["fitted"] and flat["final"] == rows[1]["eval_metric"]


def test_refresh_schedule_waits_for_an_eval_step_and_linearized_is_refused(data_dir):
    cfg = _cfg(data_dir, max_steps=12, eval_every=4)
    assert refresh_steps(cfg, 8, 5) == [5, 10]
    sched = RefreshSchedule(cfg, 8, [5, 10])
    assert [s for s in range(1, 13) if sched.due(s)] == [8, 12]
    with pytest.raises(TangentError, match="positive"):
        refresh_steps(cfg, 8, 0)
    check_refreshable(_cfg(data_dir, method="s2ft", method_options={}))
    for method in ("linearized", "nuclear-prox"):  # f̄ is linear in θ̄: its kernel is θ0's throughout
        with pytest.raises(TangentError, match="cannot be re-taken.*linear in θ̄"):
            check_refreshable(_cfg(data_dir, method=method, method_options={}))
