"""What a run records: task metrics, distance from θ0, and how far f has left its linearization.

The linearization columns are the linearization paper's Table 1, measured on a fixed probe set X of
training examples: ``lin_gap`` = ‖f_θt(X) − f̄_θt(X)‖₂ with f̄_θt = f_θ0 + J_θ0(θt − θ0) (the
linearization at θ0 evaluated at θt, computed exactly by the JVP of ``methods.linearized``),
``lin_kl`` = mean_x KL(softmax f_θt(x) ‖ softmax f̄_θt(x)), and ``output_shift`` = ‖f_θt(X) − f_θ0(X)‖₂.
"""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn
from torch.func import functional_call

from ..methods.base import FineTuneMethod
from ..methods.linearized import linearized_outputs


def theta_dist(params: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """‖θt − θ0‖₂ over the trained tensors, accumulated in float64."""
    total = sum(float(((p.detach().double() - reference[n].double()) ** 2).sum()) for n, p in params.items())
    return float(total) ** 0.5


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024**3 if sys.platform == "darwin" else 1024**2)


class LinearizationProbe:
    """Measures f_θt against f̄_θt and f_θ0 on a fixed tokenized probe batch.

    Build it while the model is still at θ0: f_θ0(X) is computed once here.
    """

    def __init__(self, method: FineTuneMethod, model: nn.Module, batch: dict[str, torch.Tensor],
                 reference: dict[str, torch.Tensor]):
        self.method = method
        self.batch = batch
        self.reference = reference
        net, _ = method.nonlinear(model)
        with torch.no_grad():
            self.f0 = functional_call(net, reference, (batch["input_ids"], batch["attention_mask"]), strict=False)

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, float | None]:
        """``lin_gap``, ``lin_kl`` (None when K = 1) and ``output_shift`` at the model's current θt."""
        net, theta = self.method.nonlinear(model)
        ids, mask = self.batch["input_ids"], self.batch["attention_mask"]
        f_t = functional_call(net, theta, (ids, mask), strict=False).double()
        delta = {n: theta[n].detach() - self.reference[n] for n in self.reference}
        f0, jv = linearized_outputs(net, self.reference, delta, ids, mask)
        f_bar = (f0 + jv).double()
        kl = None
        if f_t.shape[-1] > 1:
            logp, logq = torch.log_softmax(f_t, -1), torch.log_softmax(f_bar, -1)
            kl = float((logp.exp() * (logp - logq)).sum(-1).mean())
        return {
            "lin_gap": float(torch.linalg.norm(f_t - f_bar)),
            "lin_kl": kl,
            "output_shift": float(torch.linalg.norm(f_t - self.f0.double())),
        }
