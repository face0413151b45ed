"""``--stop-at kernel-rule``: stop training at the data-dependent step T̂ read off the eNTK at θ0.

Early-stopping paper §3.5 (eq. 10–11, after Raskutti et al. 2014): for gradient descent with step α on the
linearized model's mean squared loss, T̂ = ⌊1/(α ε̂²)⌋ with ε̂ the critical radius of the kernel spectrum.
The kernel is taken w.r.t. exactly the parameters the method trains, on (up to) ``max_examples`` training
examples. The step size maps the trainer's learning rate when that is exact — SGD on the MSE loss averaged
over the K outputs moves f by 2·lr·(K/N)(Y − f), so α = 2·lr — and is the largest stable step 1/λ̂max
otherwise (Adam normalizes its steps, so its lr is no GD step size; the rule is then a heuristic scale).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TangentError
from ..io import write_json
from ..schemas import KernelRuleRecord, read_json

FILE = "kernel_rule.json"


def kernel_rule(task_model, method, examples, *, optimizer: str, loss: str, lr: float, seed: int,
                max_examples: int = 64, out_dir: Path | None = None) -> dict:
    """Compute (or, when ``out_dir`` already holds it from the interrupted run, read back) the rule's T̂."""
    if out_dir is not None and (Path(out_dir) / FILE).is_file():
        return read_json(Path(out_dir) / FILE, KernelRuleRecord).model_dump()
    selection = getattr(method, "selected", None)
    if selection is None:
        raise TangentError(f"stop_at='kernel-rule': method '{method.name}' does not expose its parameter selection")
    rule = kernel_rule_for_selection(task_model, selection, examples, optimizer=optimizer, loss=loss, lr=lr,
                                     seed=seed, max_examples=max_examples)
    if out_dir is not None:
        write_json(Path(out_dir) / FILE, rule)
    return rule


def kernel_rule_for_selection(task_model, selection, examples, *, optimizer: str, loss: str, lr: float, seed: int,
                              max_examples: int = 64) -> dict:
    """The rule's T̂ (and its inputs) for training ``selection`` of ``task_model`` on ``examples``."""
    from ..data import sample_n
    from ..ntk import empirical_ntk
    from .stopping import kernel_stopping_rule

    xs = sample_n(examples, min(max_examples, len(examples)), seed) if len(examples) > max_examples else list(examples)
    if len(xs) < 2:
        raise TangentError("the kernel stopping rule needs at least 2 training examples")
    k = empirical_ntk(task_model, selection, xs, kind="full").matrix
    y = task_model.targets(xs).numpy()
    f0 = task_model.predict(xs).numpy()
    exact = optimizer == "sgd" and loss == "mse"
    rule = kernel_stopping_rule(k, y, f0, step_size=2 * lr if exact else None, seed=seed)
    rule.update(n_kernel=len(xs), step_size_from="2·lr (SGD + MSE)" if exact else "1/λ̂max (largest stable GD step)")
    return rule
