"""LoRA rank advisor (LoRA-NTK paper, Theorems 3.1 and 4.1).

In the NTK regime, fine-tuning with N examples and K outputs has a low-rank solution whose rank r satisfies
r(r+1)/2 ≤ K·N (Theorem 3.1), and LoRA of rank r has no spurious local minima once r(r+1)/2 > K·N
(Theorem 4.1). So the advised rank is the smallest such r — it grows like sqrt(2KN), independent of the
matrix size, capped by the matrix's own rank min(out, in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..errors import TangentError


def min_rank(num_outputs: int, num_examples: int) -> int:
    """Smallest r with r(r+1)/2 > K·N (LoRA-NTK paper, Theorem 4.1)."""
    if num_outputs < 1 or num_examples < 1:
        raise TangentError(f"rank advisor needs K ≥ 1 and N ≥ 1, got K={num_outputs}, N={num_examples}")
    kn = num_outputs * num_examples
    r = (math.isqrt(8 * kn + 1) - 1) // 2  # largest r with r(r+1)/2 ≤ KN
    while r * (r + 1) // 2 <= kn:
        r += 1
    return r


@dataclass
class RankAdvice:
    """Advised LoRA rank for one adapted matrix."""

    matrix: str
    shape: tuple[int, int]
    rank: int
    capped: bool  # True when K·N demands more than min(out, in): the matrix then needs full-rank updates
    explanation: str

    def to_json(self) -> dict:
        return asdict(self)


def advise_ranks(num_outputs: int, num_examples: int, shapes: Mapping[str, tuple[int, int]]) -> list[RankAdvice]:
    """Per adapted matrix (name -> (out, in)), the LoRA rank of :func:`min_rank`, capped at min(out, in)."""
    r = min_rank(num_outputs, num_examples)
    kn = num_outputs * num_examples
    out = []
    for name, (o, i) in shapes.items():
        cap = min(int(o), int(i))
        rank = min(r, cap)
        why = (
            f"r(r+1)/2 = {r * (r + 1) // 2} > K·N = {num_outputs}·{num_examples} = {kn} first holds at r = {r}, so "
            f"rank-{r} LoRA has no spurious local minima in the NTK regime (LoRA-NTK paper, Thm 4.1)"
        )
        if r > cap:
            why += f"; this {o}×{i} matrix has rank ≤ {cap}, so use r = {cap} (a full-rank update)"
        out.append(RankAdvice(name, (int(o), int(i)), rank, r > cap, why))
    return out
