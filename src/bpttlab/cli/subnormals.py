"""Flush subnormal floats to zero on CPU.

Vanishing gradients shrink below float32's smallest normal number (~1.2e-38); x86 CPUs then
compute on subnormal numbers, many times slower than on normal ones. Flushing them to zero
(FTZ/DAZ) makes such values exactly 0 instead: a float32 gradient below ~1.2e-38 is 0 in
training and in the logged profiles (``trainer.precision=64-true`` keeps the tail down to
~1e-308). Runs flush by default; ``flush_subnormals=false`` keeps them.
"""

from __future__ import annotations

import torch


def flush_subnormals(enabled: bool) -> bool:
    """Set flushing on or off for torch's CPU kernels; return whether it is now in effect
    (False where the CPU cannot flush)."""
    supported = torch.set_flush_denormal(enabled)
    return enabled and supported


def subnormals_flushed() -> bool:
    """Whether the CPU kernels flush now, observed: half a subnormal is 0 only when flushing,
    over enough elements that every intra-op thread computes some of them."""
    tiny = torch.full((1 << 17,), 1e-39)
    return bool((tiny * 0.5 == 0).all())
