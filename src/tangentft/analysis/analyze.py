"""``analyze``: everything tangentft can say before training, from one eNTK pass over base ∪ candidates.

:func:`analyze_kernels` is the numpy part (spectrum, Theorem 5 bounds, kernel-ridge prediction, Algorithm 2,
stopping rule, rank advice); :func:`analyze` loads the model and task, computes the kernels and the
Lipschitz estimates, and returns the :class:`~tangentft.analysis.result.AnalysisReport` that
:mod:`tangentft.analysis.report` writes. Without ``params`` the base selection is the model's default
(:func:`tangentft.models.candidates.default_params`); the base and candidates are selected by
:func:`tangentft.models.candidates.select_candidates`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np

from ..data.scoring import task_metric
from ..errors import TangentError
from ..methods.lora import register_terms
from ..models.candidates import BASE_GROUP, select_candidates
from ..models.spec import DEFAULT_LORA_RANK, Spec
from . import baselines, bounds, krr, lipschitz, lora_rank, perturbation, spectrum, stopping, uncertainty
from .result import AnalysisReport, KernelAnalysis, Recommendation

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def recommend_subset(selection: perturbation.Selection, share: float = 0.9) -> perturbation.CandidateScore:
    """The smallest subset reaching ``share`` of the log-ratio gain of the largest scored subset.

    r_C only grows with C, so "best" needs a budget: this picks the knee — most of the spectral gain of
    tuning every candidate for the fewest extra groups.
    """
    best = selection.best_by_size
    full = math.log(best[max(best)].r_c)
    for size in sorted(best):
        if full <= 0 or math.log(best[size].r_c) >= share * full:
            return best[size]
    return best[max(best)]


def analyze_kernels(
    k_base: np.ndarray,
    k_cross: np.ndarray,
    candidates: Mapping[str, np.ndarray],
    y: np.ndarray,
    f0: np.ndarray,
    y_eval: np.ndarray,
    f0_eval: np.ndarray,
    *,
    task_kind: str,
    sigma: float = spectrum.DEFAULT_SIGMA,
    step_size: float | None = None,
    noise: float | None = None,
    seed: int = 0,
) -> KernelAnalysis:
    """Spectrum, κ, decay, Theorem 5 bounds, KRR prediction, Algorithm 2 ranking, stopping rule, rank advice.

    ``k_base`` is the train kernel of the base selection (full layout (n·K, n·K) or traced (n, n)), ``k_cross``
    its eval×train kernel, ``candidates`` the per-group train kernels S_g. ``y``/``f0`` are (n, K) targets and
    pretrained outputs; ``y_eval`` the eval targets (one-hot or scores). σ (default 1e-4, linearization paper
    §4) is used for κ and Algorithm 2; the kernel-ridge σ is chosen by cross-validation, and Theorem 5's
    bounds use that σ so that they bracket the reported training risk. The stopping rule's default step size
    is the largest stable one, 1/λ̂max of K/N; its default noise level is the root of the cross-validated
    kernel-ridge mean squared error (the held-out residual of the fit).
    """
    sigma = float(sigma)
    if not sigma > 0:
        raise TangentError(f"sigma must be > 0, got {sigma}")
    y, f0 = np.atleast_2d(y).astype(np.float64), np.atleast_2d(f0).astype(np.float64)
    n, num_out = y.shape
    if n < 2:
        raise TangentError(f"analysis needs at least 2 training examples, got {n}")
    t0 = time.perf_counter()
    spec = spectrum.spectrum(k_base)
    out = _spectrum_fields(spec, sigma) | {"n": n, "K": num_out, "kernel_shape": list(np.shape(k_base))}
    cv = krr.cv_sigma(k_base, y, f0, folds=min(4, n), seed=seed)
    out["krr"], fit = _ridge_fields(k_base, k_cross, y, f0, y_eval, f0_eval, cv, task_kind, seed)
    out["baselines"] = {"zero_shot": out["krr"]["zero_shot_metric"],
                        "majority": baselines.majority_metric(y, np.asarray(y_eval), task_kind)[1]}
    rb = bounds.risk_bounds(spec, bounds.residual_targets(y, f0), cv.sigma)
    out["risk_bounds"] = rb.to_json()
    out["risk_bounds"]["brackets_krr"] = bool(rb.lower * (1 - 1e-9) <= fit.train_risk <= rb.upper * (1 + 1e-9))
    out.update(_candidate_fields(k_base, candidates, n, sigma, seed))
    # early stopping (early-stopping paper §3.5)
    out["stopping"] = stopping.kernel_stopping_rule(k_base, y, f0, step_size=step_size, noise=noise, cv=cv, seed=seed)
    # LoRA rank (LoRA-NTK paper): N examples, K outputs
    out["lora_min_rank"] = lora_rank.min_rank(num_out, n)
    out["timings"] = {"analysis_s": time.perf_counter() - t0}
    return KernelAnalysis(**out)


def _spectrum_fields(spec: spectrum.Spectrum, sigma: float) -> dict:
    """Eigenvalues, κ(K+σI) at σ and over a σ grid, effective rank and the fitted decay β (or why it failed)."""
    grid = np.logspace(-6, 2, 9)
    out: dict = {
        "eigenvalues": spec.eigenvalues.tolist(),
        "lambda_max": spec.lambda_max,
        "lambda_min": spec.lambda_min,
        "trace": spec.trace,
        "eigenvalue_notes": spec.notes,
        "clamped_eigenvalues": spec.clamped_count,
        "condition_number": {
            "value": spectrum.condition_number(spec, sigma),
            "sigma": sigma,
            "grid": [{"sigma": float(s), "value": float(v)} for s, v in zip(grid, spectrum.condition_number(spec, grid), strict=True)],
        },
        "effective_rank": spec.effective_rank,
    }
    try:
        dec = spectrum.decay_rate(spec.eigenvalues)
        out.update(decay_beta=dec.beta, decay_beta_stderr=dec.stderr, decay_window=list(dec.window), decay_r2=dec.r2)
    except TangentError as exc:
        out.update(decay_beta=None, decay_beta_stderr=None, decay_window=None, decay_r2=None, decay_note=exc.message)
    return out


def _ridge_fields(k_base, k_cross, y, f0, y_eval, f0_eval, cv, task_kind: str, seed: int):
    """(the report's ``krr`` fields, the fit): kernel ridge prediction (eq. 14–17) at the cross-validated σ, scored
    with the task metric training and task vectors report (:mod:`tangentft.data.scoring`), so the numbers compare."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        fit = krr.krr_predict(k_base, y, f0, cv.sigma, k_cross, f0_eval)
    kr: dict = {
        "sigma": cv.sigma,
        "cv": cv.to_json(),
        "train_loss": fit.train_risk,
        "train_loss_definition": "‖Y − f*(X)‖² summed over examples and outputs (Theorem 5's R)",
        "dof": fit.dof,
        "warnings": [str(w.message) for w in caught],
    }
    if task_kind == "classification":
        labels, train_labels = np.asarray(y_eval).argmax(axis=1), y.argmax(axis=1)
    else:
        labels, train_labels = np.asarray(y_eval)[:, 0], y[:, 0]
    name, value = task_metric(fit.eval_pred, labels, task_kind)
    kr.update(eval_metric_name=name, eval_metric=value, zero_shot_metric=task_metric(f0_eval, labels, task_kind)[1],
              train_metric=task_metric(fit.train_pred, train_labels, task_kind)[1])
    if task_kind != "classification":
        m = krr.regression_metrics(fit.eval_pred[:, 0], labels)
        z = krr.regression_metrics(np.asarray(f0_eval)[:, 0], labels)
        kr.update(eval_mse=m["mse"], eval_spearman=m["spearman"], zero_shot_mse=z["mse"])
    kr["sigma_spread"] = uncertainty.sigma_spread(k_base, y, f0, seed=seed)
    kr["theory_label"] = "ridge limit of gradient descent on the squared loss (the theory's number, not a run's curve)"
    return kr, fit


def _candidate_fields(k_base, candidates: Mapping[str, np.ndarray], n: int, sigma: float, seed: int) -> dict:
    """Algorithm 2 over the candidate groups: ranking, singles, best subset per size, the recommended subset and
    the ranking's bootstrap uncertainty."""
    if not candidates:
        return {"candidates": []}
    sel = perturbation.select_groups(k_base, candidates, sigma)
    return {
        "candidates": [c.to_json() for c in sel.ranking],
        "candidate_singles": [c.to_json() for c in sel.singles],
        "candidate_best_by_size": {str(s): c.to_json() for s, c in sel.best_by_size.items()},
        "candidate_method": sel.method,
        "candidate_recommendation": recommend_subset(sel).to_json(),
        "candidate_uncertainty": uncertainty.ranking_uncertainty(k_base, candidates, n, sigma, seed=seed),
    }


def _sample(task, n: int, n_eval: int | None, seed: int):
    """(kernel sample, eval sample, eval split name), drawn like ``train`` draws (``data.sampling.run_examples``):
    the same split and seed give the same eval examples as ``train --n-eval``, and the kernel sample is the
    training sample of ``train --n-train n`` (a subset of any larger one: samples are nested)."""
    from ..data.sampling import run_examples, train_val_split

    spec = task.spec
    train = task.split("train")
    if spec.kind == "classification":
        labels = sorted({int(e.label) for e in train})
        if len(labels) < 2:
            raise TangentError(f"task {spec.name}: the train split has only one class (label {labels[0]}); need ≥ 2")
    if n > len(train):
        raise TangentError(f"n = {n} exceeds the {len(train)} training examples of task {spec.name}")
    n_eval = n if n_eval is None else int(n_eval)
    if n_eval < 1:
        raise TangentError(f"n_eval must be ≥ 1, got {n_eval}")
    x, x_eval = run_examples(task, n, n_eval, seed)
    pool_name = next((s for s in ("dev", "test") if s in task.splits), None)
    if pool_name is None:
        chosen = {e.uid for e in x}
        pool = [e for e in train if e.uid not in chosen]
        pool_name = "train (held out from the sample)"
        if not pool:
            raise TangentError(f"task {spec.name}: no dev/test split and no training examples left for evaluation")
        x_eval = train_val_split(pool, val_size=min(n_eval, len(pool) - 1), seed=seed)[1] if len(pool) > 1 else pool
    return x, x_eval, pool_name


def analyze(
    model: str,
    task: str,
    params: Spec | None = None,
    candidates: Spec | None = None,
    *,
    n: int = 32,
    n_eval: int | None = None,
    seed: int = 0,
    sigma: float = spectrum.DEFAULT_SIGMA,
    step_size: float | None = None,
    noise: float | None = None,
    lipschitz_examples: int = 4,
    template: str | None = None,
    label_words: list[str] | None = None,
    progress: Progress | None = None,
    task_options: Mapping[str, object] | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> tuple[AnalysisReport, np.ndarray, object]:
    """Run the whole pre-training analysis; returns (report, base train kernel matrix, the Kernel).

    One eNTK pass over the base selection ``params`` ∪ the ``candidates`` selection gives the base kernel K
    (group ``base``) and the candidate kernels S_g (candidate groups, e.g. ``L5.o``) together, plus the
    eval×train cross-kernel for kernel-ridge prediction. ``params`` and ``candidates`` are parsed specs
    (:meth:`Spec.parse` the text where it enters). ``template``/``label_words`` override the task's
    prompt and verbalizers, ``task_options`` (``num_labels``, ``score_range``) declare its classes/range
    (as in :func:`tangentft.data.load_task`). ``params`` None analyses the model's default
    (:func:`tangentft.models.candidates.default_params`).
    ``device``/``dtype`` place the model (:mod:`tangentft.device`); kernels stay float64.
    """
    from ..data import load_task
    from ..models.task_model import build_task_model
    from ..ntk import empirical_ntk_pair

    if isinstance(n, bool) or int(n) < 2:
        raise TangentError(f"n must be ≥ 2, got {n}")
    if not float(sigma) > 0:
        raise TangentError(f"sigma must be > 0, got {sigma}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = load_task(task, template=template, label_words=label_words, **(task_options or {}))
    x, x_eval, eval_split = _sample(data, int(n), n_eval, seed)
    tm = build_task_model(model, data.spec, seed=seed, device=device, dtype=dtype)
    register_terms()  # lora(...) terms inject their adapter as the selection resolves
    sel = select_candidates(tm, params, candidates, seed=seed)
    timings["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    kprog = (lambda d, tot: progress("eNTK", d, tot)) if progress else None
    k_train, k_cross = empirical_ntk_pair(tm, sel.combined, x, x_eval, kind="full", progress=kprog)
    timings["kernel_s"] = time.perf_counter() - t
    k_base = k_train.blocks[BASE_GROUP]

    t = time.perf_counter()
    f0, f0_eval, y, y_eval, phi, phi_eval = _outputs(tm, x, x_eval, progress)
    timings["predict_s"] = time.perf_counter() - t

    kernels = analyze_kernels(k_base, k_cross.blocks[BASE_GROUP], {g: k_train.blocks[g] for g in sel.groups}, y, f0,
                              y_eval, f0_eval, task_kind=data.spec.kind, sigma=sigma, step_size=step_size,
                              noise=noise, seed=seed)
    t = time.perf_counter()
    regime = _linear_regime(tm, sel.base, x[:lipschitz_examples], kernels, y, f0, k_base.shape[0], seed, progress)
    timings["lipschitz_s"] = time.perf_counter() - t

    rep = AnalysisReport.from_kernels(
        kernels,
        model=model,
        task=task,
        task_name=data.spec.name,
        task_kind=data.spec.kind,
        params=sel.params,
        params_default=sel.params_default,
        template=template,
        label_words=label_words,
        task_options={k: v for k, v in (task_options or {}).items() if v is not None},
        candidates_spec=None if sel.candidates is None else str(sel.candidates),
        candidate_groups=list(sel.groups),
        num_params=sel.num_params,
        num_params_candidates=sel.num_params_candidates,
        seed=seed,
        eval_split=eval_split,
        n_eval=len(x_eval),
        sample_ids=k_train.sample_ids,
        kernel_timings=k_train.timings,
        lora_ranks=[a.to_json() for a in lora_rank.advise_ranks(tm.num_outputs, len(x), sel.adapted_shapes)],
        **regime,
    )
    # linear probe on the frozen features the output reads: the same kernel ridge with the head's kernel
    t = time.perf_counter()
    rep.baselines["linear_probe"] = _probe_metric(tm, phi, phi_eval, y, f0, y_eval, f0_eval, data.spec.kind, seed)
    timings["probe_s"] = time.perf_counter() - t
    rep.warnings = setup_warnings(tm)
    rep.timings = rep.timings | timings
    rep.recommendation = recommendation(rep)
    return rep, k_base, k_train


def _outputs(tm, x, x_eval, progress: Progress | None):
    """(f0(X), f0(X_eval), Y, Y_eval, φ(X), φ(X_eval)) as float64 arrays: the pretrained outputs, the targets and
    the frozen features the outputs are read from (the linear probe's input), from one forward pass."""
    if progress:
        progress("f0(X)", 0, 2)
    f0, phi = tm.predict_and_features(x)
    if progress:
        progress("f0(X)", 1, 2)
    f0_eval, phi_eval = tm.predict_and_features(x_eval)
    if progress:
        progress("f0(X)", 2, 2)
    return (f0.double().numpy(), f0_eval.double().numpy(), tm.targets(x).double().numpy(),
            tm.targets(x_eval).double().numpy(), phi.numpy(), phi_eval.numpy())


def _linear_regime(tm, base, x_lip, kernels: KernelAnalysis, y, f0, n_rows: int, seed: int,
                   progress: Progress | None) -> dict:
    """The linear-regime check: Lipschitz constants (Algorithm 1) in the ball the kernel-ridge solution reaches,
    λ∘ and the Theorems 2–4 bound curves; the report fields ``lipschitz``, ``lambda_circ``, ``bound_curves``."""
    radius = kernels.stopping["rkhs_norm"] or 1.0
    lprog = (lambda d, tot: progress("Lipschitz", d, tot)) if progress else None
    lip = lipschitz.estimate_lipschitz(tm, base, x_lip, r_max=radius, num_radii=3, samples=2, seed=seed,
                                       progress=lprog)
    rho = float(np.linalg.norm(y - f0))
    lam_circ = lipschitz.lambda_circ(rho, lip.lip_f, radius)
    lam_use = max(lam_circ, kernels.krr["sigma"])
    t_hat = kernels.stopping["T_hat"]
    lr_sum = kernels.stopping["step_size"] / n_rows  # the mean-loss step as a sum-of-squares step
    # plot until the distance bound has saturated (3 time constants), within 10⁶ steps
    horizon = int(min(max(10 * t_hat, 100, 3.0 / (lam_use * lr_sum)), 1e6))
    curves = lipschitz.bound_curves(rho, lip.lip_f, lip.lip_grad, lam_use, lr_sum, lipschitz.steps_grid(horizon))
    return {"lipschitz": lip.to_json() | {"radius": radius,
                                         "radius_definition": "‖θ_KRR − θ0‖ = sqrt(αᵀKα) at the CV σ"},
            "lambda_circ": lam_circ, "bound_curves": curves.to_json()}


def setup_warnings(task_model) -> list[str]:
    """Warnings about setups where the kernel view is known to be weak (Malladi et al. 2023, §6)."""
    if getattr(task_model, "head", None) is None:
        return []
    return ["encoder with a seeded random head: zero-shot is meaningless (it changes with the seed), and kernel "
            "behavior is known to be weak when a freshly initialized head is learned (Malladi et al. 2023); the "
            "prompt-based (label-word) formulation is preferred where the checkpoint has an LM head — this one has "
            "none, so use a causal LM's label words for kernel-faithful predictions"]


def _probe_metric(tm, phi, phi_eval, y, f0, y_eval, f0_eval, kind: str, seed: int) -> float:
    """Eval metric of kernel ridge with a linear head's kernel on the frozen features ``phi``/``phi_eval`` (σ by
    cross-validation)."""
    kt, kc = baselines.probe_kernels_of(tm, phi, phi_eval, signgd=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cv = krr.cv_sigma(kt, y, f0, folds=min(4, len(phi)), seed=seed)
        pred = krr.krr_predict(kt, y, f0, cv.sigma, kc, f0_eval).eval_pred
    y_eval = np.asarray(y_eval)
    labels = y_eval.argmax(axis=1) if kind == "classification" else None
    from .dynamics import metric

    return metric(pred, y_eval, labels, kind)[1]


def recommendation(rep: AnalysisReport) -> Recommendation:
    """What to do, in numbers: candidate groups to add (and the selection with them), LoRA rank, regularization λ,
    number of steps, and the theory's run (:func:`theory_run_numbers`). The ``tangentft train`` command is made
    by the predict layer (:mod:`tangentft.predict.recommend`), which turns these numbers into runs."""
    st = rep.stopping
    krr_sigma = rep.krr["sigma"]
    lam_circ = rep.lambda_circ
    rec = Recommendation(
        lora_rank=rep.lora_min_rank,
        regularization=max(krr_sigma, lam_circ) if lam_circ is not None else krr_sigma,
        regularization_cv=krr_sigma,
        regularization_linear_regime=lam_circ,
        steps=st["T_hat"],
        step_size=st["step_size"],
        candidate_groups=(rep.candidate_recommendation or {}).get("groups", []),
    )
    rec.params = recommended_params(rep.params, rec.candidate_groups)
    theory_run_numbers(rep, rec)
    return rec


def recommended_params(params: Spec, groups: list[str]) -> Spec:
    """The selection that trains ``params`` plus the candidate ``groups`` (labels such as ``L5.o``), each group a
    term as it was analysed (:meth:`Spec.of_group`, a LoRA adapter when ``params`` are LoRA factors)."""
    for g in groups:
        params = params + params.trained_like(Spec.of_group(g))
    return params


def theory_run_numbers(rep: AnalysisReport, rec: Recommendation) -> None:
    """Fill the theory's run into ``rec``: the setting the ridge and stopping numbers were derived for, as the
    trainer would run it — gradient descent (SGD, one batch of the n analysed examples) on the mean squared loss,
    whose step α = 2·lr (see :mod:`tangentft.analysis.kernel_rule`), T̂ steps, and the pull λ_train = 2λ/(n·K): the
    analysis's ½‖f − Y‖² + (λ/2)‖θ − θ0‖² divided by n·K/2 is the trainer's mean squared loss plus
    (λ_train/2)‖θ − θ0‖². It is the theory's number, not the recommended run (that one is AdamW, predicted)."""
    n_rows = rep.n * rep.K
    rec.theory_lam = 2.0 * rec.regularization / n_rows
    # α = 2·lr; the pull must not overshoot (lr·λ ≤ 1, PullToInit), so a strong pull takes smaller steps,
    # more of them: the rule's effective time η = α·T̂ is what the steps must cover
    rec.theory_lr = min(rec.step_size / 2.0, 0.5 / rec.theory_lam) if rec.theory_lam > 0 else rec.step_size / 2.0
    stretch = rec.step_size / 2.0 / rec.theory_lr
    rec.theory_steps = max(1, math.ceil(rec.steps * stretch - 1e-9))
    lora_ranks = [t.lora.r for t in rep.params.lora_terms]
    rec.theory_lora_rank = max(rec.lora_rank, *lora_ranks) if lora_ranks else None
    rec.theory_notes = [
        f"loss: the trainer's mean squared loss over the K = {rep.K} outputs, the loss the stopping rule and λ were "
        f"derived for; λ = {rec.regularization:.4g} on ½‖f − Y‖² becomes λ_train = 2λ/(n·K) = {rec.theory_lam:.4g}",
        f"steps: full-batch SGD on n = {rep.n} training examples with lr = α/2 = {rec.theory_lr:.4g} (α the rule's "
        f"step size) for T̂ = {rec.steps} steps" + (" (T̂ = 0: one step, the trainer's minimum)" if rec.steps == 0 else "")
        if stretch == 1 else
        f"steps: full-batch SGD on n = {rep.n} training examples; the rule's step α/2 = {rec.step_size / 2:.4g} would "
        f"overshoot the pull (lr·λ > 1), so lr = 1/(2λ_train) = {rec.theory_lr:.4g} for {rec.theory_steps} steps, the "
        f"same effective time α·T̂ as T̂ = {rec.steps} steps of α",
    ]
    if rec.theory_lora_rank is not None and rec.lora_rank > DEFAULT_LORA_RANK:
        rec.theory_notes.append(f"LoRA rank {rec.lora_rank}: the LoRA-NTK rank bound for K·N = {n_rows}")
