"""tanh for the step loops, computed as 2 sigmoid(2x) - 1: torch's CPU tanh on a (64, 128)
tensor takes about five times as long as its sigmoid, so this is faster though it launches
four cheap ops instead of one."""

from __future__ import annotations

import torch
from torch import Tensor


def tanh(x: Tensor, out: Tensor) -> Tensor:
    """Write tanh(x) into ``out`` (which may be ``x``) and return it."""
    return torch.mul(x, 2, out=out).sigmoid_().mul_(2).sub_(1)
