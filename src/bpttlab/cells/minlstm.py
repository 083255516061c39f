"""minLSTM (Feng et al. 2024): f_t = sigmoid(W_f x_t + b_f), i_t = sigmoid(W_i x_t + b_i),
normalised f'_t = f_t / (f_t + i_t), i'_t = i_t / (f_t + i_t) (the paper's time-independent
form), h~_t = g(W_h x_t + b_h), h_t = f'_t h_{t-1} + i'_t h~_t."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bpttlab import checks
from bpttlab.cells.base import register
from bpttlab.cells.log_scan import g, log_g
from bpttlab.cells.min_rnn import MinRecurrence


@register("minlstm")
class MinLSTMCell(MinRecurrence):
    """minLSTM layer; ``linear`` holds the rows of W_h, W_f, W_i (the authors' order). Fast path:
    with d = softplus(-k_f) - softplus(-k_i) = log(i / f), log f' = -softplus(d) and
    log i' = -softplus(-d), then the log-space scan. ``forget_bias`` is added to b_f at init
    (the authors' ``forget_bias_init_scale``). Options and the residual block: see
    ``MinRecurrence``."""

    pre_activations = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        t_max: int | None = None,
        expansion: float = 1.0,
        block: bool = True,
        ff_mult: int = 4,
        forget_bias: float = 0.0,
    ):
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, int | float):
            raise checks.ConfigError("forget_bias", forget_bias, "a number")
        super().__init__(input_size, hidden_size, t_max, expansion, block, ff_mult)
        with torch.no_grad():
            self.linear.bias[self.state_size : 2 * self.state_size] += forget_bias

    def coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        candidate, k_f, k_i = pre.chunk(3, dim=-1)
        f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
        return f / (f + i), i / (f + i) * g(candidate)

    def log_coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        candidate, k_f, k_i = pre.chunk(3, dim=-1)
        d = F.softplus(-k_f) - F.softplus(-k_i)
        return -F.softplus(d), -F.softplus(-d) + log_g(candidate)
