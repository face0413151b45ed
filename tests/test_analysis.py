"""Every analysis formula against a direct numpy computation or a hand-computable case."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tangentft.analysis import bounds, krr, lora_rank, perturbation, spectrum, stopping
from tangentft.errors import TangentError


def random_psd(n: int, rank: int | None = None, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    j = rng.normal(size=(n, rank or n)) * scale
    return j @ j.T


# -- spectrum ------------------------------------------------------------------------------------------------
def test_spectrum_matches_numpy_and_diagonal():
    k = random_psd(7, seed=1)
    s = spectrum.spectrum(k)
    ref = np.sort(np.linalg.eigvalsh(k))[::-1]
    np.testing.assert_allclose(s.eigenvalues, ref, rtol=1e-12)
    assert s.lambda_max == pytest.approx(ref[0]) and s.lambda_min == pytest.approx(ref[-1])
    assert s.trace == pytest.approx(np.trace(k))
    d = spectrum.spectrum(np.diag([4.0, 1.0, 1.0, 0.0]))
    assert d.eigenvalues.tolist() == [4.0, 1.0, 1.0, 0.0]
    p = np.array([4, 1, 1]) / 6
    assert d.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert spectrum.spectrum(np.eye(5) * 3).effective_rank == pytest.approx(5.0)


def test_spectrum_clamps_and_reports_roundoff_but_rejects_indefinite():
    k = random_psd(6, rank=3, seed=2)
    k = k - 1e-12 * np.eye(6)  # rank-deficient Gram matrix with round-off below zero
    s = spectrum.spectrum(k)
    assert s.clamped_count == 3 and s.most_negative < 0 and s.lambda_min == 0.0
    assert np.all(s.eigenvalues >= 0) and s.notes
    with pytest.raises(TangentError, match="not positive semi-definite"):
        spectrum.spectrum(np.diag([1.0, -0.5]))
    with pytest.raises(TangentError, match="not symmetric"):
        spectrum.spectrum(np.array([[1.0, 0.5], [0.0, 1.0]]))


def test_condition_number_scalar_and_grid():
    lam = np.array([10.0, 2.0, 0.0])
    assert spectrum.condition_number(lam, 1e-4) == pytest.approx((10 + 1e-4) / 1e-4)
    grid = np.array([1e-4, 1.0, 10.0])
    np.testing.assert_allclose(spectrum.condition_number(lam, grid), (10 + grid) / grid)
    k = random_psd(5, seed=3)
    direct = np.linalg.cond(k + 0.3 * np.eye(5))
    assert spectrum.condition_number(spectrum.spectrum(k), 0.3) == pytest.approx(direct, rel=1e-9)
    with pytest.raises(TangentError, match="sigma must be > 0"):
        spectrum.condition_number(lam, 0.0)


@settings(max_examples=25, deadline=None)
@given(beta=st.floats(0.2, 3.0), n=st.integers(8, 60))
def test_decay_recovers_power_law(beta, n):
    lam = 5.0 * np.arange(1, n + 1, dtype=float) ** (-2 * beta)
    fit = spectrum.decay_rate(lam)
    assert fit.beta == pytest.approx(beta, rel=1e-9)
    assert fit.stderr < 1e-8


def test_decay_stderr_matches_regression_through_origin():
    rng = np.random.default_rng(4)
    k = np.arange(1, 41, dtype=float)
    lam = k ** (-2 * 0.7) * np.exp(rng.normal(0, 0.1, k.size))
    lam = np.sort(lam)[::-1]
    fit = spectrum.decay_rate(lam, window=(2, 30))
    x = np.log(k[1:30])
    y = np.log(lam[1:30] / lam[0])
    b, res, *_ = np.linalg.lstsq(x[:, None], y, rcond=None)
    assert fit.beta == pytest.approx(-b[0] / 2)
    se = math.sqrt(res[0] / (x.size - 1) / (x @ x)) / 2
    assert fit.stderr == pytest.approx(se)
    assert fit.window == (2, 30)
    with pytest.raises(TangentError, match="decay window"):
        spectrum.decay_rate(lam, window=(5, 6))


# -- Theorem 5 and KRR ---------------------------------------------------------------------------------------
def test_krr_matches_direct_formula_full_and_traced():
    rng = np.random.default_rng(5)
    n, m, kk = 6, 4, 2
    jac = rng.normal(size=((n + m) * kk, 9))
    kfull = jac @ jac.T
    y, f0 = rng.normal(size=(n, kk)), rng.normal(size=(n, kk))
    f0e = rng.normal(size=(m, kk))
    sig = 0.5
    ktr, kx = kfull[: n * kk, : n * kk], kfull[n * kk :, : n * kk]
    fit = krr.krr_predict(ktr, y, f0, sig, kx, f0e)
    alpha = np.linalg.solve(ktr + sig * np.eye(n * kk), (y - f0).reshape(-1))
    np.testing.assert_allclose(fit.eval_pred, f0e + (kx @ alpha).reshape(m, kk), rtol=1e-10)
    np.testing.assert_allclose(fit.train_pred, f0 + (ktr @ alpha).reshape(n, kk), rtol=1e-10)
    # traced layout: one n×n kernel shared by the K output columns
    kt = random_psd(n + m, seed=6)
    fit_t = krr.krr_predict(kt[:n, :n], y, f0, sig, kt[n:, :n], f0e)
    a = np.linalg.solve(kt[:n, :n] + sig * np.eye(n), y - f0)
    np.testing.assert_allclose(fit_t.eval_pred, f0e + kt[n:, :n] @ a, rtol=1e-10)
    with pytest.raises(TangentError, match="rows"):
        krr.krr_predict(np.eye(5), y, f0, sig)


def test_ridge_solve_warns_and_falls_back_when_ill_conditioned():
    k = random_psd(6, rank=2, seed=7)
    rhs = np.ones(6)
    with pytest.warns(RuntimeWarning, match="ill-conditioned"):
        x = krr.ridge_solve(k, rhs, 1e-14 * np.trace(k))
    assert np.all(np.isfinite(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        krr.ridge_solve(k, rhs, 1.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), sigma=st.floats(1e-3, 1e3), rank=st.integers(1, 8))
def test_theorem5_bounds_bracket_krr_training_risk(seed, sigma, rank):
    rng = np.random.default_rng(seed)
    k = random_psd(8, rank=rank, seed=seed)
    y, f0 = rng.normal(size=(8, 1)), rng.normal(size=(8, 1))
    fit = krr.krr_predict(k, y, f0, sigma)
    b = bounds.risk_bounds(spectrum.spectrum(k), bounds.residual_targets(y, f0), sigma)
    assert b.lower * (1 - 1e-9) <= fit.train_risk <= b.upper * (1 + 1e-9)


def test_theorem5_bounds_tight_on_diagonal_kernel():
    # K = cI: every eigenvalue equals λmax = λmin, so the bounds coincide with the risk
    k, r, sig = 3.0 * np.eye(4), np.array([1.0, -2.0, 0.5, 2.0]), 0.7
    b = bounds.risk_bounds(spectrum.spectrum(k), r, sig)
    assert b.lower == pytest.approx(b.upper)
    fit = krr.krr_predict(k, r[:, None], np.zeros((4, 1)), sig)
    assert fit.train_risk == pytest.approx(b.lower)
    assert b.lower == pytest.approx((sig * np.linalg.norm(r) / (sig + 3)) ** 2)


def test_cv_sigma_prefers_small_sigma_for_noiseless_and_large_for_noise():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(24, 3))
    k = x @ x.T
    w = rng.normal(size=3)
    clean = (x @ w)[:, None]
    cv = krr.cv_sigma(k, clean, np.zeros_like(clean), folds=4)
    assert cv.sigma <= np.median(cv.grid)
    assert len(cv.cv_mse) == len(cv.grid)
    noise = rng.normal(size=(24, 1)) * 10
    cv2 = krr.cv_sigma(k, noise, np.zeros_like(noise), folds=4)
    assert cv2.sigma > cv.sigma
    # full layout keeps an example's K rows in the same fold: equal to a manual 2-fold computation
    kfull = np.kron(k, np.eye(2))
    y2 = np.hstack([clean, -clean])
    cvf = krr.cv_sigma(kfull, y2, np.zeros_like(y2), grid=[0.1, 1.0], folds=2, seed=3)
    perm = np.random.default_rng(3).permutation(24)
    parts = np.array_split(perm, 2)
    mse = 0.0
    for hold in parts:
        tr = np.setdiff1d(perm, hold)
        fit = krr.krr_predict(k[np.ix_(tr, tr)], y2[tr], np.zeros((tr.size, 2)), 0.1, k[np.ix_(hold, tr)], np.zeros((hold.size, 2)))
        mse += ((fit.eval_pred - y2[hold]) ** 2).sum()
    assert cvf.cv_mse[0] == pytest.approx(mse / 48)


def test_metrics():
    import torch

    from tangentft.data.scoring import task_metric

    assert task_metric([[0.1, 0.9], [2, 1], [0, 0.5]], [1, 0, 0], "classification") == ("accuracy", pytest.approx(2 / 3))
    out = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert task_metric(out, [2, 4, 6, 9], "regression") == task_metric(out.numpy(), [2, 4, 6, 9], "regression")
    # one NaN rule for every caller: non-finite outputs and constant sides score NaN
    for outputs, labels, kind in (([[float("nan"), 1.0], [0.0, 1.0]], [1, 1], "classification"),
                                  ([[float("inf")], [1.0]], [0.0, 1.0], "regression"),
                                  ([[1.0], [1.0]], [0.0, 1.0], "regression"),
                                  (torch.tensor([[1.0], [2.0]]), [3.0, 3.0], "regression")):
        assert math.isnan(task_metric(outputs, labels, kind)[1])
    m = krr.regression_metrics([1, 2, 3, 4], [2, 4, 6, 9])
    assert m["mse"] == pytest.approx(np.mean((np.array([1, 2, 3, 4]) - np.array([2, 4, 6, 9])) ** 2))
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [2, 4, 6, 9])[0, 1])
    assert math.isnan(krr.regression_metrics([1, 1], [0, 1])["pearson"])


# -- perturbation and Algorithm 2 ----------------------------------------------------------------------------
def test_eta_matches_direct_and_eigenvalue_bounds_hold():
    k, s, sig = random_psd(6, seed=9), random_psd(6, rank=2, seed=10, scale=0.5), 0.1
    a = k + sig * np.eye(6)
    w, v = np.linalg.eigh(a)
    ais = v @ np.diag(w**-0.5) @ v.T
    assert perturbation.eta(k, s, sig) == pytest.approx(np.linalg.norm(ais @ s @ ais, 2), rel=1e-9)
    pb = perturbation.perturbation_bounds(k, s, sig)
    lam2 = np.linalg.eigvalsh(k + s)
    assert pb.lambda_max[0] - 1e-9 <= lam2.max() <= pb.lambda_max[1] + 1e-9
    assert pb.lambda_min[0] - 1e-9 <= lam2.min() <= pb.lambda_min[1] + 1e-9
    lo, hi = pb.risk_ratio
    assert 1 / (1 + pb.eta) ** 2 - 1e-12 <= lo <= hi == 1.0
    # the Theorem 5 bounds with K+S over those with K fall in the Corollary 1 interval
    r = np.random.default_rng(11).normal(size=6)
    b0 = bounds.risk_bounds(spectrum.spectrum(k), r, sig)
    b1 = bounds.risk_bounds(spectrum.spectrum(k + s), r, sig)
    for ratio in (b1.lower / b0.lower, b1.upper / b0.upper):
        assert lo - 1e-12 <= ratio <= hi + 1e-12


def test_eta_on_diagonal_case():
    # K = diag(1, 4), S = diag(3, 0), σ → tiny: η = 3/1
    assert perturbation.eta(np.diag([1.0, 4.0]), np.diag([3.0, 0.0]), 1e-12) == pytest.approx(3.0)
    assert perturbation.ratio(np.diag([1.0, 4.0]), np.diag([3.0, 0.0]), 1.0) == pytest.approx(1.0)
    assert perturbation.ratio(np.diag([1.0, 4.0]), np.diag([0.0, 2.0]), 1.0) == pytest.approx(7 / 5)


def _known_kernel():
    e = np.eye(3)
    k = np.eye(3)
    cands = {
        "a": 5 * np.outer(e[0], e[0]),  # best single
        "b": 4 * np.outer(e[1], e[1]),
        "c": 4 * np.outer(e[1], e[1]),  # b + c stack on one direction: best pair, which greedy misses
        "d": 0.5 * np.outer(e[2], e[2]),
    }
    return k, cands


def test_algorithm2_exhaustive_finds_known_best_subsets():
    k, cands = _known_kernel()
    sel = perturbation.select_groups(k, cands, 1.0, max_size=2)
    assert sel.method == "exhaustive"
    assert [c.groups for c in sel.singles][:1] == [["a"]]
    assert sel.best_by_size[1].groups == ["a"] and sel.best_by_size[1].r_c == pytest.approx(7 / 2)
    assert sel.best_by_size[2].groups == ["b", "c"] and sel.best_by_size[2].r_c == pytest.approx(10 / 2)
    assert len(sel.ranking) == 4 + 6
    for c in sel.ranking:
        assert 1.0 <= c.r_c <= 1 + c.eta + 1e-12  # λmax(K+S+σI) ≤ (1+η)λmax(K+σI)


def test_algorithm2_greedy_beyond_limit():
    k, cands = _known_kernel()
    sel = perturbation.select_groups(k, cands, 1.0, max_size=2, exhaustive_limit=2)
    assert sel.method == "greedy"
    assert sel.best_by_size[2].groups[0] == "a"  # greedy commits to the best single, unlike exhaustive
    assert sel.best_by_size[2].r_c < 5.0
    with pytest.raises(TangentError, match="empty"):
        perturbation.select_groups(k, {}, 1.0)


# -- early stopping ------------------------------------------------------------------------------------------
def test_rademacher_direct():
    lam = np.array([8.0, 4.0, 0.4, 0.0])
    got = stopping.rademacher(lam, 1.0)
    assert got == pytest.approx(math.sqrt(np.minimum(lam / 4, 1.0).mean()))
    np.testing.assert_allclose(stopping.rademacher(lam, np.array([0.1, 10.0])),
                               [math.sqrt(np.minimum(lam / 4, 0.01).mean()), math.sqrt((lam / 4).mean())])


def test_critical_radius_on_constructed_spectrum():
    # K/n = diag(1, …) with n = 4 identical normalized eigenvalues 1: R̂(ε) = min(1, ε) for ε ≤ 1,
    # so ε ≤ 1 is critical when ε ≤ ε²/(2e s), i.e. ε = 2e s (valid while 2e s ≤ 1).
    lam = np.full(4, 4.0)
    s = 0.1
    assert stopping.critical_radius(lam, s) == pytest.approx(2 * math.e * s, rel=1e-10)
    # for large noise ε > 1: R̂ = 1 = ε²/(2e s) gives ε = sqrt(2e s)
    assert stopping.critical_radius(lam, 1.0) == pytest.approx(math.sqrt(2 * math.e), rel=1e-10)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), noise=st.floats(0.05, 2.0), step=st.floats(0.05, 1.0))
def test_stopping_step_closed_form_equals_definition(seed, noise, step):
    lam = np.sort(np.linalg.eigvalsh(random_psd(10, seed=seed)))[::-1]
    lam = lam / lam.max() * 10  # λ̂max = 1 so every step ≤ 1 is stable
    rule = stopping.stopping_rule(lam, step, noise)
    assert rule.T_hat == stopping.stopping_step_by_definition(lam, step, noise)
    assert rule.effective_time == pytest.approx(step * rule.T_hat)
    if rule.T_hat:
        assert rule.ridge_equivalent == pytest.approx(1 / (step * rule.T_hat))
        assert rule.ridge_sigma == pytest.approx(10 / (step * rule.T_hat))


def test_stopping_warns_on_unstable_step_and_rejects_bad_step():
    with pytest.warns(RuntimeWarning, match="diverge"):
        stopping.stopping_rule(np.array([100.0, 1.0]), 1.0, 0.5)
    with pytest.raises(TangentError):
        stopping.stopping_rule(np.array([1.0]), 0.0, 1.0)


# -- LoRA rank -----------------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 10), n=st.integers(1, 5000))
def test_min_rank_is_smallest(k, n):
    r = lora_rank.min_rank(k, n)
    assert r * (r + 1) / 2 > k * n >= (r - 1) * r / 2


def test_advise_ranks_caps_at_matrix_rank():
    adv = lora_rank.advise_ranks(2, 32, {"L0.q": (576, 576), "tiny": (8, 4)})
    assert lora_rank.min_rank(2, 32) == 11  # 11·12/2 = 66 > 64 ≥ 10·11/2 = 55
    assert adv[0].rank == 11 and not adv[0].capped and "Thm 4.1" in adv[0].explanation
    assert adv[1].rank == 4 and adv[1].capped


# -- Lipschitz (Algorithm 1) ---------------------------------------------------------------------------------
def test_lipschitz_linear_head_is_exact_and_restores_parameters():
    import torch

    from conftest import tiny_task_model, toy_examples
    from tangentft.analysis import lipschitz
    from tangentft.models.selection import resolve

    tm = tiny_task_model("tiny-bert")
    sel = resolve(tm, "head")
    ex = toy_examples(6)
    before = {n: p.detach().clone() for n, p in tm.named_parameters()}
    est = lipschitz.estimate_lipschitz(tm, sel, ex, r_max=0.5, num_radii=2, samples=3)
    for n, p in tm.named_parameters():
        assert torch.equal(p, before[n]), n
    # f = W h + b is linear in the head: Lip(∇f) = 0 and Lip(f) ≤ ‖[H, 1]‖₂ (exactly computable)
    with torch.no_grad():
        h = tm.features(**tm.encode(ex)).double()
    hb = torch.cat([h, torch.ones(h.shape[0], 1, dtype=torch.float64)], dim=1)
    bound = float(torch.linalg.matrix_norm(hb, ord=2))
    assert 0 < est.lip_f <= bound * (1 + 1e-4)
    assert est.lip_grad < 1e-3 * est.lip_f
    assert est.num_params == sel.num_params(tm)
    assert lipschitz.lambda_circ(2.0, est.lip_f, 0.5) == pytest.approx(2 * 2.0 * est.lip_f / 0.5)


def test_lipschitz_nonlinear_selection_and_bound_curves():
    import torch

    from conftest import tiny_task_model, toy_examples
    from tangentft.analysis import lipschitz
    from tangentft.models.selection import resolve

    tm = tiny_task_model("tiny-llama")
    sel = resolve(tm, "q,v@0")
    before = {n: p.detach().clone() for n, p in tm.named_parameters()}
    est = lipschitz.estimate_lipschitz(tm, sel, toy_examples(4), r_max=1.0, num_radii=2, samples=2)
    assert all(torch.equal(p, before[n]) for n, p in tm.named_parameters())
    assert est.lip_f > 0 and est.lip_grad > 0 and len(est.L_upper) == 2
    assert all(u >= a for u, a in zip(est.L_upper, est.L_avg, strict=True))
    curves = lipschitz.bound_curves(3.0, 2.0, 5.0, lam=0.5, lr=0.1, steps=[1, 10, 10_000])
    d = np.array(curves.param_distance)
    np.testing.assert_allclose(d, 2.0 * 3.0 / 0.5 * (1 - np.exp(-0.5 * 0.1 * np.array([1, 10, 10_000]))))
    np.testing.assert_allclose(curves.linearization_gap, 0.5 * 5.0 * d**2)
    assert d[-1] == pytest.approx(2.0 * 3.0 / 0.5)  # saturates at Lip(f)·ρ/λ
    # with λ = λ∘ the parameters stay within r/2 of θ0
    lc = lipschitz.lambda_circ(3.0, 2.0, 0.4)
    assert lipschitz.bound_curves(3.0, 2.0, 5.0, lc, 0.1, [10**9]).param_distance[0] <= 0.2 + 1e-12


# -- orchestration on synthetic kernels, report and figures ----------------------------------------------------
def _synthetic_problem(n=12, m=6, kk=2, seed=20):
    rng = np.random.default_rng(seed)
    j_base = rng.normal(size=((n + m) * kk, 30))
    kb = j_base @ j_base.T
    cands = {}
    for g, scale in (("L0.o", 2.0), ("L5.o", 0.3), ("L10.o", 1.0)):
        j = rng.normal(size=((n + m) * kk, 5)) * scale
        cands[g] = (j @ j.T)[: n * kk, : n * kk]
    labels = np.arange(n + m) % kk
    y_all = np.eye(kk)[labels]
    f0_all = rng.normal(size=(n + m, kk)) * 0.1
    return (kb[: n * kk, : n * kk], kb[n * kk :, : n * kk], cands, y_all[:n], f0_all[:n], y_all[n:], f0_all[n:])


def test_analyze_kernels_report_and_compare(tmp_path):
    from tangentft.analysis import analyze, report
    from tangentft.analysis.result import AnalysisReport

    kb, kx, cands, y, f0, ye, f0e = _synthetic_problem()
    rep = analyze.analyze_kernels(kb, kx, cands, y, f0, ye, f0e, task_kind="classification", sigma=1e-4)
    assert rep.condition_number["value"] == pytest.approx(spectrum.condition_number(np.linalg.eigvalsh(kb), 1e-4))
    assert rep.risk_bounds["brackets_krr"]
    assert sorted(rep.candidates[0]["groups"]) == sorted(cands)  # r_C grows with C: all candidates rank first
    assert [c["r_c"] for c in rep.candidates] == sorted((c["r_c"] for c in rep.candidates), reverse=True)
    assert rep.candidate_singles[0]["groups"] == ["L0.o"]  # the largest-scale candidate moves λmax most
    assert rep.stopping["T_hat"] >= 0 and rep.stopping["noise_estimated"]
    sig = rep.krr["sigma"]
    a = np.linalg.solve(kb + sig * np.eye(kb.shape[0]), (y - f0).reshape(-1))
    assert rep.stopping["rkhs_norm"] == pytest.approx(math.sqrt(a @ kb @ a), rel=1e-8)
    assert rep.stopping["noise_unscaled"] == pytest.approx(math.sqrt(min(rep.krr["cv"]["cv_mse"])))
    assert rep.stopping["noise"] == pytest.approx(rep.stopping["noise_unscaled"] / rep.stopping["rkhs_norm"])
    assert rep.lora_min_rank == lora_rank.min_rank(2, 12)
    rep = AnalysisReport.from_kernels(rep, model="synthetic", task="synthetic", task_name="synthetic",
                                      task_kind="classification", params="q,v@0", candidates_spec="o@::5",
                                      candidate_groups=list(cands), num_params=30, seed=0, n_eval=6, eval_split="test")
    rep.recommendation = analyze.recommendation(rep)
    out = report.write_report(rep, tmp_path / "a", kb)
    data = json.loads((out / "report.json").read_text())
    for key in ("n", "K", "eigenvalues", "lambda_max", "lambda_min", "condition_number", "effective_rank", "decay_beta",
                "decay_beta_stderr", "risk_bounds", "krr", "candidates", "stopping", "lora_min_rank", "timings"):
        assert key in data, key
    md = (out / "report.md").read_text()
    assert "## Recommendation" in md and "![" in md and "LoRA rank r = " in md
    # the theory's run is labelled as such in the conventions and says which loss λ assumes; without the predict
    # layer's prediction (tangentft.predict.recommend) there is no run to launch and no command
    theory = md[md.index("### The theory's run"):]
    assert md.index("## Conventions") < md.index("### The theory's run") and "Not the recommendation" in theory
    assert "full-batch SGD on the mean squared loss" in theory and "- loss: the trainer's mean squared loss" in theory
    assert "## The run to launch" not in md and "tangentft train" not in md
    assert json.loads(json.dumps(AnalysisReport.from_json(data).to_json())) == data
    for f in ("spectrum.png", "candidates.png", "kernel.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    rows = report.compare_rows([out, out])
    assert rows[0]["kappa"] == pytest.approx(data["condition_number"]["value"]) and len(rows) == 2
    with pytest.raises(TangentError, match="no analysis report"):
        report.compare_rows([tmp_path / "missing"])


def test_the_theory_run_translates_the_ridge_and_stopping_numbers_to_the_trainer():
    """λ on ½‖f − Y‖² is λ_train = 2λ/(n·K) on the trainer's mean squared loss, lr = α/2, and a pull that would
    overshoot (lr·λ_train > 1) takes smaller steps, more of them, for the same effective time α·T̂."""
    import shlex

    from tangentft.analysis import analyze
    from tangentft.analysis.result import AnalysisReport
    from tangentft.predict.recommend import theory_run

    kb, kx, cands, y, f0, ye, f0e = _synthetic_problem()
    kern = analyze.analyze_kernels(kb, kx, cands, y, f0, ye, f0e, task_kind="classification", sigma=1e-4)
    rep = AnalysisReport.from_kernels(kern, model="tiny-llama", task="t", task_name="t", task_kind="classification",
                                      params="lora(r=4):q,v@0", candidates_spec="o@::5", candidate_groups=list(cands),
                                      seed=2)
    for reg, step_size, t_hat in ((0.3, 0.02, 7), (1000.0, 0.02, 7), (0.3, 0.02, 0)):
        rep.krr = {**rep.krr, "sigma": reg}
        rep.lambda_circ = None
        rep.stopping = {**rep.stopping, "T_hat": t_hat, "step_size": step_size}
        rec = rep.recommendation = analyze.recommendation(rep)
        lam_train = 2 * reg / (12 * 2)
        lr = min(step_size / 2, 0.5 / lam_train)
        assert rec.theory_lam == pytest.approx(lam_train) and rec.theory_lr == pytest.approx(lr)
        assert rec.theory_steps == max(1, math.ceil(t_hat * (step_size / 2) / lr - 1e-9))
        assert rec.theory_lr * rec.theory_lam <= 0.5 + 1e-12  # the pull never overshoots
        assert (rec.theory_steps == 12) if reg == 1000.0 else (rec.theory_lr == step_size / 2)  # stretched: 7·5/3
        assert str(rec.params) == "lora(r=4):q,v@0;" + ";".join(f"lora(r=4):o@{g[1:-2]}" for g in rec.candidate_groups)
        cfg = theory_run(rep)
        assert (cfg.optimizer, cfg.loss, cfg.reg, cfg.warmup_ratio, cfg.method) == ("sgd", "mse", "l2", 0.0, "lora")
        assert cfg.batch_size == cfg.n_train == 12 and cfg.max_steps == rec.theory_steps and cfg.seed == 2
        assert cfg.lr == pytest.approx(rec.theory_lr, rel=1e-3) and cfg.lam == pytest.approx(rec.theory_lam, rel=1e-3)
        assert cfg.method_options == {"params": rec.params, "lora_r": max(4, rec.lora_rank)}
        assert "--loss mse" in shlex.join(shlex.split(cfg.command_line("o")))
    assert rec.theory_steps == 1  # T̂ = 0: one step, the trainer's minimum


def test_analyze_kernels_regression_and_bad_input():
    from tangentft.analysis import analyze

    kb, kx, _, _, _, _, _ = _synthetic_problem(kk=1)
    rng = np.random.default_rng(1)
    y, ye = rng.normal(size=(12, 1)), rng.normal(size=(6, 1))
    rep = analyze.analyze_kernels(kb, kx, {}, y, np.zeros_like(y), ye, np.zeros_like(ye), task_kind="regression")
    assert rep.krr["eval_metric_name"] == "pearson" and rep.candidates == []
    with pytest.raises(TangentError, match="sigma must be > 0"):
        analyze.analyze_kernels(kb, kx, {}, y, y, ye, ye, task_kind="regression", sigma=0)
    with pytest.raises(TangentError, match="at least 2"):
        analyze.analyze_kernels(kb[:1, :1], kx[:, :1], {}, y[:1], y[:1], ye, ye, task_kind="regression")
