"""The GRU kernel, torch's equations and gate order r, z, n:
r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z = sigmoid(W_iz x + b_iz + W_hz h + b_hz),
n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h.

The backward multiplies each step's incoming dL/dh by factors computed for all timesteps at
once before the loop, giving dL/d(n pre-activation, r and z pre-activations, W_hn h + b_hn) in
that order: the first three columns are the input side (dW_ih, dx) and the last three the
hidden side (dW_hh and the step's GEMM), each one contiguous block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bpttlab.kernels.activation import tanh


class GRURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, sink=None):
        B, T, _ = x.shape
        H = h0.shape[1]
        inputs = x.transpose(0, 1).contiguous()
        w_ih_padded = torch.cat([w_ih[: 2 * H], torch.zeros_like(w_ih[:H]), w_ih[2 * H :]])
        bias = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_hh[2 * H :], b_ih[2 * H :]])
        projected = torch.addmm(bias, inputs.view(T * B, -1), w_ih_padded.t()).view(T, B, 4 * H)
        gates = x.new_empty(T, B, 3 * H)  # r, z and W_hn h + b_hn
        new = x.new_empty(T, B, H)
        hs = x.new_empty(T + 1, B, H)
        hs[0] = h0
        w_hh_t = w_hh.t()
        steps = zip(
            projected[:, :, : 3 * H].unbind(0),
            projected[:, :, 3 * H :].unbind(0),
            gates.unbind(0),
            new.unbind(0),
            hs.unbind(0),
            hs[1:].unbind(0),
            strict=False,
        )
        for gate_input, new_input, gate, new_t, h, h_next in steps:
            torch.addmm(gate_input, h, w_hh_t, out=gate)
            reset, update, hidden_new = gate.unflatten(1, (3, H)).unbind(1)
            gate[:, : 2 * H].sigmoid_()
            tanh(torch.addcmul(new_input, reset, hidden_new, out=new_t), out=new_t)
            torch.sub(h, new_t, out=h_next).mul_(update).add_(new_t)
        ctx.save_for_backward(inputs, hs, gates, new, w_ih, w_hh)
        return hs[1:].transpose(0, 1), hs[T].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        inputs, hs, gates, n, w_ih, w_hh = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        r, z, hidden_new = gates.view(T * B, 3, H).unbind(1)
        n = n.view(T * B, H)
        factors = gates.new_empty(T * B, 4, H)  # times dL/dh: d(n pre, r pre, z pre, hn)
        keep = 1 - z
        torch.addcmul(keep, keep, n * n, value=-1, out=factors[:, 0])
        torch.mul(factors[:, 0], r, out=factors[:, 3])
        scaled_hidden_new = factors[:, 3] * hidden_new
        torch.addcmul(scaled_hidden_new, scaled_hidden_new, r, value=-1, out=factors[:, 1])
        torch.mul((hs[:-1].view(T * B, H) - n).mul_(z), keep, out=factors[:, 2])
        factors = factors.view(T, B, 4, H)
        z = z.view(T, B, H)
        grad_y = grad_y.transpose(0, 1)
        grad_gates = factors  # each step's factors become its gate gradients, in place
        grad_h = grad_y[T - 1] + grad_final
        grad_sink = hs.new_empty(T, B, H) if ctx.needs_input_grad[6] else None
        for t in range(T - 1, -1, -1):
            if grad_sink is not None:
                grad_sink[t] = grad_h
            grad_gates[t].mul_(grad_h.unsqueeze(1))
            through_z = torch.addcmul(grad_y[t - 1], grad_h, z[t]) if t > 0 else grad_h * z[t]
            grad_h = torch.addmm(through_z, grad_gates[t].view(B, 4 * H)[:, H:], w_hh)
        flat = grad_gates.view(T * B, 4 * H)
        input_side, hidden_side = flat[:, : 3 * H], flat[:, H:]  # gates n, r, z and r, z, n
        to_reset_update_new = torch.cat([torch.arange(H, 3 * H), torch.arange(H)])
        grad_x = None
        if ctx.needs_input_grad[0]:
            w_ih_new_first = torch.cat([w_ih[2 * H :], w_ih[: 2 * H]])
            grad_x = input_side.mm(w_ih_new_first).view(T, B, -1).transpose(0, 1)
        grad_w_ih = input_side.t().mm(inputs.view(T * B, -1))[to_reset_update_new]
        grad_w_hh = hidden_side.t().mm(hs[:-1].reshape(T * B, H))
        sums = flat.sum(0)
        grad_b_ih, grad_b_hh = sums[to_reset_update_new], sums[H:]
        return grad_x, grad_h, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_sink


def gru(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    sink: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the GRU over x (B, T, input) from h0 (B, H): (outputs (B, T, H), final h). The
    gradient of ``sink`` (T, B, H), an input that the forward does not read, is the backward's
    dL/dh_t at every step (a tensor hook on it reads them)."""
    return GRURecurrence.apply(x, h0, w_ih, w_hh, b_ih, b_hh, sink)
