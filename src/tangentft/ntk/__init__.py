"""Empirical NTK and SignGD kernels (tangentft.ntk).

``entk(model, params, x1, x2=None, signgd=..., max_memory=...) -> Tensor (n1, n2, out, out)``: any
``nn.Module`` or function w.r.t. a dict of its parameters — the functional core the rest is built on;
``empirical_ntk(task_model, selection, x, x2=None, kind=..., contraction=..., max_memory=...) -> Kernel``;
``empirical_ntk_pair(task_model, selection, x_train, x_eval, ...) -> (K_train, K_cross)``;
``reference_ntk`` is the per-example autograd oracle used in tests and benchmarks.
Papers are cited by short name with their own equation/theorem numbers; see REFERENCES.md.
"""

from .api import empirical_ntk, empirical_ntk_pair
from .contraction import parse_memory
from .functional import entk
from .kernel import Kernel
from .reference import reference_ntk

__all__ = ["Kernel", "empirical_ntk", "empirical_ntk_pair", "entk", "parse_memory", "reference_ntk"]
