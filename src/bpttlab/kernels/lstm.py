"""The LSTM kernel, torch's equations and gate order i, f, g, o:
c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'), each gate's pre-activation
W_i* x + b_i* + W_h* h + b_h*.

Inside, the gate rows are reordered to o, i, f, g and the g rows doubled, so that one sigmoid
covers every gate (tanh(g) = 2 sigmoid(2g) - 1). The backward computes each step's gate
gradients in the loop (on small, cache-resident tensors) into one (T, B, 4H) buffer, from which
one GEMM each gives dW_ih, dW_hh and dx.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bpttlab.kernels.activation import tanh

TO_INSIDE = [3, 0, 1, 2]  # torch's gate blocks i, f, g, o in the order o, i, f, g
TO_TORCH = [1, 2, 3, 0]


def reorder(rows: Tensor, order: list[int]) -> Tensor:
    """The four gate blocks of ``rows`` (4H, ...) in ``order``."""
    return rows.unflatten(0, (4, -1))[order].flatten(0, 1)


class LSTMRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, sink_h=None, sink_c=None):
        B, T, _ = x.shape
        H = h0.shape[1]
        w_ih, w_hh = reorder(w_ih, TO_INSIDE), reorder(w_hh, TO_INSIDE)
        doubled_cell = torch.ones(4 * H, 1, dtype=x.dtype, device=x.device)
        doubled_cell[3 * H :] = 2  # sigmoid(2 g) gives tanh(g) = 2 sigmoid(2 g) - 1
        inputs = x.transpose(0, 1).contiguous()
        bias = reorder(b_ih + b_hh, TO_INSIDE) * doubled_cell[:, 0]
        gates = x.new_empty(T, B, 4 * H)  # o, i, f, g: the input projections, then the gates
        torch.addmm(
            bias, inputs.view(T * B, -1), (w_ih * doubled_cell).t(), out=gates.view(T * B, -1)
        )
        hs, cs = x.new_empty(T + 1, B, H), x.new_empty(T + 1, B, H)
        hs[0], cs[0] = h0, c0
        squashed_cells = x.new_empty(T, B, H)  # tanh(c)
        w_hh_t = (w_hh * doubled_cell).t()
        # every step's views, made at once: the loop then only computes
        gate_rows, cell_rows = gates.unbind(0), gates[:, :, 3 * H :].unbind(0)
        output, input_, forget, cell = (g.unbind(0) for g in gates.unflatten(2, (4, H)).unbind(2))
        h, c, squashed = hs.unbind(0), cs.unbind(0), squashed_cells.unbind(0)
        for t in range(T):
            gate_rows[t].addmm_(h[t], w_hh_t).sigmoid_()
            cell_rows[t].mul_(2).sub_(1)
            torch.mul(forget[t], c[t], out=c[t + 1]).addcmul_(input_[t], cell[t])
            tanh(c[t + 1], out=squashed[t])
            torch.mul(output[t], squashed[t], out=h[t + 1])
        ctx.save_for_backward(inputs, hs, cs, gates, squashed_cells, w_ih, w_hh)
        return hs[1:].transpose(0, 1), hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_final_h, grad_final_c):
        inputs, hs, cs, gates, squashed_cells, w_ih, w_hh = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        grad_y = grad_y.transpose(0, 1)
        grad_gates = torch.empty_like(gates)
        one = gates.new_ones(())
        grad_h = grad_y[T - 1] + grad_final_h
        grad_c = grad_final_c.clone()
        grad_sink_h = hs.new_empty(T, B, H) if ctx.needs_input_grad[7] else None
        grad_sink_c = hs.new_empty(T, B, H) if ctx.needs_input_grad[8] else None
        grad_sinks = grad_sink_h, grad_sink_c
        # every step's views, made at once: the loop then only computes
        output, input_, forget, cell = (g.unbind(0) for g in gates.unflatten(2, (4, H)).unbind(2))
        grads = grad_gates.unflatten(2, (4, H)).unbind(2)
        grad_output, grad_input, grad_forget, grad_cell = (g.unbind(0) for g in grads)
        sigmoids, grad_sigmoids = (
            gates[:, :, : 3 * H].unbind(0),
            grad_gates[:, :, : 3 * H].unbind(0),
        )
        grad_from_cell = grad_gates[:, :, H:].unflatten(2, (3, H)).unbind(0)
        grad_gate, squashed, c = grad_gates.unbind(0), squashed_cells.unbind(0), cs.unbind(0)
        grad_y_steps = grad_y.unbind(0)
        for t in range(T - 1, -1, -1):
            if grad_sink_h is not None:
                grad_sink_h[t] = grad_h
            torch.addcmul(sigmoids[t], sigmoids[t], sigmoids[t], value=-1, out=grad_sigmoids[t])
            torch.addcmul(one, cell[t], cell[t], value=-1, out=grad_cell[t])
            grad_h_squashed = grad_h * squashed[t]
            grad_output[t].mul_(grad_h_squashed)
            grad_c.addcmul_(
                torch.addcmul(grad_h, grad_h_squashed, squashed[t], value=-1), output[t]
            )
            if grad_sink_c is not None:
                grad_sink_c[t] = grad_c
            grad_input[t].mul_(cell[t])
            grad_forget[t].mul_(c[t])
            grad_cell[t].mul_(input_[t])
            grad_from_cell[t].mul_(grad_c.unsqueeze(1))
            grad_c.mul_(forget[t])
            if t > 0:
                grad_h = torch.addmm(grad_y_steps[t - 1], grad_gate[t], w_hh)
            else:
                grad_h = grad_gate[t] @ w_hh
        flat = grad_gates.view(T * B, 4 * H)
        grad_x = flat.mm(w_ih).view(T, B, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_w_ih = reorder(flat.t().mm(inputs.view(T * B, -1)), TO_TORCH)
        grad_w_hh = reorder(flat.t().mm(hs[:-1].reshape(T * B, H)), TO_TORCH)
        grad_bias = reorder(flat.sum(0), TO_TORCH)
        grad_b_hh = grad_bias.clone()
        return grad_x, grad_h, grad_c, grad_w_ih, grad_w_hh, grad_bias, grad_b_hh, *grad_sinks


def lstm(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    sink_h: Tensor | None = None,
    sink_c: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LSTM over x (B, T, input) from (h0, c0) (B, H) each: (outputs, final h, final c).
    The gradients of ``sink_h`` and ``sink_c`` (T, B, H), inputs that the forward does not
    read, are the backward's dL/dh_t and dL/dc_t at every step (tensor hooks read them)."""
    return LSTMRecurrence.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, sink_h, sink_c)
