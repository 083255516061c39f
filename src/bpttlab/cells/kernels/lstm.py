"""The LSTM kernel, torch's equations and gate order i, f, g, o:
c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'), each gate's pre-activation
W_i* x + b_i* + W_h* h + b_h*.

Inside, the gate rows are reordered to o, i, f, g and the g rows doubled, so that one sigmoid
covers every gate (tanh(g) = 2 sigmoid(2g) - 1). The backward computes each step's gate
gradients in the loop (on small, cache-resident tensors) into one (T, B, 4H) buffer, from which
one GEMM each gives dW_ih, dW_hh and dx. The step loops run in C (lstm_step.c: each step's GEMM
by torch's BLAS, then its element-wise work in one pass) for float32 on CPU where the C library
could be built (``bpttlab.cells.kernels.compiled``), else as torch operations (``TorchSteps``).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch import Tensor

from bpttlab.cells.kernels import compiled
from bpttlab.cells.kernels.activation import tanh

TO_INSIDE = [3, 0, 1, 2]  # torch's gate blocks i, f, g, o in the order o, i, f, g
TO_TORCH = [1, 2, 3, 0]


def reorder(rows: Tensor, order: list[int]) -> Tensor:
    """The four gate blocks of ``rows`` (4H, ...) in ``order``."""
    return rows.unflatten(0, (4, -1))[order].flatten(0, 1)


@dataclass
class Buffers:
    """One run's time-major buffers; the backward's are None in the forward."""

    gates: Tensor  # (T, B, 4H): the pre-activations, then sigmoid(o, i, f) and tanh(g)
    hs: Tensor  # (T + 1, B, H)
    cs: Tensor  # (T + 1, B, H)
    squashed_cells: Tensor  # (T, B, H): tanh(c_t)
    weights: Tensor  # (4H, H): W_hh, rows o, i, f, g; the g rows doubled in the forward
    grad_gates: Tensor | None = None  # (T, B, 4H): dL/d(pre-activation)
    grad_h: Tensor | None = None  # (B, H): dL/dh_t of the step being run back through
    grad_c: Tensor | None = None  # (B, H): dL/dc carried back, updated in place
    grad_y: Tensor | None = None  # (B, T, H): dL/dy from above


class TorchSteps:
    """The step loops as torch operations (any dtype and device)."""

    def __init__(self, buffers: Buffers, sink_h: Tensor | None, sink_c: Tensor | None):
        H = buffers.hs.shape[2]
        gates = buffers.gates
        self.buffers, self.sink_h, self.sink_c = buffers, sink_h, sink_c
        # every step's views, made at once: the loops then only compute
        self.gate_rows, self.cell_rows = gates.unbind(0), gates[:, :, 3 * H :].unbind(0)
        self.sigmoids = gates[:, :, : 3 * H].unbind(0)
        self.output, self.input, self.forget, self.cell = (
            g.unbind(0) for g in gates.unflatten(2, (4, H)).unbind(2)
        )
        self.h, self.c = buffers.hs.unbind(0), buffers.cs.unbind(0)
        self.squashed = buffers.squashed_cells.unbind(0)
        if buffers.grad_gates is not None:
            grad_gates = buffers.grad_gates
            self.grad_sigmoids = grad_gates[:, :, : 3 * H].unbind(0)
            grads = grad_gates.unflatten(2, (4, H)).unbind(2)
            self.grad_output, self.grad_input, self.grad_forget, self.grad_cell = (
                g.unbind(0) for g in grads
            )
            self.grad_from_cell = grad_gates[:, :, H:].unflatten(2, (3, H)).unbind(0)
            self.grad_gate, self.grad_y = grad_gates.unbind(0), buffers.grad_y.unbind(1)
            self.one = gates.new_ones(())

    def forward(self) -> None:
        """Every step: add W_hh h_t to the gate rows (which hold W x_t + b), then squash."""
        weights_t = self.buffers.weights.t()
        for t in range(len(self.gate_rows)):
            self.gate_rows[t].addmm_(self.h[t], weights_t)
            self.forward_step(t)

    def backward(self) -> None:
        """Every step back from grad_h = dL/dh_T, grad_c = dL/dc_T; leaves dL/dh_0, dL/dc_0."""
        weights, grad_h = self.buffers.weights, self.buffers.grad_h
        for t in range(len(self.gate_rows) - 1, 0, -1):
            self.backward_step(t)
            torch.addmm(self.grad_y[t - 1], self.grad_gate[t], weights, out=grad_h)
        self.backward_step(0)
        torch.mm(self.grad_gate[0], weights, out=grad_h)

    def forward_step(self, t: int) -> None:
        self.gate_rows[t].sigmoid_()
        self.cell_rows[t].mul_(2).sub_(1)
        c_next = torch.mul(self.forget[t], self.c[t], out=self.c[t + 1])
        c_next.addcmul_(self.input[t], self.cell[t])
        tanh(c_next, out=self.squashed[t])
        torch.mul(self.output[t], self.squashed[t], out=self.h[t + 1])

    def backward_step(self, t: int) -> None:
        grad_h, grad_c = self.buffers.grad_h, self.buffers.grad_c
        sigmoids, cell, squashed = self.sigmoids[t], self.cell[t], self.squashed[t]
        if self.sink_h is not None:
            self.sink_h[t] = grad_h
        torch.addcmul(sigmoids, sigmoids, sigmoids, value=-1, out=self.grad_sigmoids[t])
        torch.addcmul(self.one, cell, cell, value=-1, out=self.grad_cell[t])
        grad_h_squashed = grad_h * squashed
        self.grad_output[t].mul_(grad_h_squashed)
        grad_c.addcmul_(torch.addcmul(grad_h, grad_h_squashed, squashed, value=-1), self.output[t])
        if self.sink_c is not None:
            self.sink_c[t] = grad_c
        self.grad_input[t].mul_(cell)
        self.grad_forget[t].mul_(self.c[t])
        self.grad_cell[t].mul_(self.input[t])
        self.grad_from_cell[t].mul_(grad_c.unsqueeze(1))
        grad_c.mul_(self.forget[t])


class CompiledBuffers(ctypes.Structure):
    """``lstm_buffers`` of lstm_step.c: the buffers' addresses (0 for none), sizes and sgemm."""

    _fields_ = [
        *((name, ctypes.c_void_p) for name in (
            "gates", "cs", "hs", "squashed", "grad_gates", "grad_h", "grad_c", "grad_y", "sink_h",
            "sink_c", "weights",
        )),
        *((name, ctypes.c_long) for name in ("batch", "hidden", "steps")),
        ("gemm", ctypes.c_void_p),
    ]  # fmt: skip


def step_functions(
    buffers: Buffers,
    compiled_steps: bool | None,
    sink_h: Tensor | None = None,
    sink_c: Tensor | None = None,
):
    """The step loops compiled (lstm_step.c) or as torch operations, as ``compiled_steps`` says
    (None: compiled where they apply and are built)."""
    b = buffers
    tensors = (b.gates, b.cs, b.hs, b.squashed_cells, b.grad_gates, b.grad_h, b.grad_c, b.grad_y)
    tensors += (sink_h, sink_c, b.weights)
    T, B, H = b.squashed_cells.shape
    steps = None
    if compiled_steps is not False:
        steps = compiled.steps("lstm_step", CompiledBuffers, tensors, B, H, T)
        if compiled_steps and steps is None:
            raise RuntimeError("lstm_step.c was chosen but does not run here")
    return steps or TorchSteps(buffers, sink_h, sink_c)


class LSTMRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, sink_h, sink_c, compiled_steps):
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
        buffers = Buffers(gates, hs, cs, squashed_cells, w_hh * doubled_cell)
        step_functions(buffers, compiled_steps).forward()
        ctx.compiled_steps = compiled_steps
        ctx.save_for_backward(inputs, hs, cs, gates, squashed_cells, w_ih, w_hh)
        return hs[1:].transpose(0, 1), hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_final_h, grad_final_c):
        inputs, hs, cs, gates, squashed_cells, w_ih, w_hh = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        grad_y = grad_y.contiguous()
        grad_gates = torch.empty_like(gates)
        grad_h = (grad_y[:, T - 1] + grad_final_h).contiguous()
        grad_c = grad_final_c.clone(memory_format=torch.contiguous_format)
        sink_h = hs.new_empty(T, B, H) if ctx.needs_input_grad[7] else None
        sink_c = hs.new_empty(T, B, H) if ctx.needs_input_grad[8] else None
        buffers = Buffers(gates, hs, cs, squashed_cells, w_hh, grad_gates, grad_h, grad_c, grad_y)
        steps = step_functions(buffers, ctx.compiled_steps, sink_h, sink_c)
        steps.backward()  # grad_h, grad_c: dL/dh_0, dL/dc_0
        flat = grad_gates.view(T * B, 4 * H)
        grad_x = flat.mm(w_ih).view(T, B, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_w_ih = reorder(flat.t().mm(inputs.view(T * B, -1)), TO_TORCH)
        grad_w_hh = reorder(flat.t().mm(hs[:-1].reshape(T * B, H)), TO_TORCH)
        grad_bias = reorder(flat.sum(0), TO_TORCH)
        grad_b_hh = grad_bias.clone()
        grads = grad_x, grad_h, grad_c, grad_w_ih, grad_w_hh, grad_bias, grad_b_hh
        return *grads, sink_h, sink_c, None


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
    compiled_steps: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LSTM over x (B, T, input) from (h0, c0) (B, H) each: (outputs, final h, final c).
    The gradients of ``sink_h`` and ``sink_c`` (T, B, H), inputs that the forward does not
    read, are the backward's dL/dh_t and dL/dc_t at every step (tensor hooks read them).
    ``compiled_steps``: run the step loops compiled (True), as torch operations (False), or
    compiled where they apply and are built (None)."""
    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, sink_h, sink_c, compiled_steps)
    return LSTMRecurrence.apply(*args)
