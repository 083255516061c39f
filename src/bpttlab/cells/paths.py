"""Which implementation runs a recurrent layer: one decision, made here and nowhere else.

The rnn, gru and lstm cells can run the same equations five ways: bpttlab's kernel with its step
loops compiled in C or as torch operations, torch's fused module with its native kernel or with
oneDNN's (CPU) or cuDNN (GPU), and the step loop that keeps every state in the graph. The other
cells have one fast path of their own (a parallel scan, a fused loop) and the step loop.

What a layer is asked for (``Tracing``) matters as much as where it runs: a probe reads the
gradient flowing into every state, which bpttlab's kernels hand over from their backward
(sinks) and a step loop from its graph; per-timestep clipping changes those gradients, which
only the step loop can do. ``choose_path`` takes all of it and returns the ``LayerPath``;
RecurrentNet asks it for every layer at every call, runs exactly that path and records it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch


class LayerPath(str, Enum):
    """One implementation of a layer (its value is what metrics.json records)."""

    KERNEL = "kernel"  # bpttlab's kernel, its step loops compiled in C
    KERNEL_TORCH_STEPS = "kernel-torch-steps"  # bpttlab's kernel, its step loops as torch ops
    TORCH = "torch"  # torch's fused module: its native CPU kernel, or cuDNN on a GPU
    ONEDNN = "onednn"  # torch's fused module with oneDNN's CPU kernel
    FAST = "fast"  # the fast path of a cell without a choice of kernel
    STEP_LOOP = "step-loop"  # the unrolled step loop: every state a tensor of the graph

    @property
    def is_kernel(self) -> bool:
        return self in (LayerPath.KERNEL, LayerPath.KERNEL_TORCH_STEPS)


class Tracing(str, Enum):
    """What a call needs of the states' gradients (the keys of ``RecurrentNet.paths``)."""

    NONE = "untraced"  # nothing: the outputs and final state
    READ = "probed"  # to read them (GradientFlow probes): a kernel's sinks will do
    WRITE = "hooked"  # to change them (per-timestep clipping), or every state: the step loop


def choose_path(
    kernel: str | None,
    onednn: bool,
    device: str,
    dtype: torch.dtype,
    tracing: Tracing,
    steps_compiled: Callable[[], bool],
) -> LayerPath:
    """The path a layer runs.

    Args:
        kernel: the cell's kernel setting, "bpttlab" or "torch"; None for a cell without one.
        onednn: the cell's oneDNN setting (with kernel "torch").
        device: the type of the device the layer runs on ("cpu", "cuda", ...).
        dtype: the dtype it runs in.
        tracing: what the call needs of the states' gradients.
        steps_compiled: whether the cell's C step loops are built (called only where a float32
            kernel on CPU could use them: the first call builds them).
    """
    if tracing is Tracing.WRITE:
        return LayerPath.STEP_LOOP
    if kernel is None:
        return LayerPath.STEP_LOOP if tracing is Tracing.READ else LayerPath.FAST
    if device != "cpu":  # bpttlab's kernels are CPU kernels; a GPU runs cuDNN
        return LayerPath.STEP_LOOP if tracing is Tracing.READ else LayerPath.TORCH
    # oneDNN runs float32 only (torch runs its native kernel for other dtypes)
    fused = LayerPath.ONEDNN if onednn and dtype == torch.float32 else LayerPath.TORCH
    if kernel == "torch" and tracing is Tracing.NONE:
        return fused
    if kernel == "torch" and fused is LayerPath.TORCH:  # the step loop repeats it bitwise
        return LayerPath.STEP_LOOP
    compiled = dtype == torch.float32 and steps_compiled()
    return LayerPath.KERNEL if compiled else LayerPath.KERNEL_TORCH_STEPS
