"""How one parameter block's contribution J_b(X) J_b(X')ᵀ is contracted: Gram ("ghost") or materialized.

A linear map y_t = W a_t seen over the tokens t of example i has per-example gradient
G_ik = Σ_t b_ikt a_itᵀ (b_ikt = ∂f_k/∂y_t), so

    ⟨G_ik, G_jl⟩ = Σ_{t,s} (b_ikt · b_jls)(a_it · a_js)                    (Gram form)
                 = vec(G_ik) · vec(G_jl)                                     (materialized form)

Both are exact; which is cheaper depends on tokens T, widths d_in/d_out and n. The Gram form never
builds a d_out×d_in matrix per example; the materialized one never builds a T×T token Gram per pair.
This module holds the two feature types, their contractions, the cost model that picks one per block, and
the memory-budget parser.

Precision: features and each GEMM run in the product dtype (float32, or float64 for a float64 model); every
sum that grows with the data runs in float64 — over parameter panels of at most :data:`PANEL` entries, over
token pairs (Gram), outputs (traced), blocks, groups and chunks. A float32 dot product of length m has
relative error ≲ m·2⁻²⁴ in the worst case and ~√m·2⁻²⁴ typically, so bounding m by the panel keeps each
partial sum near 1e-6 of its magnitude (√4096·6e-8 ≈ 4e-6 at worst-typical) however many parameters are
selected, while the GEMMs keep float32 speed (float64 GEMMs cost twice the time on CPUs, several times
on GPUs). The tests hold the kernel to 1e-6 of max|K| against the float64 autograd oracle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import TangentError

CONTRACTIONS = ("auto", "gram", "materialize")


def parse_memory(text: str | int | float) -> int:
    """Bytes in a budget such as ``2GB``, ``512MB``, ``1.5GiB`` or a plain number of bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*", str(text).lower())
        if not m:
            raise TangentError(f"bad memory budget '{text}': write e.g. 2GB, 512MB or 1.5GiB")
        scale = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
                 "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}.get(m.group(2))
        if scale is None:
            raise TangentError(f"bad memory unit in '{text}': use B, KB, MB, GB (or KiB, MiB, GiB)")
        value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise TangentError(f"memory budget must be positive, got '{text}'")
    return value


@dataclass
class Materialized:
    """Per-example gradients of one block: ``g`` (B, K, P) in the product dtype."""

    g: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.g.numel() * self.g.element_size()


@dataclass
class GramFactors:
    """Per-token factors of one linear block: inputs ``a`` (B, T, d_in), output-gradients ``b`` (B, K, T, d_out).

    Padding tokens are zero in both, so they add nothing to any inner product.
    """

    a: torch.Tensor
    b: torch.Tensor

    @property
    def nbytes(self) -> int:
        return (self.a.numel() + self.b.numel()) * self.a.element_size()


Features = Materialized | GramFactors


def materialize(a: torch.Tensor, b: torch.Tensor) -> Materialized:
    """G_ik = Σ_t b_ikt a_itᵀ flattened: (B, K, d_out·d_in), one batched GEMM in the factors' dtype."""
    B, K, T, dout = b.shape
    din = a.shape[-1]
    # (B, K·d_out, T) @ (B, T, d_in): the per-example outer-product sums for all K outputs at once.
    g = torch.bmm(b.permute(0, 1, 3, 2).reshape(B, K * dout, T), a)
    return Materialized(g.reshape(B, K, dout * din))


PANEL = 4096  # parameters per float32 partial dot product; the panels are summed in float64


def paneled_gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x yᵀ in float64 from GEMMs over ≤ PANEL-wide slices of the shared axis in the inputs' dtype."""
    if x.dtype == torch.float64 or x.shape[1] <= PANEL:
        return (x @ y.T).double()
    out = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[1], PANEL):
        out += (x[:, s:s + PANEL] @ y[:, s:s + PANEL].T).double()
    return out


def contract(p: Features, q: Features, traced: bool, sign: bool = False) -> torch.Tensor:
    """⟨J_p, J_q⟩ for one block: float64 (Bp·K, Bq·K) with row i·K+k, or (Bp, Bq) summed over k if traced;
    on the features' device. GEMMs in the features' dtype, sums in float64 (see the module docstring).

    ``sign``: ⟨J_p, sign(J_q)⟩, the SignGD kernel's block (materialized features only: the sign of a
    per-example gradient Σ_t b a_tᵀ does not factor over tokens, so it has no Gram form).
    """
    if sign and not (isinstance(p, Materialized) and isinstance(q, Materialized)):
        raise TangentError("the SignGD kernel needs materialized per-example gradients")
    if isinstance(p, Materialized):
        gp, gq = p.g, (torch.sign(q.g) if sign else q.g)
        Bp, K, _ = gp.shape
        Bq = gq.shape[0]
        if traced:
            out = torch.zeros(Bp, Bq, dtype=torch.float64, device=gp.device)
            for k in range(K):
                out += paneled_gram(gp[:, k], gq[:, k])
            return out
        return paneled_gram(gp.reshape(Bp * K, -1), gq.reshape(Bq * K, -1))
    return _contract_gram(p, q, traced)


def _contract_gram(p: GramFactors, q: GramFactors, traced: bool) -> torch.Tensor:
    Bp, K, Tp, _ = p.b.shape
    Bq, _, Tq, _ = q.b.shape
    # Token-level input Gram (a_it · a_js), shared by every pair of outputs (k, l).
    ga = p.a.reshape(Bp * Tp, -1) @ q.a.reshape(Bq * Tq, -1).T
    if traced:
        out = torch.zeros(Bp, Bq, dtype=torch.float64, device=ga.device)
        for k in range(K):
            gb = p.b[:, k].reshape(Bp * Tp, -1) @ q.b[:, k].reshape(Bq * Tq, -1).T
            out += (ga * gb).reshape(Bp, Tp, Bq, Tq).sum(dim=(1, 3), dtype=torch.float64)
        return out
    out = torch.empty(Bp, K, Bq, K, dtype=torch.float64, device=ga.device)
    for k in range(K):
        bk = p.b[:, k].reshape(Bp * Tp, -1)
        for m in range(K):
            gb = bk @ q.b[:, m].reshape(Bq * Tq, -1).T
            out[:, k, :, m] = (ga * gb).reshape(Bp, Tp, Bq, Tq).sum(dim=(1, 3), dtype=torch.float64)
    return out.reshape(Bp * K, Bq * K)


@dataclass(frozen=True)
class BlockShape:
    """What the cost model needs to know about one block: widths after slicing, and whether it is a weight."""

    din: int  # 1 for biases and norm parameters (their per-example gradient is a d_out vector)
    dout: int
    gram_ok: bool  # only linear weights have the a ⊗ b token structure


def choose(shape: BlockShape, *, n_held: int, n_total: int, tokens: float, K: int, traced: bool,
           budget: int, forced: str = "auto") -> str:
    """Pick ``gram`` or ``materialize`` for one block from flop counts, within the memory budget.

    Materialized: build n·K·T·d_in·d_out, contract n_held·n_total·K²·d_in·d_out, hold n_held·K·d_in·d_out.
    Gram: contract n_held·n_total·T²·(d_in + K²·d_out), hold n_held·T·(d_in + K·d_out).
    Biases, norms, LoRA factors and narrow slices come out materialized; wide modules over few tokens too.
    """
    if forced not in CONTRACTIONS:
        raise TangentError(f"unknown contraction '{forced}': choose from {', '.join(CONTRACTIONS)}")
    if not shape.gram_ok or forced == "materialize":
        return "materialize"
    if forced == "gram":
        return forced
    kk = K if traced else K * K
    p = shape.din * shape.dout
    mat_flops = n_total * K * tokens * p + n_held * n_total * kk * p
    gram_flops = n_held * n_total * tokens * tokens * (shape.din + kk * shape.dout + kk)
    mat_bytes = 4 * n_held * K * p
    if mat_flops <= gram_flops and mat_bytes <= budget // 2:
        return "materialize"
    return "gram"


def feature_bytes(shape: BlockShape, how: str, tokens: float, K: int) -> float:
    """Estimated bytes one example's features of this block occupy (float32; twice that for float64 models)."""
    if how == "materialize":
        return 4.0 * K * shape.din * shape.dout
    return 4.0 * tokens * (shape.din + K * shape.dout)
