"""The Elman RNN kernel: h_t = g(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), g = tanh or relu."""

from __future__ import annotations

import torch
from torch import Tensor

from bpttlab.kernels.activation import tanh


class ElmanRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, sink=None):
        B, T, _ = x.shape
        H = h0.shape[1]
        inputs = x.transpose(0, 1).contiguous()
        hs = x.new_empty(T + 1, B, H)  # h0, then each step's input projection, then its state
        hs[0] = h0
        torch.addmm(b_ih + b_hh, inputs.view(T * B, -1), w_ih.t(), out=hs[1:].view(T * B, H))
        w_hh_t = w_hh.t()
        for t in range(T):
            pre = hs[t + 1].addmm_(hs[t], w_hh_t)
            if nonlinearity == "tanh":
                tanh(pre, out=pre)
            else:
                pre.relu_()
        ctx.nonlinearity = nonlinearity
        ctx.save_for_backward(inputs, hs, w_ih, w_hh)
        return hs[1:].transpose(0, 1), hs[T].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        inputs, hs, w_ih, w_hh = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        slope = 1 - hs[1:] * hs[1:] if ctx.nonlinearity == "tanh" else (hs[1:] > 0).to(hs.dtype)
        grad_y = grad_y.transpose(0, 1)
        grad_pre = slope  # each step's slope becomes its pre-activation gradient, in place
        grad_h = grad_y[T - 1] + grad_final
        grad_sink = hs.new_empty(T, B, H) if ctx.needs_input_grad[7] else None
        for t in range(T - 1, -1, -1):
            if grad_sink is not None:
                grad_sink[t] = grad_h
            grad_pre[t].mul_(grad_h)
            grad_h = torch.addmm(grad_y[t - 1], grad_pre[t], w_hh) if t > 0 else grad_pre[t] @ w_hh
        flat = grad_pre.view(T * B, H)
        grad_x = flat.mm(w_ih).view(T, B, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_w_ih = flat.t().mm(inputs.view(T * B, -1))
        grad_w_hh = flat.t().mm(hs[:-1].reshape(T * B, H))
        grad_bias = flat.sum(0)
        return grad_x, grad_h, grad_w_ih, grad_w_hh, grad_bias, grad_bias.clone(), None, grad_sink


def rnn(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    nonlinearity: str = "tanh",
    sink: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the Elman RNN over x (B, T, input) from h0 (B, H): (outputs (B, T, H), final h).
    The gradient of ``sink`` (T, B, H), an input that the forward does not read, is the
    backward's dL/dh_t at every step (a tensor hook on it reads them)."""
    return ElmanRecurrence.apply(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, sink)
