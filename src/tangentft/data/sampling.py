"""Seeded subsets of examples: n random, k per class, and a (stratified) train/validation split.

Every function takes an explicit integer seed and its own ``numpy.random.Generator``; nothing touches
global random state, so the same call gives the same subset on every machine and run. Results keep the
input's order. Samples are nested: with one seed, the n=16 sample is contained in the n=32 sample (and
likewise for k per class), which keeps data-scaling curves free of resampling noise.
"""

from __future__ import annotations

import numbers
from collections import defaultdict

import numpy as np

from ..errors import TangentError
from .types import Example


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TangentError(f"seed must be an integer, got {seed!r}")
    if seed < 0:
        raise TangentError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng(int(seed))


def _class_index(examples: list[Example], what: str) -> dict[int, list[int]]:
    """Positions of the examples of each class label, refusing regression scores."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        label = ex.label
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise TangentError(
                f"{what} needs integer class labels; example {ex.uid or i} has label {label!r}"
            )
        groups[int(label)].append(i)
    return groups


def sample_indices(total: int, n: int, seed: int) -> np.ndarray:
    """The sorted positions, among ``total`` examples, of the ``n`` that :func:`sample_n` draws with ``seed``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise TangentError(f"sample size n must be a positive integer, got {n!r}")
    if n > total:
        raise TangentError(f"cannot sample n={n} examples from only {total}")
    # A full permutation (not rng.choice) so smaller n with the same seed gives a prefix of larger n.
    return np.sort(_rng(seed).permutation(total)[:n])


def sample_n(examples: list[Example], n: int, seed: int) -> list[Example]:
    """``n`` distinct examples drawn uniformly without replacement, in their original order."""
    return [examples[i] for i in sample_indices(len(examples), n, seed)]


def sample_per_class(
    examples: list[Example], k: int, seed: int, *, num_classes: int | None = None
) -> list[Example]:
    """``k`` random examples of every class, in their original order (classification only).

    Classes are the labels present, or 0..``num_classes``-1 when given (so a class absent from the
    data is reported rather than silently skipped).
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise TangentError(f"examples per class k must be a positive integer, got {k!r}")
    groups = _class_index(examples, "sample_per_class")
    classes = sorted(groups) if num_classes is None else list(range(num_classes))
    for c in classes:
        have = len(groups.get(c, []))
        if have < k:
            raise TangentError(f"class {c} has only {have} examples, fewer than k={k} per class")
    rng = _rng(seed)
    chosen: list[int] = []
    for c in classes:
        members = groups[c]
        # Permute the whole class so the draw per class does not depend on k (nested samples).
        perm = rng.permutation(len(members))[:k]
        chosen.extend(members[i] for i in perm)
    return [examples[i] for i in sorted(chosen)]


def _allocate(sizes: list[int], n_val: int) -> list[int]:
    """Split ``n_val`` over groups in proportion to their sizes (largest remainder), each within its size."""
    total = sum(sizes)
    quotas = [n_val * s / total for s in sizes]
    alloc = [min(int(q), s) for q, s in zip(quotas, sizes, strict=True)]
    order = sorted(range(len(sizes)), key=lambda g: (-(quotas[g] - int(quotas[g])), g))
    remaining = n_val - sum(alloc)
    while remaining > 0:
        progressed = False
        for g in order:
            if remaining and alloc[g] < sizes[g]:
                alloc[g] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    return alloc


def train_val_split(
    examples: list[Example],
    val_fraction: float | None = None,
    *,
    val_size: int | None = None,
    seed: int,
    stratify: bool = True,
) -> tuple[list[Example], list[Example]]:
    """Split into disjoint (train, val) lists, each in original order.

    Give exactly one of ``val_fraction`` (0 < f < 1; rounded, at least 1) or ``val_size``. With
    ``stratify`` and integer class labels, every class contributes in proportion to its size;
    regression scores get a plain random split.
    """
    total = len(examples)
    if (val_fraction is None) == (val_size is None):
        raise TangentError("train_val_split: give exactly one of val_fraction and val_size")
    if total < 2:
        raise TangentError(f"cannot split {total} example(s) into train and validation; need at least 2")
    if val_fraction is not None:
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, numbers.Real)
            or not 0 < val_fraction < 1
        ):
            raise TangentError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
        n_val = min(max(1, round(val_fraction * total)), total - 1)
    else:
        if isinstance(val_size, bool) or not isinstance(val_size, numbers.Integral) or val_size < 1:
            raise TangentError(f"val_size must be a positive integer, got {val_size!r}")
        if val_size >= total:
            raise TangentError(f"val_size={val_size} leaves no training examples out of {total}")
        n_val = int(val_size)
    rng = _rng(seed)
    is_classification = all(
        isinstance(e.label, numbers.Integral) and not isinstance(e.label, bool) for e in examples
    )
    if stratify and is_classification:
        groups = _class_index(examples, "train_val_split")
        classes = sorted(groups)
        alloc = _allocate([len(groups[c]) for c in classes], n_val)
        val_idx: list[int] = []
        for c, m in zip(classes, alloc, strict=True):
            members = groups[c]
            val_idx.extend(members[i] for i in rng.permutation(len(members))[:m])
    else:
        val_idx = rng.permutation(total)[:n_val].tolist()
    in_val = np.zeros(total, dtype=bool)
    in_val[val_idx] = True
    train = [e for e, v in zip(examples, in_val, strict=True) if not v]
    val = [e for e, v in zip(examples, in_val, strict=True) if v]
    return train, val


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which a training run visits its ``n`` examples in ``epoch``: a seeded permutation.

    The trainer and the function-space prediction of its run both read it, so they see the same batches.
    """
    import torch

    gen = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(int(n), generator=gen).tolist()


def run_examples(task, n_train: int | None, n_eval: int | None, seed: int) -> tuple[list[Example], list[Example]]:
    """(training sample, eval sample) of a run: ``n_train`` examples of the train split (all when None) and
    ``n_eval`` of dev (else test), both drawn with ``seed``.

    ``train`` and ``analyze`` both draw here, so with the same split and seed they evaluate on the same
    examples, and a kernel sample ``sample_n(train_sample, n, seed)`` is a subset of the training sample (and,
    since samples are nested, ``run_examples(task, n, ...)`` is the first part of any larger ``n_train``).
    """
    train = task.split("train")
    if n_train is not None:
        train = sample_n(train, n_train, seed)
    pool = next((task.splits[s] for s in ("dev", "test") if s in task.splits), [])
    evals = sample_n(pool, min(int(n_eval), len(pool)), seed) if pool and n_eval else []
    return train, evals


__all__ = ["epoch_order", "run_examples", "sample_n", "sample_per_class", "train_val_split"]
