"""The Elman RNN kernel: h_t = g(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), g = tanh or relu.

The step loops run in C (rnn_step.c: each step's GEMM by torch's BLAS, then the activation
forward, or the slope and the hand-over of dL/dy backward) for float32 on CPU where the C
library could be built (``bpttlab.cells.kernels.compiled``), else as torch operations
(``TorchSteps``).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch import Tensor

from bpttlab.cells.kernels import compiled
from bpttlab.cells.kernels.activation import tanh


@dataclass
class Buffers:
    """One run's time-major buffers; the backward's are None in the forward."""

    hs: Tensor  # (T + 1, B, H): h0, then each step's pre-activation, then its state
    relu: bool  # the activation: relu, else tanh
    weights: Tensor  # (H, H): W_hh
    grad_pre: Tensor | None = None  # (T, B, H): dL/d(pre-activation)
    grad_h: Tensor | None = None  # (B, H): dL/dh_t of the step being run back through
    grad_y: Tensor | None = None  # (B, T, H): dL/dy from above


class TorchSteps:
    """The step loops as torch operations (any dtype and device)."""

    def __init__(self, buffers: Buffers, sink: Tensor | None):
        self.buffers, self.sink = buffers, sink
        if buffers.grad_pre is None:
            return
        h = buffers.hs[1:]
        if buffers.relu:
            torch.gt(h, 0, out=buffers.grad_pre)  # each step's slope, times dL/dh in its step
        else:
            torch.addcmul(h.new_ones(()), h, h, value=-1, out=buffers.grad_pre)
        self.grad_y = buffers.grad_y.transpose(0, 1)

    def forward(self) -> None:
        """Every step: add W_hh h_t to row t + 1 of hs (W_ih x_t + b), then the activation."""
        h, weights_t = self.buffers.hs.unbind(0), self.buffers.weights.t()
        for t in range(len(h) - 1):
            h[t + 1].addmm_(h[t], weights_t)
            self.forward_step(t)

    def backward(self) -> None:
        """Every step back from grad_h = dL/dh_T; leaves dL/dh_0 in it."""
        b = self.buffers
        grad_pre_steps = b.grad_pre.unbind(0)
        for t in range(len(grad_pre_steps) - 1, -1, -1):
            self.backward_step(t)
            b.grad_h.addmm_(grad_pre_steps[t], b.weights)

    def forward_step(self, t: int) -> None:
        pre = self.buffers.hs[t + 1]
        if self.buffers.relu:
            pre.relu_()
        else:
            tanh(pre, out=pre)

    def backward_step(self, t: int) -> None:
        grad_h = self.buffers.grad_h
        if self.sink is not None:
            self.sink[t] = grad_h
        self.buffers.grad_pre[t].mul_(grad_h)
        if t > 0:
            grad_h.copy_(self.grad_y[t - 1])
        else:
            grad_h.zero_()


class CompiledBuffers(ctypes.Structure):
    """``rnn_buffers`` of rnn_step.c: the buffers' addresses (0 for none), sizes and sgemm."""

    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("hs", "grad_pre", "grad_h", "grad_y", "sink")),
        ("weights", ctypes.c_void_p),
        *((name, ctypes.c_long) for name in ("batch", "hidden", "steps", "relu")),
        ("gemm", ctypes.c_void_p),
    ]


def step_functions(buffers: Buffers, compiled_steps: bool | None, sink: Tensor | None = None):
    """The step loops compiled (rnn_step.c) or as torch operations, as ``compiled_steps`` says
    (None: compiled where they apply and are built)."""
    b = buffers
    T, B, H = b.hs.shape[0] - 1, b.hs.shape[1], b.hs.shape[2]
    tensors = (b.hs, b.grad_pre, b.grad_h, b.grad_y, sink, b.weights)
    steps = None
    if compiled_steps is not False:
        steps = compiled.steps("rnn_step", CompiledBuffers, tensors, B, H, T, b.relu)
        if compiled_steps and steps is None:
            raise RuntimeError("rnn_step.c was chosen but does not run here")
    return steps or TorchSteps(buffers, sink)


class ElmanRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, sink, compiled_steps):
        B, T, _ = x.shape
        H = h0.shape[1]
        inputs = x.transpose(0, 1).contiguous()
        hs = x.new_empty(T + 1, B, H)  # h0, then each step's input projection, then its state
        hs[0] = h0
        torch.addmm(b_ih + b_hh, inputs.view(T * B, -1), w_ih.t(), out=hs[1:].view(T * B, H))
        relu = nonlinearity == "relu"
        step_functions(Buffers(hs, relu, w_hh.contiguous()), compiled_steps).forward()
        ctx.relu, ctx.compiled_steps = relu, compiled_steps
        ctx.save_for_backward(inputs, hs, w_ih, w_hh)
        return hs[1:].transpose(0, 1), hs[T].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        inputs, hs, w_ih, w_hh = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        grad_y = grad_y.contiguous()
        grad_h = (grad_y[:, T - 1] + grad_final).contiguous()
        grad_pre = hs.new_empty(T, B, H)
        sink = hs.new_empty(T, B, H) if ctx.needs_input_grad[7] else None
        buffers = Buffers(hs, ctx.relu, w_hh.contiguous(), grad_pre, grad_h, grad_y)
        step_functions(buffers, ctx.compiled_steps, sink).backward()  # grad_h: dL/dh_0
        flat = grad_pre.view(T * B, H)
        grad_x = flat.mm(w_ih).view(T, B, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_w_ih = flat.t().mm(inputs.view(T * B, -1))
        grad_w_hh = flat.t().mm(hs[:-1].reshape(T * B, H))
        grad_bias = flat.sum(0)
        return grad_x, grad_h, grad_w_ih, grad_w_hh, grad_bias, grad_bias.clone(), None, sink, None


def rnn(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    nonlinearity: str = "tanh",
    sink: Tensor | None = None,
    compiled_steps: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the Elman RNN over x (B, T, input) from h0 (B, H): (outputs (B, T, H), final h).
    The gradient of ``sink`` (T, B, H), an input that the forward does not read, is the
    backward's dL/dh_t at every step (a tensor hook on it reads them). ``compiled_steps``: run
    the step loops compiled (True), as torch operations (False), or compiled where they apply
    and are built (None)."""
    args = (x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, sink, compiled_steps)
    return ElmanRecurrence.apply(*args)
