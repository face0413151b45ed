"""``tangentft.ntk.entk`` on plain torch modules and functions, against a torch.func jacrev + einsum oracle."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from tangentft.errors import TangentError
from tangentft.ntk import entk

TOL = 1e-6


def oracle(model, params, x1, x2=None, signgd=False):
    """Θ[i,j,k,l] = ⟨∂f_k(x1_i), (sign) ∂f_l(x2_j)⟩ from per-example Jacobians in float64 (the tutorial's route)."""
    names = list(params)
    detached = {n: p.detach() for n, p in params.items()}

    def f(p, x):
        out = functional_call(model, p, (x.unsqueeze(0),)) if isinstance(model, nn.Module) else model(p, x.unsqueeze(0))
        return out.reshape(1, -1)[0]

    def flat(x):
        j = vmap(jacrev(f), (None, 0))(detached, x)
        return torch.cat([j[n].reshape(j[n].shape[0], j[n].shape[1], -1) for n in names], -1).double()

    j1 = flat(x1)
    j2 = j1 if x2 is None else flat(x2)
    return torch.einsum("ikp,jlp->ijkl", j1, j2.sign() if signgd else j2).detach()


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


class Block(nn.Module):
    """A pre-norm transformer block (single-head attention + MLP) over (B, T, d), mean-pooled to 3 outputs."""

    def __init__(self, d=12):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.norm1(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / h.shape[-1] ** 0.5, dim=-1)
        x = x + self.o(att @ self.v(h))
        x = x + self.down(torch.tanh(self.up(self.norm2(x))))
        return self.head(x.mean(dim=1))


class LoRALinear(nn.Module):
    """y = W x + B A x with a frozen W: factors as Linear modules (hooked) or raw parameters (torch.func)."""

    def __init__(self, d_in, d_out, r, raw=False):
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.raw = raw
        if raw:
            self.A, self.B = nn.Parameter(torch.randn(r, d_in) * 0.3), nn.Parameter(torch.randn(d_out, r) * 0.3)
        else:
            self.lora_A, self.lora_B = nn.Linear(d_in, r, bias=False), nn.Linear(r, d_out, bias=False)
            nn.init.normal_(self.lora_B.weight, std=0.3)

    def forward(self, x):
        return self.base(x) + (x @ self.A.T @ self.B.T if self.raw else self.lora_B(self.lora_A(x)))


def lora_net(raw=False):
    return nn.Sequential(LoRALinear(6, 10, 3, raw), nn.GELU(), LoRALinear(10, 2, 2, raw))


def mlp():
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 4))


def cases():
    torch.manual_seed(0)
    net = mlp()
    yield "mlp", net, dict(net.named_parameters()), torch.randn(7, 5), torch.randn(4, 5)
    blk = Block()
    yield "block", blk, dict(blk.named_parameters()), torch.randn(5, 6, 12), torch.randn(3, 6, 12)
    for raw in (False, True):
        lo = lora_net(raw)
        factors = {n: p for n, p in lo.named_parameters() if "A" in n or "B" in n}
        yield f"lora-raw={raw}", lo, factors, torch.randn(6, 6), torch.randn(3, 6)


@pytest.mark.parametrize("signgd", [False, True])
def test_matches_the_torch_func_oracle(signgd):
    for name, model, params, x1, x2 in cases():
        for budget in ("1GB", "2KB"):  # 2KB: one example per pass and Gram contraction for the linear weights
            for b in (None, x2):
                k = entk(model, params, x1, b, signgd=signgd, max_memory=budget)
                ref = oracle(model, params, x1, b, signgd=signgd)
                assert k.dtype == torch.float64 and k.shape == ref.shape, name
                assert rel(k, ref) < TOL, (name, budget, b is None)


def test_symmetric_psd_and_layout():
    torch.manual_seed(1)
    blk = Block()
    x = torch.randn(4, 5, 12)
    k = entk(blk, dict(blk.named_parameters()), x)
    assert k.shape == (4, 4, 3, 3)
    flat = k.permute(0, 2, 1, 3).reshape(12, 12)
    assert torch.equal(flat, flat.T) and torch.linalg.eigvalsh(flat)[0] > -1e-9 * flat.abs().max()
    # ∂f_k/∂W_head = e_k ⊗ pooled(x): the head's kernel is ⟨pooled_i, pooled_j⟩ δ_kl.
    one = entk(blk, {"head.weight": blk.head.weight}, x[:2], x[2:])
    assert float(one[:, :, 0, 1].abs().max()) == 0 and torch.allclose(one[:, :, 0, 0], one[:, :, 2, 2])


def test_plain_function_and_dict_inputs():
    torch.manual_seed(2)
    w1, w2 = torch.randn(4, 8), torch.randn(8, 3)

    def f(p, x):
        return torch.tanh(x @ p["w1"]) @ p["w2"]

    x1, x2 = torch.randn(5, 4), torch.randn(2, 4)
    params = {"w1": w1, "w2": w2}
    assert rel(entk(f, params, x1, x2), oracle(f, params, x1, x2)) < TOL
    assert rel(entk(f, params, x1, signgd=True), oracle(f, params, x1, signgd=True)) < TOL

    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, inputs, scale):
            return self.lin(inputs) * scale[:, None]

    m = Keyed()
    batch = {"inputs": x1, "scale": torch.rand(5) + 0.5}
    k = entk(m, dict(m.named_parameters()), batch)
    # f_k = s·(W x + b)_k: ∂f_k/∂W = s e_k xᵀ, ∂f_k/∂b = s e_k, so Θ_kl = s_i s_j (x_i·x_j + 1) δ_kl.
    s_ = batch["scale"].double()
    direct = s_[:, None] * s_[None, :] * (x1.double() @ x1.double().T + 1)
    assert rel(k[:, :, 0, 0], direct) < TOL and rel(k[:, :, 1, 1], direct) < TOL
    assert float(k[:, :, 0, 1].abs().max()) == 0


def test_float32_products_against_a_float64_model():
    """The kernel of a float32 model (float32 GEMMs, float64 sums) stays within 1e-5 of the float64 truth."""
    torch.manual_seed(3)
    blk = Block(d=48)
    x = torch.randn(6, 9, 48)
    k = entk(blk, dict(blk.named_parameters()), x)
    blk64 = copy.deepcopy(blk).double()
    truth = oracle(blk64, dict(blk64.named_parameters()), x.double())
    assert rel(k, truth) < 1e-5


def test_train_mode_restored_and_bad_input():
    net = mlp().train()
    entk(net, dict(net.named_parameters()), torch.randn(3, 5))
    assert net.training and all(p.requires_grad for p in net.parameters())
    with pytest.raises(TangentError, match="not a parameter"):
        entk(net, {"w": torch.zeros(3)}, torch.randn(3, 5))
    with pytest.raises(TangentError, match="empty"):
        entk(net, {}, torch.randn(3, 5))
    with pytest.raises(TangentError, match="x2"):
        entk(net, dict(net.named_parameters()), torch.randn(3, 5), torch.randn(0, 5))
    with pytest.raises(TangentError, match="memory"):
        entk(net, dict(net.named_parameters()), torch.randn(3, 5), max_memory="lots")
