"""minGRU (Feng et al. 2024): z_t = sigmoid(W_z x_t + b_z), h~_t = g(W_h x_t + b_h),
h_t = (1 - z_t) h_{t-1} + z_t h~_t, with g positive (``log_scan.g``) so that states stay positive
and the log-space scan applies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bpttlab.cells.base import register
from bpttlab.cells.log_scan import g, log_g
from bpttlab.cells.min_rnn import MinRecurrence


@register("mingru")
class MinGRUCell(MinRecurrence):
    """minGRU layer; ``linear`` holds the rows of W_h then W_z (the authors' order). Fast path:
    log(1 - z) = -softplus(k), log z = -softplus(-k) for k = W_z x + b_z, then the log-space scan.
    Options and the residual block: see ``MinRecurrence``."""

    pre_activations = 2

    def coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        candidate, k = pre.chunk(2, dim=-1)
        z = torch.sigmoid(k)
        return 1 - z, z * g(candidate)

    def log_coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        candidate, k = pre.chunk(2, dim=-1)
        return -F.softplus(k), -F.softplus(-k) + log_g(candidate)
