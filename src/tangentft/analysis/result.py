"""The typed result of an analysis: what :func:`tangentft.analysis.analyze.analyze` returns and report.json holds.

:class:`KernelAnalysis` is the numpy part (everything read off the kernels and targets); :class:`AnalysisReport`
adds what was analysed (model, task, selection, sample) and the model-dependent checks (Lipschitz
estimates, bound curves, rank advice) and ends in a :class:`Recommendation`, with the ``tangentft train``
command of the run to launch. report.json is :meth:`AnalysisReport.to_json`; report.md and ``analyze --compare``
read the same object back through :meth:`AnalysisReport.from_json`. Sections computed by one module
(``krr``, ``stopping``, ``risk_bounds``, ``lipschitz``, …) stay that module's JSON dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..models.spec import Spec


@dataclass(kw_only=True)
class KernelAnalysis:
    """Spectrum, κ, decay, Theorem 5 bounds, kernel-ridge prediction, Algorithm 2 ranking, stopping rule, rank."""

    n: int
    K: int
    kernel_shape: list[int]
    eigenvalues: list[float]
    lambda_max: float
    lambda_min: float
    trace: float
    eigenvalue_notes: list[str]
    clamped_eigenvalues: int
    condition_number: dict  # value at σ, σ, and the σ grid
    effective_rank: float
    decay_beta: float | None = None
    decay_beta_stderr: float | None = None
    decay_window: list[int] | None = None
    decay_r2: float | None = None
    decay_note: str | None = None
    krr: dict = field(default_factory=dict)  # kernel-ridge prediction (eq. 14–17), σ by cross-validation
    baselines: dict = field(default_factory=dict)  # zero-shot, majority class and linear-probe metrics
    risk_bounds: dict = field(default_factory=dict)  # Theorem 5, and whether they bracket the KRR risk
    candidates: list[dict] = field(default_factory=list)  # Algorithm 2 ranking, best first
    candidate_singles: list[dict] | None = None
    candidate_best_by_size: dict | None = None
    candidate_method: str | None = None
    candidate_recommendation: dict | None = None
    candidate_uncertainty: dict | None = None  # the ranking under bootstrap resampling of the kernel sample
    stopping: dict = field(default_factory=dict)  # early-stopping rule (early-stopping paper §3.5)
    lora_min_rank: int = 0  # LoRA-NTK paper, Theorem 4.1
    timings: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class Recommendation:
    """What to do, in numbers, the theory's run, and the ``tangentft train`` command of the run to launch.

    ``regularization`` is λ in the analysis's sum-of-squares loss ½‖f − Y‖² + (λ/2)‖θ − θ0‖². The ``theory_*``
    fields are the setting the ridge and stopping numbers were derived for, as the trainer would run it:
    full-batch SGD on the mean squared loss with the pull ``theory_lam`` = 2λ/(n·K), lr ``theory_lr`` = α/2
    for ``theory_steps`` steps (:func:`tangentft.analysis.analyze.theory_run_numbers`). ``train_command`` is the
    run to launch (AdamW, its curve predicted in the report's ``run_prediction``); it, ``theory_command`` and the
    ``decision`` (launch it, or no run is predicted to beat zero-shot and what to try instead) are written by
    :mod:`tangentft.predict.recommend`.
    """

    lora_rank: int
    regularization: float
    regularization_cv: float
    regularization_linear_regime: float | None
    steps: int
    step_size: float
    candidate_groups: list[str]
    params: Spec | None = None  # the analysed parameters plus the recommended candidate groups
    theory_lam: float | None = None
    theory_lr: float | None = None
    theory_steps: int | None = None
    theory_lora_rank: int | None = None
    theory_notes: list[str] = field(default_factory=list)
    theory_command: str | None = None
    train_command: str | None = None
    predicted_gain: bool | None = None  # whether the run to launch is predicted to beat not training at all
    decision: str | None = None  # the sentence that says so, and what to try instead when it does not

    def __post_init__(self):
        if self.params is not None:
            self.params = Spec.parse(self.params)  # report.json's text enters here


@dataclass(kw_only=True)
class AnalysisReport(KernelAnalysis):
    """Everything ``analyze`` found, with its context and recommendation (report.json, report.md, --compare)."""

    model: str
    task: str
    task_name: str
    task_kind: str
    params: Spec  # the analysed parameters (report.json holds the text)
    params_default: bool = False  # params was not given: the documented per-architecture default was used
    template: str | None = None  # the prompt template, when it replaced the task's
    label_words: list[str] | None = None  # the label words, when they replaced the task's
    task_options: dict[str, Any] = field(default_factory=dict)  # num_labels / score_range, when given
    candidates_spec: str | None = None
    candidate_groups: list[str] = field(default_factory=list)
    num_params: int = 0
    num_params_candidates: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    eval_split: str | None = None
    n_eval: int | None = None
    sample_ids: list[str] = field(default_factory=list)
    kernel_timings: dict = field(default_factory=dict)
    lora_ranks: list[dict] = field(default_factory=list)
    lipschitz: dict | None = None
    lambda_circ: float | None = None
    bound_curves: dict | None = None
    recommendation: Recommendation | None = None
    warnings: list[str] = field(default_factory=list)  # setups where the kernel view is known to be weak
    run_prediction: dict | None = None  # the predicted curve of the run to launch (tangentft.predict.curve)
    figures: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.params = Spec.parse(self.params)  # report.json's text enters here

    @classmethod
    def from_kernels(cls, kernels: KernelAnalysis, **context: Any) -> AnalysisReport:
        """The report of ``kernels`` with the context fields (model, task, params, …) given."""
        return cls(**{f.name: getattr(kernels, f.name) for f in fields(KernelAnalysis)}, **context)

    def to_json(self) -> dict:
        """report.json's content: the specs as their text."""
        data = asdict(self) | {"params": str(self.params)}
        if self.recommendation is not None and self.recommendation.params is not None:
            data["recommendation"]["params"] = str(self.recommendation.params)
        return data

    @classmethod
    def from_json(cls, data: dict) -> AnalysisReport:
        """Read :meth:`to_json` output back; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if isinstance(kw.get("recommendation"), dict):
            rec_known = {f.name for f in fields(Recommendation)}
            kw["recommendation"] = Recommendation(**{k: v for k, v in kw["recommendation"].items() if k in rec_known})
        return cls(**kw)
