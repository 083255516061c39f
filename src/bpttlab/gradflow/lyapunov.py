"""Lyapunov exponents of a recurrent layer's forward dynamics, by the QR (Benettin) method.

A layer run on an input sequence is a map h_t = F_t(h_{t-1}) of its state, flattened into one
real vector of N numbers: the tuple of its states side by side (the LSTM's (h, c): N = 2H), a
complex state as the real and imaginary parts of each unit. With J_t = dh_t/dh_{t-1}, the i-th
Lyapunov exponent is the average log growth rate per timestep of the i-th direction of
J_T ... J_1, in nats per timestep:

    lambda_i = (1 / (T - warmup)) sum_t log |R_t[i, i]|,   Q_t R_t = J_t Q_{t-1}

for an orthonormal N x k basis Q (a fixed random draw at t = 0, the same for every sequence).
The products J_t Q are Jacobian-vector products through the cell's own step loop
(``Cell.unrolled`` on one timestep, in forward-mode autodiff), so any cell needs nothing
more; the k columns run as k copies of the batch. Q is re-orthonormalised every
``reorth_every`` steps (the log |diag R| of a QR after several steps is the growth over all of
them); the first ``warmup`` steps only align Q with the leading directions and are not
counted. Exponents are computed per sequence, averaged over the batch's sequences and sorted,
largest first. Under autograd the result is differentiable in the cell's parameters
(``torch.linalg.qr`` has a backward): gradient flossing trains on it.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from bpttlab.cells.base import Cell, LayerState

BASIS_SEED = 0  # the random initial basis: the same draw at every call, no global RNG used


def flatten_state(state: LayerState) -> Tensor:
    """The state as one real (B, N) tensor: its tensors side by side, a complex one as the
    (real, imaginary) pair of each unit."""
    parts = [torch.view_as_real(s).flatten(-2) if s.is_complex() else s for s in state]
    return torch.cat(parts, dim=-1)


def unflatten_state(flat: Tensor, like: LayerState) -> LayerState:
    """The inverse of ``flatten_state`` for a state shaped as ``like``."""
    state, start = [], 0
    for s in like:
        width = s.shape[-1] * (2 if s.is_complex() else 1)
        part = flat[..., start : start + width]
        if s.is_complex():
            pairs = part.unflatten(-1, (s.shape[-1], 2))
            part = torch.complex(pairs[..., 0], pairs[..., 1])
        state.append(part)
        start += width
    return tuple(state)


def step_with_tangents(
    cell: Cell, x_t: Tensor, state: LayerState, basis: Tensor
) -> tuple[LayerState, Tensor]:
    """One timestep of ``cell`` from ``state`` on inputs ``x_t`` (B, 1, C), and J_t ``basis``:
    (next state, (B, N, k))."""
    batch, n, k = basis.shape
    flat = flatten_state(state).repeat_interleave(k, 0)  # row b * k + j: sequence b, column j
    tangents = basis.transpose(1, 2).reshape(batch * k, n)
    with fwAD.dual_level():
        dual = unflatten_state(fwAD.make_dual(flat, tangents), state)
        _, final, _ = cell.unrolled(x_t.repeat_interleave(k, 0), dual)
        primal, tangent = fwAD.unpack_dual(flatten_state(final))
    following = unflatten_state(primal.view(batch, k, n)[:, 0], state)
    return following, tangent.view(batch, k, n).transpose(1, 2)


def initial_basis(n: int, k: int, like: Tensor) -> Tensor:
    """An orthonormal (n, k) basis drawn from ``BASIS_SEED``, of ``like``'s real dtype."""
    generator = torch.Generator().manual_seed(BASIS_SEED)
    draw = torch.randn(n, k, generator=generator, dtype=torch.float64)
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return torch.linalg.qr(draw)[0].to(dtype=dtype, device=like.device)


def intervals(start: int, end: int, every: int) -> list[tuple[int, int]]:
    """[start, end) cut into pieces of ``every`` steps (the last may be shorter)."""
    return [(s, min(s + every, end)) for s in range(start, end, every)]


def lyapunov_spectrum(
    cell: Cell,
    xs: Tensor,
    state0: LayerState | None = None,
    k: int = 8,
    reorth_every: int = 1,
    warmup: int = 0,
) -> Tensor:
    """The leading ``k`` Lyapunov exponents of ``cell`` along the sequences ``xs``.

    Args:
        cell: a recurrent layer (any registered cell).
        xs: (B, T, input_size) the layer's inputs.
        state0: the state before the first step; the cell's zero state when None.
        k: how many exponents (all N of them when k >= N).
        reorth_every: timesteps between QR re-orthonormalisations, >= 1.
        warmup: leading timesteps that align the basis and are not counted, 0 <= warmup < T.

    Returns:
        (min(k, N),) nats per timestep, largest first, averaged over the B sequences.
    """
    steps = xs.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: lyapunov_spectrum needs an integer k >= 1")
    if isinstance(reorth_every, bool) or not isinstance(reorth_every, int) or reorth_every < 1:
        raise ValueError(f"reorth_every={reorth_every!r}: needs an integer >= 1")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"warmup={warmup!r}: needs an integer in [0, T) with T={steps} steps")
    state = cell.default_state(xs) if state0 is None else state0
    flat = flatten_state(state)
    n = flat.shape[-1]
    basis = initial_basis(n, min(k, n), flat).expand(xs.shape[0], -1, -1)
    growth = flat.new_zeros(())
    for start, end in intervals(0, warmup, reorth_every) + intervals(warmup, steps, reorth_every):
        for t in range(start, end):
            state, basis = step_with_tangents(cell, xs[:, t : t + 1], state, basis)
        basis, r = torch.linalg.qr(basis)
        if start >= warmup:
            growth = growth + r.diagonal(dim1=-2, dim2=-1).abs().log()
    exponents = growth.mean(0) / (steps - warmup)
    return exponents.sort(descending=True).values


def layer_inputs(model, inputs: Tensor) -> list[Tensor]:
    """The input sequence of every layer of a RecurrentNet ``model`` run on ``inputs`` from its
    zero state: the encoder's output, then each layer's output."""
    seen = [model.encoder(inputs)]
    for cell in model.layers[:-1]:
        x = seen[-1]
        seen.append(cell(x, cell.default_state(x))[0])
    return seen


def network_spectra(
    model, inputs: Tensor, k: int = 8, reorth_every: int = 1, warmup: int = 0
) -> list[Tensor]:
    """``lyapunov_spectrum`` of every layer of a RecurrentNet along ``inputs``, each layer
    driven by the outputs of the one below (from zero states)."""
    return [
        lyapunov_spectrum(cell, xs, None, k, reorth_every, warmup)
        for cell, xs in zip(model.layers, layer_inputs(model, inputs), strict=True)
    ]
