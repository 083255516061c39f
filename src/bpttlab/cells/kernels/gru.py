"""The GRU kernel, torch's equations and gate order r, z, n:
r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z = sigmoid(W_iz x + b_iz + W_hz h + b_hz),
n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h.

The backward multiplies each step's incoming dL/dh by the step's gate factors, giving
dL/d(n pre-activation, r and z pre-activations, W_hn h + b_hn) in that order: the first three
columns are the input side (dW_ih, dx) and the last three the hidden side (dW_hh and the step's
GEMM), each one contiguous block. The step loops run in C (gru_step.c: each step's GEMM by
torch's BLAS, then its element-wise work in one pass) for float32 on CPU where the C library
could be built (``bpttlab.cells.kernels.compiled``), else as torch operations (``TorchSteps``, which
compute the backward's factors for all timesteps at once before the loop).
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

    projected: Tensor  # (T, B, 4H): input side of r, z and W_hn h + b_hn, then W_in x + b_in
    gates: Tensor  # (T, B, 3H): sigmoid(r), sigmoid(z), W_hn h + b_hn
    new: Tensor  # (T, B, H): n_t
    hs: Tensor  # (T + 1, B, H)
    weights: Tensor  # (3H, H): W_hh
    grad_gates: Tensor | None = None  # (T, B, 4H): dL/d(n pre, r pre, z pre, W_hn h + b_hn)
    grad_h: Tensor | None = None  # (B, H): dL/dh_t of the step being run back through
    grad_y: Tensor | None = None  # (B, T, H): dL/dy from above


class TorchSteps:
    """The step loops as torch operations (any dtype and device)."""

    def __init__(self, buffers: Buffers, sink: Tensor | None):
        T, B, H = buffers.new.shape
        self.buffers, self.sink = buffers, sink
        self.H = H
        if buffers.grad_gates is None:
            return
        r, z, hidden_new = buffers.gates.view(T * B, 3, H).unbind(1)
        n = buffers.new.view(T * B, H)
        factors = buffers.grad_gates.view(T * B, 4, H)  # times dL/dh: the gate gradients
        keep = 1 - z
        torch.addcmul(keep, keep, n * n, value=-1, out=factors[:, 0])
        torch.mul(factors[:, 0], r, out=factors[:, 3])
        scaled_hidden_new = factors[:, 3] * hidden_new
        torch.addcmul(scaled_hidden_new, scaled_hidden_new, r, value=-1, out=factors[:, 1])
        torch.mul((buffers.hs[:-1].view(T * B, H) - n).mul_(z), keep, out=factors[:, 2])
        self.z = z.view(T, B, H)
        self.grad_y = buffers.grad_y.transpose(0, 1)

    def forward(self) -> None:
        """Every step: the gate rows are the input side plus W_hh h_t + b_hh, then the gates."""
        b, H = self.buffers, self.H
        gate_inputs = b.projected[:, :, : 3 * H].unbind(0)
        gate, h, weights_t = b.gates.unbind(0), b.hs.unbind(0), b.weights.t()
        for t in range(len(gate)):
            torch.addmm(gate_inputs[t], h[t], weights_t, out=gate[t])
            self.forward_step(t)

    def backward(self) -> None:
        """Every step back from grad_h = dL/dh_T; leaves dL/dh_0 in it."""
        b = self.buffers
        hidden_side_steps = b.grad_gates[:, :, self.H :].unbind(0)
        for t in range(len(hidden_side_steps) - 1, -1, -1):
            self.backward_step(t)
            b.grad_h.addmm_(hidden_side_steps[t], b.weights)

    def forward_step(self, t: int) -> None:
        b, H = self.buffers, self.H
        gate, new_t = b.gates[t], b.new[t]
        reset, update, hidden_new = gate.unflatten(1, (3, H)).unbind(1)
        gate[:, : 2 * H].sigmoid_()
        tanh(torch.addcmul(b.projected[t, :, 3 * H :], reset, hidden_new, out=new_t), out=new_t)
        torch.sub(b.hs[t], new_t, out=b.hs[t + 1]).mul_(update).add_(new_t)

    def backward_step(self, t: int) -> None:
        grad_h = self.buffers.grad_h
        if self.sink is not None:
            self.sink[t] = grad_h
        self.buffers.grad_gates[t].view(-1, 4, self.H).mul_(grad_h.unsqueeze(1))
        if t > 0:
            torch.addcmul(self.grad_y[t - 1], grad_h, self.z[t], out=grad_h)
        else:
            grad_h.mul_(self.z[t])


class CompiledBuffers(ctypes.Structure):
    """``gru_buffers`` of gru_step.c: the buffers' addresses (0 for none), sizes and sgemm."""

    _fields_ = [
        *((name, ctypes.c_void_p) for name in (
            "projected", "gates", "new", "hs", "grad_gates", "grad_h", "grad_y", "sink", "weights"
        )),
        *((name, ctypes.c_long) for name in ("batch", "hidden", "steps")),
        ("gemm", ctypes.c_void_p),
    ]  # fmt: skip


def step_functions(buffers: Buffers, compiled_steps: bool | None, sink: Tensor | None = None):
    """The step loops compiled (gru_step.c) or as torch operations, as ``compiled_steps`` says
    (None: compiled where they apply and are built)."""
    b = buffers
    T, B, H = b.new.shape
    tensors = (b.projected, b.gates, b.new, b.hs, b.grad_gates, b.grad_h, b.grad_y, sink, b.weights)
    steps = None
    if compiled_steps is not False:
        steps = compiled.steps("gru_step", CompiledBuffers, tensors, B, H, T)
        if compiled_steps and steps is None:
            raise RuntimeError("gru_step.c was chosen but does not run here")
    return steps or TorchSteps(buffers, sink)


class GRURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, sink, compiled_steps):
        B, T, _ = x.shape
        H = h0.shape[1]
        inputs = x.transpose(0, 1).contiguous()
        w_ih_padded = torch.cat([w_ih[: 2 * H], torch.zeros_like(w_ih[:H]), w_ih[2 * H :]])
        bias = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_hh[2 * H :], b_ih[2 * H :]])
        projected = torch.addmm(bias, inputs.view(T * B, -1), w_ih_padded.t()).view(T, B, 4 * H)
        gates = x.new_empty(T, B, 3 * H)  # r, z and W_hn h + b_hn
        hs = x.new_empty(T + 1, B, H)
        hs[0] = h0
        buffers = Buffers(projected, gates, x.new_empty(T, B, H), hs, w_hh.contiguous())
        step_functions(buffers, compiled_steps).forward()
        ctx.compiled_steps = compiled_steps
        ctx.save_for_backward(inputs, hs, gates, buffers.new, w_ih, w_hh)
        return hs[1:].transpose(0, 1), hs[T].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        inputs, hs, gates, new, w_ih, w_hh = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        grad_y = grad_y.contiguous()
        grad_h = (grad_y[:, T - 1] + grad_final).contiguous()
        grad_gates = gates.new_empty(T, B, 4 * H)
        sink = hs.new_empty(T, B, H) if ctx.needs_input_grad[6] else None
        buffers = Buffers(None, gates, new, hs, w_hh.contiguous(), grad_gates, grad_h, grad_y)
        step_functions(buffers, ctx.compiled_steps, sink).backward()  # grad_h: dL/dh_0
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
        return grad_x, grad_h, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, sink, None


def gru(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    sink: Tensor | None = None,
    compiled_steps: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the GRU over x (B, T, input) from h0 (B, H): (outputs (B, T, H), final h). The
    gradient of ``sink`` (T, B, H), an input that the forward does not read, is the backward's
    dL/dh_t at every step (a tensor hook on it reads them). ``compiled_steps``: run the step
    loops compiled (True), as torch operations (False), or compiled where they apply and are
    built (None)."""
    return GRURecurrence.apply(x, h0, w_ih, w_hh, b_ih, b_hh, sink, compiled_steps)
