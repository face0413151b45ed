"""The exact linearized model f̄(x) = f(x; θ0) + J(x; θ0)(θ̄ − θ0), trained like any other method.

Linearization paper, eq. (2): near θ0 fine-tuning behaves like training f̄, whose kernel is the eNTK
K = J Jᵀ. Here f̄ is computed exactly — no finite differences — by one forward-mode product
``torch.func.jvp`` through ``torch.func.functional_call`` of the task model at θ0 in the direction
θ̄ − θ0 (eager attention; forward-mode AD does not go through every fused kernel). The gradient w.r.t. θ̄
flows back through that JVP, so the trained quantity is θ̄ with f̄ exactly linear in it.

θ̄ ranges over the same selections as the other methods: module tensors (``q,v@0,15``; default every
parameter), row/column slices of them, or a LoRA parameterization (``lora(r=8):q,v@all``), in which case
f̄ is linearized in the adapter's factors at their init (B = 0, so J_A = 0 and only B moves: the LoRA-NTK
paper's B-only kernel) — a different model from the next one.

``factor_rank = r`` trains the LoRA-NTK paper's model instead (§2, LoRA in the NTK regime): f̄ stays the
linearization in the weights, f̄(x) = f(x; W0) + ⟨∇_W f(x; W0), ΔW⟩, and each selected weight matrix's
update is the rank-r product ΔW = B·A (no α/r scaling: the paper's ΔW = UVᵀ). f̄ is then exactly linear
in B·A and bilinear in the factors. Weight decay λ on the factors adds (λ/2)(‖A‖² + ‖B‖²), whose minimum
over the factorizations of ΔW is λ‖ΔW‖_* — the nuclear-norm regularized problem the paper's Theorems 3.1
and 4.1 are about (exactly so with ``optimizer='sgd'``, whose weight decay is the L2 term's gradient).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jvp

from ..errors import TangentError
from ..io import save_safetensors, write_json
from ..models.selection import ParamBlock, ParamSelection, select
from ..models.spec import LoraOptions, Spec
from .base import FineTuneMethod, MethodConfig, register_method
from .full import all_parameters_selection, freeze_all_but, selection_masks


def linearized_outputs(
    net: nn.Module,
    theta0: dict[str, torch.Tensor],
    delta: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x; θ0), J(x; θ0)·δ) for a batch, by ``torch.func.jvp``; ``theta0``/``delta`` keyed by parameter name.

    Parameters of ``net`` not in ``theta0`` keep their current values. Differentiable w.r.t. ``delta``.
    """

    def f(params):
        return functional_call(net, params, (input_ids, attention_mask), strict=False)

    names = list(theta0)
    primals = {n: theta0[n].detach() for n in names}
    tangents = {n: delta[n].to(primals[n].dtype) for n in names}
    return jvp(f, (primals,), (tangents,))


def _key(name: str) -> str:
    return name.replace(".", "__")


class LinearizedModel(nn.Module):
    """f̄ over a frozen network ``base``: trainable θ̄ (initialised at θ0), forward = f(θ0) + J(θ0)(θ̄ − θ0)."""

    def __init__(self, base: nn.Module, names: list[str], masks: dict[str, torch.Tensor | None]):
        super().__init__()
        self.base = base
        self.names = list(names)
        named = dict(base.named_parameters())
        self.theta_bar = nn.ParameterDict({_key(n): nn.Parameter(named[n].detach().clone()) for n in self.names})
        self.theta0 = {n: named[n] for n in self.names}
        self._masks = {n: m for n, m in masks.items() if m is not None}

    def delta(self) -> dict[str, torch.Tensor]:
        """θ̄ − θ0 per tensor, zero outside a sliced selection."""
        out = {}
        for n in self.names:
            d = self.theta_bar[_key(n)] - self.theta0[n].detach()
            out[n] = d * self._masks[n].to(d.dtype) if n in self._masks else d
        return out

    def theta(self) -> dict[str, torch.Tensor]:
        """The effective θ̄ = θ0 + (θ̄ − θ0) restricted to the selection, keyed by base parameter name."""
        return {n: self.theta0[n].detach() + d for n, d in self.delta().items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        f0, jv = linearized_outputs(self.base, self.theta0, self.delta(), input_ids, attention_mask)
        return f0 + jv


def _block_axes(block: ParamBlock, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices along the stored tensor's axis 0 and axis 1 that ``block`` selects (Conv1D stores (in, out))."""
    out_axis = 1 if block.transposed else 0
    idx = [torch.arange(param.shape[0]), torch.arange(param.shape[1])]
    if block.out_idx is not None:
        idx[out_axis] = torch.tensor(block.out_idx)
    if block.in_idx is not None:
        idx[1 - out_axis] = torch.tensor(block.in_idx)
    return idx[0], idx[1]


class FactoredLinearizedModel(nn.Module):
    """f̄ over a frozen network ``base`` with a rank-r update ΔW = B·A per selected weight block (LoRA-NTK paper
    §2): forward = f(θ0) + J(θ0)·vec(B·A). B·A has the block's stored shape (rows × cols of the parameter
    tensor; a transposed Conv1D block thus factors ΔWᵀ, of the same rank). A (r × cols) starts as PEFT's
    LoRA init, uniform in ±1/√cols drawn from ``seed``; B (rows × r) starts at 0, so f̄ = f(θ0) at step 0.
    """

    def __init__(self, base: nn.Module, blocks: list[ParamBlock], rank: int, seed: int):
        super().__init__()
        self.base = base
        named = dict(base.named_parameters(remove_duplicate=False))
        self.theta0 = {b.name: named[b.name] for b in blocks}
        self.names = list(self.theta0)
        per_param = Counter(b.name for b in blocks)
        gen = torch.Generator().manual_seed(seed)
        self.factor_A, self.factor_B = nn.ParameterDict(), nn.ParameterDict()
        self.labels: list[str] = []
        self._where: dict[str, tuple[str, torch.Tensor | None, torch.Tensor | None]] = {}
        for b in blocks:
            param = named[b.name]
            label = b.name if per_param[b.name] == 1 else f"{b.name}[{b.role or b.group}]"
            rows, cols = _block_axes(b, param)
            bound = 1.0 / math.sqrt(len(cols))
            a = (torch.rand(rank, len(cols), generator=gen, dtype=torch.float64) * 2 - 1) * bound
            self.factor_A[_key(label)] = nn.Parameter(a.to(param.dtype))
            self.factor_B[_key(label)] = nn.Parameter(torch.zeros(len(rows), rank, dtype=param.dtype))
            whole = b.out_idx is None and b.in_idx is None
            self._where[label] = (b.name, None if whole else rows, None if whole else cols)
            self.labels.append(label)

    def factors(self) -> dict[str, nn.Parameter]:
        """``<label>.lora_A`` / ``<label>.lora_B`` per block; the label is the parameter name (plus the role
        when one tensor holds several blocks, as GPT-2's fused q,k,v)."""
        out = {}
        for label in self.labels:
            out[f"{label}.lora_A"] = self.factor_A[_key(label)]
            out[f"{label}.lora_B"] = self.factor_B[_key(label)]
        return out

    def delta(self) -> dict[str, torch.Tensor]:
        """ΔW per parameter: B·A, scattered into the block's rows and columns when the block is a slice."""
        out: dict[str, torch.Tensor] = {}
        for label in self.labels:
            name, rows, cols = self._where[label]
            ba = self.factor_B[_key(label)] @ self.factor_A[_key(label)]
            if rows is not None:
                zero = torch.zeros(self.theta0[name].shape, dtype=ba.dtype, device=ba.device)
                ba = zero.index_put((rows[:, None].to(ba.device), cols[None, :].to(ba.device)), ba)
            out[name] = out[name] + ba if name in out else ba
        return out

    def theta(self) -> dict[str, torch.Tensor]:
        """The effective weights θ0 + B·A, keyed by base parameter name."""
        return {n: self.theta0[n].detach() + d.to(self.theta0[n].dtype) for n, d in self.delta().items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        f0, jv = linearized_outputs(self.base, self.theta0, self.delta(), input_ids, attention_mask)
        return f0 + jv


def linear_selection(task_model: nn.Module, params: Spec | None, lora_r, lora_alpha, seed: int) -> ParamSelection:
    """Resolve the selection of a linearized run: every parameter, module tensors, or a LoRA parameterization."""
    if params is None:
        if lora_r is not None or lora_alpha is not None:
            raise TangentError("lora_r/lora_alpha need a LoRA selection, e.g. params 'lora:q,v@all'")
        return all_parameters_selection(task_model)
    if params.lora_terms:
        from .lora import lora_spec

        return select(task_model, lora_spec(task_model, params, lora_r, lora_alpha), seed=seed)
    if lora_r is not None or lora_alpha is not None:
        raise TangentError(f"lora_r/lora_alpha need a LoRA selection; params '{params}' has no lora term")
    return select(task_model, params, seed=seed)


@dataclass
class LinearizedConfig(MethodConfig):
    """Exact linearized training; ``params`` unset linearizes in every parameter."""

    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank when params is a lora(...) selection."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha when params is a lora(...) selection."})
    factor_rank: int | None = field(default=None, metadata={"help": (
        "Train ΔW = B·A of this rank for each selected weight matrix inside f̄ (the LoRA-NTK paper's model, §2); "
        "weight decay on the factors is then the nuclear-norm penalty. Selections of weights only, e.g. "
        "'q,v@all.weight'.")})

    def __post_init__(self):
        super().__post_init__()
        LoraOptions().overridden(self.lora_r, self.lora_alpha)  # the options' own checks, before any loading
        if self.factor_rank is not None and self.factor_rank <= 0:
            raise TangentError(f"factor_rank must be positive, got factor_rank={self.factor_rank}")


@register_method
class LinearizedMethod(FineTuneMethod):
    """Train f̄ (linearization paper, eq. 2) exactly: θ̄ is trainable, the network stays frozen at θ0."""

    name = "linearized"
    dtypes = ("float32", "bfloat16")
    dtypes_why = "its torch.func jvp mixes the fp32 trained tensors with float16 weights, which CPU autocast leaves apart"
    config_class = LinearizedConfig
    refresh_why_not = ("it trains f̄, linear in θ̄: its kernel is the one at θ0 at every step (the prediction before the "
                       "run already replays all of it, exactly for SGD), and its outputs at θ_t are f̄'s, which no "
                       "network at θ_t computes")

    @property
    def selected(self) -> ParamSelection:
        """The selection θ̄ ranges over. With ``factor_rank`` the run's kernel is not this selection's eNTK (the
        factors move ΔW only along B·A), so the kernel stopping rule and predictions, which read it, refuse."""
        if self.config.factor_rank is not None:
            raise TangentError(f"method '{self.name}' with factor_rank trains B·A factors: the kernel stopping rule "
                               "and predictions (the selection's eNTK) do not describe it")
        return self._selected

    def prepare(self, task_model: nn.Module) -> nn.Module:
        cfg = self.config
        if cfg.factor_rank is not None:
            return self._prepare_factored(task_model)
        self._selected = linear_selection(task_model, cfg.params, cfg.lora_r, cfg.lora_alpha, cfg.seed)
        masks = selection_masks(task_model, self._selected)
        freeze_all_but(task_model, set())
        return LinearizedModel(task_model, list(masks), masks)

    def _prepare_factored(self, task_model: nn.Module) -> nn.Module:
        cfg = self.config
        hint = "select weight matrices only, e.g. params 'q,v@all.weight'"
        if cfg.params is None:
            raise TangentError(f"factor_rank needs params naming the weight matrices to factor: {hint}")
        if cfg.params.lora_terms:
            raise TangentError(f"factor_rank factors the weights themselves; params '{cfg.params}' is a lora(...) "
                               "selection (that one linearizes in PEFT's factors): drop one of the two")
        self._selected = linear_selection(task_model, cfg.params, cfg.lora_r, cfg.lora_alpha, cfg.seed)
        named = dict(task_model.named_parameters(remove_duplicate=False))
        vectors = sorted({b.name for b in self._selected.blocks if b.part != "weight" or named[b.name].dim() != 2})
        if vectors:
            raise TangentError(f"factor_rank={cfg.factor_rank} factors weight matrices, but params '{cfg.params}' "
                               f"also selects {', '.join(vectors[:3])}{' …' if len(vectors) > 3 else ''}: {hint}")
        freeze_all_but(task_model, set())
        return FactoredLinearizedModel(task_model, self._selected.blocks, cfg.factor_rank, cfg.seed)

    def trainable_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """θ̄ keyed by the network's parameter names (so θ0, checkpoints and metrics line up with ``full``);
        with ``factor_rank``, the factors ``<parameter>.lora_A`` / ``.lora_B``."""
        if isinstance(model, FactoredLinearizedModel):
            return model.factors()
        return {n: model.theta_bar[_key(n)] for n in model.names}

    def nonlinear(self, model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The network and the effective weights θ0 + (θ̄ − θ0) (θ0 + B·A with ``factor_rank``)."""
        return model.base, model.theta()

    def save(self, model: nn.Module, out_dir: Path) -> None:
        """``trained.safetensors``: the effective θ̄ by parameter name (evaluate f̄ with it, not f); with
        ``factor_rank`` also ``factors.safetensors``, the trained A and B."""
        out_dir = Path(out_dir)
        tensors = {n: t.detach() for n, t in model.theta().items()}
        meta = {"method": self.name, "model": "linearized at theta0"}
        if isinstance(model, FactoredLinearizedModel):
            meta["factor_rank"] = str(self.config.factor_rank)
            save_safetensors(out_dir / "factors.safetensors", {n: p.detach() for n, p in model.factors().items()}, meta)
        save_safetensors(out_dir / "trained.safetensors", tensors, meta)
        write_json(out_dir / "selection.json", self._selected.to_json())
