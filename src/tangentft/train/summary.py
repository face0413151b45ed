"""summary.md: a short human-readable account of a finished run."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write, format_number


def write_summary(out_dir: Path, config: dict, summary: dict, rows: list[dict]) -> Path:
    """Write ``summary.md``: the run's setup, its final/best evaluation and the linearization columns."""
    last = summary.get("last") or {}
    best = next((r for r in rows if r["step"] == summary.get("best_step")), None)
    opts = ", ".join(f"{k}={v}" for k, v in config.get("method_options", {}).items()) or "defaults"
    lines = [
        f"# tangentft train — {config['method']} on {config['model']}",
        "",
        f"- task: `{config['task']}`; method options: {opts}",
        f"- regularization: {config['reg']} (λ = {config['lam']}), weight decay {config['weight_decay']}, "
        f"{config['optimizer']} lr {config['lr']}, batch {config['batch_size']}×{config['grad_accum']}",
        f"- steps: {summary['steps']} of {summary['total_steps']}"
        + (" (stopped early)" if summary["stopped_early"] else "")
        + f"; trainable parameters: {summary['trainable_params']:,}",
    ]
    if summary.get("kernel_rule"):
        kr = summary["kernel_rule"]
        lines.append(f"- kernel rule (early-stopping paper §3.5): T̂ = {kr['T_hat']} steps from the eNTK of "
                     f"{kr['n_kernel']} training examples (critical radius {kr['critical_radius']:.3g}, "
                     f"step size {kr['step_size_from']})")
    if summary.get("restored_best"):
        lines.append(f"- best weights restored from step {summary['best_step']} (validation loss)")
    lines += ["", "| row | step | train_loss | eval_loss | eval_metric | theta_dist | lin_gap | lin_kl | output_shift |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, r in (("first", rows[0] if rows else None), ("last", last), ("best", best)):
        if r:
            cols = [r.get(k) for k in ("step", "train_loss", "eval_loss", "eval_metric", "theta_dist", "lin_gap",
                                       "lin_kl", "output_shift")]
            lines.append(f"| {label} | " + " | ".join(format_number(v) for v in cols) + " |")
    name = last.get("eval_metric_name")
    if name:
        lines += ["", f"eval_metric is {name}."]
    pulled = summary.get("pull_fraction") or {}
    if config["reg"] != "none" and pulled:
        mean = sum(pulled.values()) / len(pulled)
        lines += ["", f"Pull toward θ0 applied on {mean:.1%} of tensor-steps on average "
                      f"(min {min(pulled.values()):.1%}, max {max(pulled.values()):.1%} over {len(pulled)} tensors)."]
    lines += ["", f"Wall time {format_number(last.get('wall_s'))} s, peak RSS {format_number(last.get('peak_rss_gb'))} GiB.",
              "", "Figures: figures/training.png, figures/linearization.png.", ""]
    return atomic_write(Path(out_dir) / "summary.md", "\n".join(lines))
