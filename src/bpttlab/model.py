"""RecurrentNet: input encoder -> recurrent core -> linear readout, with two execution paths.

The *fused* path calls ``torch.nn.RNN/LSTM/GRU`` (fast). The *unrolled* path runs a Python
step loop over the very same parameters and returns every hidden state h_k (and c_k for
LSTM) of every layer, so that callers can read or clip the gradient flowing into each one.

On CPU the fused path runs PyTorch's native kernel rather than oneDNN's: the unrolled path
repeats that kernel's operations in the same order, so on CPU both paths give bitwise-equal
outputs and gradients, and probing a training step through the unrolled path never changes
the result. (At the benchmark size the native and oneDNN kernels run equally fast; oneDNN is
faster on small models. scripts/bench.py measures both.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bpttlab import validation

CELLS = ("rnn", "lstm", "gru")
NONLINEARITIES = ("tanh", "relu")
INITS = ("default", "orthogonal", "identity", "chrono")

State = Tensor | tuple[Tensor, Tensor]
"""Recurrent state: h of shape (layers, batch, hidden), or (h, c) for LSTM."""


@dataclass
class Trace:
    """Every state of an unrolled run: ``h[layer][t]`` (and ``c[layer][t]`` for LSTM), (B, H)."""

    h: list[list[Tensor]]
    c: list[list[Tensor]] | None = None

    def states(self) -> Iterator[tuple[str, int, int, Tensor]]:
        """Yield (kind, layer, t, tensor) for every recorded state, kind in {"h", "c"}."""
        for kind, per_layer in (("h", self.h), ("c", self.c or [])):
            for layer, steps in enumerate(per_layer):
                for t, state in enumerate(steps):
                    yield kind, layer, t, state


def detach_state(state: State | None) -> State | None:
    """Cut the graph at ``state``: the value is carried forward, its gradient is not."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


@contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    """Run the block with PyTorch's oneDNN (mkldnn) CPU kernels enabled or disabled."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


class RecurrentNet(nn.Module):
    """Encoder -> stacked RNN/LSTM/GRU -> linear readout at every timestep.

    Args:
        input_size: vocabulary size for token inputs, number of channels for real ones.
        output_size: number of classes (or regression outputs) per timestep.
        token_input: embed integer tokens (True) or project real-valued inputs (False).
        kind: the cell, "rnn", "lstm" or "gru".
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        nonlinearity: "tanh" or "relu" (rnn only).
        embedding_dim: width of the token embedding / input projection.
        init: "default" (PyTorch's), "orthogonal", "identity" (rnn; IRNN with relu) or
            "chrono" (lstm/gru gate biases, Tallec & Ollivier 2018).
        forget_bias: LSTM forget-gate bias (added to the ih bias); None leaves it.
        t_max: longest dependency for chrono init, normally the task's sequence length.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        token_input: bool = True,
        kind: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        embedding_dim: int = 32,
        init: str = "default",
        forget_bias: float | None = None,
        t_max: int | None = None,
    ):
        super().__init__()
        self.cell = validation.choice("cell.kind", kind, CELLS)
        self.hidden_size = validation.integer("cell.hidden_size", hidden_size, 1)
        self.num_layers = validation.integer("cell.num_layers", num_layers, 1)
        self.nonlinearity = validation.choice("cell.nonlinearity", nonlinearity, NONLINEARITIES)
        if kind != "rnn" and nonlinearity != "tanh":
            raise validation.ConfigError("cell.nonlinearity", nonlinearity, "tanh for lstm/gru")
        validation.integer("cell.embedding_dim", embedding_dim, 1)
        validation.choice("cell.init", init, INITS)
        self.token_input = token_input
        if token_input:
            self.encoder: nn.Module = nn.Embedding(input_size, embedding_dim)
        else:
            self.encoder = nn.Linear(input_size, embedding_dim)
        core = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
        self.core = core(embedding_dim, hidden_size, num_layers, batch_first=True, **extra)
        self.readout = nn.Linear(hidden_size, output_size)
        self._initialise(init, forget_bias, t_max)

    def _initialise(self, init: str, forget_bias: float | None, t_max: int | None) -> None:
        H = self.hidden_size
        with torch.no_grad():
            for layer in range(self.num_layers):
                w_hh, b_ih, b_hh = self._weights(layer)[1:]
                if init == "orthogonal":
                    for block in w_hh.split(H):
                        nn.init.orthogonal_(block)
                elif init == "identity":
                    if self.cell != "rnn":
                        raise validation.ConfigError("cell.init", init, "identity for rnn only")
                    w_hh.copy_(torch.eye(H))
                    b_ih.zero_()
                    b_hh.zero_()
                elif init == "chrono":
                    if self.cell == "rnn":
                        raise validation.ConfigError("cell.init", init, "chrono for lstm/gru only")
                    t_max = validation.integer("cell.t_max", t_max, 3)
                    bias = torch.log(torch.empty(H).uniform_(1, t_max - 1))
                    b_ih.zero_()
                    b_hh.zero_()
                    if self.cell == "lstm":  # gates i, f, g, o: b_f = log U[1, T-1], b_i = -b_f
                        b_ih[H : 2 * H] = bias
                        b_ih[:H] = -bias
                    else:  # gates r, z, n: z keeps the old state, the role of LSTM's f
                        b_ih[H : 2 * H] = bias
                if forget_bias is not None:
                    if self.cell != "lstm":
                        raise validation.ConfigError(
                            "cell.forget_bias", forget_bias, "null for rnn/gru"
                        )
                    b_ih[H : 2 * H] += forget_bias

    def _weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        core = self.core
        return tuple(
            getattr(core, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )

    def forward(
        self, inputs: Tensor, state: State | None = None, unrolled: bool = False
    ) -> tuple[Tensor, State, Trace | None]:
        """Run a batch of sequences.

        Args:
            inputs: (B, T) integer tokens or (B, T, C) real values.
            state: initial state (see ``State``); zeros when None.
            unrolled: use the step loop and return a Trace of every state.

        Returns:
            (outputs (B, T, output_size), final state, Trace or None).
        """
        x = self.encoder(inputs)
        if unrolled:
            hidden, final, trace = self._unrolled(x, state)
        else:
            with onednn(enabled=x.device.type != "cpu"):  # CPU: the native kernel
                hidden, final = self.core(x, state)
            trace = None
        return self.readout(hidden), final, trace

    def initial_state(self, like: Tensor) -> State:
        """Zero state for a batch of encoded inputs ``like`` (B, T, E)."""
        zeros = like.new_zeros(self.num_layers, like.shape[0], self.hidden_size)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def _unrolled(self, x: Tensor, state: State | None) -> tuple[Tensor, State, Trace]:
        if state is None:
            state = self.initial_state(x)
        h0, c0 = state if self.cell == "lstm" else (state, None)
        layer_input = x.transpose(0, 1)  # time-major, as the native kernel works
        trace = Trace(h=[], c=[] if self.cell == "lstm" else None)
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._weights(layer)
            projected = F.linear(layer_input, w_ih, b_ih)  # input term of every step at once
            h = h0[layer]
            c = c0[layer] if c0 is not None else None
            hs, cs = [], []
            for x_term in projected.unbind(0):  # unbind: its backward does not pad every step
                h, c = self._step(x_term, h, c, w_hh, b_hh)
                hs.append(h)
                cs.append(c)
            trace.h.append(hs)
            if trace.c is not None:
                trace.c.append(cs)
            layer_input = torch.stack(hs)
        final_h = torch.stack([hs[-1] for hs in trace.h])
        if trace.c is not None:
            final: State = (final_h, torch.stack([cs[-1] for cs in trace.c]))
        else:
            final = final_h
        return layer_input.transpose(0, 1), final, trace

    def _step(
        self, x_term: Tensor, h: Tensor, c: Tensor | None, w_hh: Tensor, b_hh: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        # Same operations in the same order as ATen's RNN cells (aten/src/ATen/native/RNN.cpp).
        h_term = F.linear(h, w_hh, b_hh)
        if self.cell == "rnn":
            pre = h_term.add_(x_term)
            return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)), None
        if self.cell == "lstm":
            i, f, g, o = h_term.add_(x_term).unsafe_chunk(4, 1)
            c = f.sigmoid().mul(c).add_(i.sigmoid().mul(g.tanh()))
            return o.sigmoid().mul(c.tanh()), c
        x_r, x_z, x_n = x_term.unsafe_chunk(3, 1)
        h_r, h_z, h_n = h_term.unsafe_chunk(3, 1)
        r = h_r.add_(x_r).sigmoid_()
        z = h_z.add_(x_z).sigmoid_()
        n = x_n.add(h_n.mul_(r)).tanh_()
        return (h - n).mul_(z).add_(n), None
