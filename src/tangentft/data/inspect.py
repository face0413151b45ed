"""Summary statistics of a loaded task (sizes, label balance, prompt lengths) for the CLI to render."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .types import Example, TaskData

QUANTILES = {"min": 0.0, "p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
_BATCH = 1024


def _label_stats(examples: list[Example], kind: str, num_classes: int) -> dict[str, Any]:
    if not examples:
        return {}
    if kind == "classification":
        counts = np.bincount(np.asarray([int(e.label) for e in examples]), minlength=num_classes)
        return {
            "counts": [int(c) for c in counts],
            "fractions": [float(c) / len(examples) for c in counts],
        }
    scores = np.asarray([float(e.label) for e in examples])
    return {
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "min": float(scores.min()),
        "max": float(scores.max()),
    }


def _input_ids(encoded: Any) -> Sequence[Sequence[int]]:
    """``input_ids`` from an HF BatchEncoding, a plain dict, or an object with that attribute."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        return encoded["input_ids"]
    return encoded.input_ids


def token_lengths(
    texts: list[str], tokenizer: Callable[..., Any], pairs: list[str] | None = None
) -> np.ndarray:
    """Token count of each text (or text pair) under ``tokenizer``, batched to bound memory."""
    lengths: list[int] = []
    for start in range(0, len(texts), _BATCH):
        batch = texts[start : start + _BATCH]
        if pairs is None:
            encoded = tokenizer(batch)
        else:
            encoded = tokenizer(batch, pairs[start : start + _BATCH])
        lengths.extend(len(ids) for ids in _input_ids(encoded))
    return np.asarray(lengths, dtype=np.int64)


def _length_stats(lengths: np.ndarray) -> dict[str, Any]:
    if lengths.size == 0:
        return {}
    # Nearest-rank quantiles ("inverted_cdf"), so every figure is a length that actually occurs.
    stats: dict[str, Any] = {
        name: int(np.quantile(lengths, q, method="inverted_cdf")) for name, q in QUANTILES.items()
    }
    stats["mean"] = float(lengths.mean())
    return stats


def inspect_task(
    task: TaskData, tokenizer: Callable[..., Any] | None = None, template_applied: bool = True
) -> dict[str, Any]:
    """Describe a task: kind, split sizes, label balance and, with a tokenizer, prompt token lengths.

    Returns plain Python types. ``splits[name]`` holds ``size``, ``labels`` (classification: ``counts`` and
    ``fractions`` per class index; regression: ``mean``/``std``/``min``/``max`` of the scores),
    ``empty_texts``, ``in_train`` (examples of a non-train split whose text also occurs in train) and,
    when ``tokenizer`` (any callable returning ``input_ids`` for a list of strings, e.g. an HF tokenizer)
    is given, ``tokens`` = min/p50/p90/p99/max/mean lengths of the formatted prompts, or of the raw
    texts (passed as text pairs for pair tasks) when ``template_applied`` is False.
    """
    spec = task.spec
    train_keys = {(e.text, e.text_pair) for e in task.splits.get("train", [])}
    splits: dict[str, Any] = {}
    for name, examples in task.splits.items():
        info: dict[str, Any] = {
            "size": len(examples),
            "labels": _label_stats(examples, spec.kind, spec.num_classes),
            "empty_texts": sum(
                1
                for e in examples
                if not e.text.strip() or (e.text_pair is not None and not e.text_pair.strip())
            ),
        }
        if name != "train" and train_keys:
            info["in_train"] = sum(1 for e in examples if (e.text, e.text_pair) in train_keys)
        if tokenizer is not None:
            if template_applied:
                lengths = token_lengths([spec.format(e) for e in examples], tokenizer)
            elif spec.is_pair:
                lengths = token_lengths(
                    [e.text for e in examples], tokenizer, [e.text_pair or "" for e in examples]
                )
            else:
                lengths = token_lengths([e.text for e in examples], tokenizer)
            info["tokens"] = _length_stats(lengths)
        splits[name] = info
    summary: dict[str, Any] = {
        "name": spec.name,
        "source": task.source,
        "kind": spec.kind,
        "is_pair": spec.is_pair,
        "num_outputs": spec.num_outputs,
        "template": spec.template,
        "label_words": list(spec.label_words),
        "splits": splits,
    }
    if spec.kind == "classification":
        summary["num_classes"] = spec.num_classes
    else:
        summary["label_values"] = list(spec.label_values)
    if tokenizer is not None:
        summary["tokens_of"] = "prompt" if template_applied else "text"
    return summary


__all__ = ["inspect_task", "token_lengths"]
