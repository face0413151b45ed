"""The Kernel object: a float64 eNTK matrix with its per-group blocks and provenance; save/load and checks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import TangentError
from ..io import load_safetensors, save_safetensors, write_json
from ..schemas import KernelMeta, read_json

KINDS = ("full", "traced")
MATRIX_FILE = "kernel.safetensors"
META_FILE = "kernel.json"


@dataclass
class Kernel:
    """K(X, X') = J_S(X) J_S(X')ᵀ (linearization paper, eq. 3) and its per-group parts S_g (§5, eq. 19).

    With ``signgd`` it is instead the SignGD kernel ⟨∇f(x), sign ∇f(x')⟩ of Adam-like training (Malladi et al.,
    A Kernel-Based View of Language Model Fine-Tuning, §4.2), which is not symmetric.

    ``matrix`` is float64 whatever ``model_dtype`` the model ran in (features and products are accumulated
    in ``accumulation_dtype``); kind ``full`` has shape (n·K, n'·K) with row index i·K + k (example-major),
    kind ``traced`` (n, n') = Σ_k of the per-output diagonal blocks. ``blocks`` maps each parameter group to
    its kernel S_g (same shape); Σ_g S_g = matrix. ``sample_ids`` index the rows, ``sample_ids2`` the columns.
    """

    matrix: np.ndarray
    blocks: dict[str, np.ndarray]
    K: int
    kind: str
    sample_ids: list[str]
    sample_ids2: list[str]
    selection: dict
    state_fingerprint: str  # models.fingerprint.state_fingerprint of the task model the kernel was taken at
    data_fingerprint: str
    data_fingerprint2: str
    timings: dict = field(default_factory=dict)
    signgd: bool = False  # ⟨∇f(row), sign ∇f(column)⟩ (Malladi et al. 2023), asymmetric; else the eNTK
    model_dtype: str = "float32"
    accumulation_dtype: str = "float64"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TangentError(f"unknown kernel kind '{self.kind}': choose full or traced")
        m = self.K if self.kind == "full" else 1
        want = (len(self.sample_ids) * m, len(self.sample_ids2) * m)
        if self.matrix.shape != want:
            raise TangentError(f"kernel matrix shape {self.matrix.shape} does not match {want} (kind {self.kind})")

    @property
    def symmetric(self) -> bool:
        """True for a train×train eNTK (same samples on both sides; a SignGD kernel never is)."""
        return not self.signgd and self.sample_ids == self.sample_ids2 and self.data_fingerprint == self.data_fingerprint2

    def traced(self) -> Kernel:
        """The traced kernel Σ_k K[(i,k),(j,k)]: the (n, n') kernel of the summed outputs' inner products."""
        if self.kind == "traced":
            return self

        def tr(a: np.ndarray) -> np.ndarray:
            n, n2 = len(self.sample_ids), len(self.sample_ids2)
            return np.einsum("ikjk->ij", a.reshape(n, self.K, n2, self.K))

        return replace(self, matrix=tr(self.matrix), blocks={g: tr(b) for g, b in self.blocks.items()}, kind="traced")

    def eigvalsh(self) -> np.ndarray:
        """Eigenvalues (ascending) of a symmetric kernel."""
        if not self.symmetric:
            raise TangentError("eigenvalues need a symmetric (train×train) kernel, not a cross-kernel")
        return np.linalg.eigvalsh(self.matrix)

    def check(self, warn: bool = True) -> dict:
        """Symmetry error, λmax, λmin and condition number of a symmetric kernel; warns when PSD fails or
        the kernel is ill-conditioned (κ > 1e12), so downstream solves know to regularize."""
        if not self.symmetric:
            return {}
        return spectrum_check(self.matrix, warn)

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``kernel.safetensors`` (matrix + blocks) and ``kernel.json`` (metadata), each atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        names = list(self.blocks)
        tensors = {"matrix": torch.from_numpy(np.ascontiguousarray(self.matrix))}
        tensors.update({f"block.{i}": torch.from_numpy(np.ascontiguousarray(self.blocks[g])) for i, g in enumerate(names)})
        save_safetensors(d / MATRIX_FILE, tensors, {"format": "tangentft-kernel"})
        meta = {
            "format": "tangentft-kernel/1",
            "K": self.K,
            "kind": self.kind,
            "groups": names,
            "sample_ids": self.sample_ids,
            "sample_ids2": self.sample_ids2,
            "selection": self.selection,
            "state_fingerprint": self.state_fingerprint,
            "data_fingerprint": self.data_fingerprint,
            "data_fingerprint2": self.data_fingerprint2,
            "model_dtype": self.model_dtype,
            "accumulation_dtype": self.accumulation_dtype,
            "timings": self.timings,
            "signgd": self.signgd,
        }
        write_json(d / META_FILE, meta)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Kernel:
        """Read a kernel written by :meth:`save`."""
        d = Path(directory)
        if not (d / META_FILE).is_file() or not (d / MATRIX_FILE).is_file():
            raise TangentError(f"{d}: not a saved kernel (needs {MATRIX_FILE} and {META_FILE})")
        meta = read_json(d / META_FILE, KernelMeta)
        tensors = load_safetensors(d / MATRIX_FILE)
        wanted = ["matrix"] + [f"block.{i}" for i in range(len(meta.groups))]
        absent = [k for k in wanted if k not in tensors]
        if absent:
            raise TangentError(f"{d / MATRIX_FILE}: tensor '{absent[0]}' is missing ({META_FILE} lists {len(meta.groups)} groups)")
        blocks = {g: tensors[f"block.{i}"].numpy() for i, g in enumerate(meta.groups)}
        state = meta.state_fingerprint or meta.model_fingerprint  # older kernels wrote model_fingerprint
        if state is None:
            raise TangentError(f"{d / META_FILE}: expected a saved kernel's kernel.json; field 'state_fingerprint' is missing")
        return cls(tensors["matrix"].numpy(), blocks, meta.K, meta.kind, meta.sample_ids, meta.sample_ids2,
                   meta.selection, state, meta.data_fingerprint, meta.data_fingerprint2,
                   meta.timings, meta.signgd, meta.model_dtype, meta.accumulation_dtype)


def spectrum_check(m: np.ndarray, warn: bool = True) -> dict:
    """Symmetry error, λmax, λmin, trace and condition number of a symmetric kernel matrix; warns when it
    is not symmetric or not PSD, or is ill-conditioned (κ > 1e12), so downstream solves know to regularize."""
    scale = float(np.abs(m).max()) or 1.0
    asym = float(np.abs(m - m.T).max()) / scale
    ev = np.linalg.eigvalsh(m)
    lmax, lmin = float(ev[-1]), float(ev[0])
    cond = lmax / lmin if lmin > 0 else float("inf")
    info = {"symmetry_rel_err": asym, "lambda_max": lmax, "lambda_min": lmin, "trace": float(np.trace(m)),
            "condition": cond}
    if warn:
        if asym > 1e-8:
            warnings.warn(f"kernel not symmetric: relative asymmetry {asym:.2e}", stacklevel=3)
        if lmin < -1e-6 * max(lmax, 0.0):
            warnings.warn(f"kernel not PSD: λmin = {lmin:.3e} vs λmax = {lmax:.3e}", stacklevel=3)
        elif cond > 1e12:
            warnings.warn(f"kernel ill-conditioned (κ = {cond:.2e}); regularize before solving", stacklevel=3)
    return info


def sample_ids(examples) -> list[str]:
    """Row labels for a kernel: each example's uid, or its position when it has none."""
    return [e.uid or f"#{i}" for i, e in enumerate(examples)]
