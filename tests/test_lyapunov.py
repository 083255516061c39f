"""Lyapunov spectra by the QR method (``gradflow.lyapunov``) against known answers and against a
float64 QR over Jacobians written out here from each cell's equations."""

from __future__ import annotations

import pytest
import torch

from bpttlab.cells import CELLS
from bpttlab.gradflow.lyapunov import BASIS_SEED, lyapunov_spectrum

B, T, C = 3, 60, 4  # sequences, timesteps, input width


def inputs(steps: int = T, batch: int = B, width: int = C, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, steps, width, generator=torch.Generator().manual_seed(seed)).double()


def make(kind: str, hidden: int, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return CELLS[kind](C, hidden, t_max=T, **options).double()


def test_lru_exponents_are_log_moduli_each_twice():
    cell = make("lru", 4, state_size=3)
    rates = torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)  # -log |lambda_i|
    with torch.no_grad():
        cell.nu_log.copy_(rates.log())
    expected = torch.tensor([-0.05, -0.05, -0.3, -0.3, -1.0, -1.0], dtype=torch.float64)
    xs = inputs(100)
    with torch.no_grad():  # 60 steps of warm-up align the basis to exp(-0.25 * 60) ~ 3e-7
        every = lyapunov_spectrum(cell, xs, k=10, warmup=60)
        top = lyapunov_spectrum(cell, xs, k=2, reorth_every=5, warmup=60)
    torch.testing.assert_close(every, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(top, expected[:2], rtol=0, atol=1e-9)


def test_mingru_exponents_are_time_averages_of_log_one_minus_z():
    """Without its block minGRU's state is h_t = (1 - z_t) h_{t-1} + z_t g(h~_t), z_t reading
    x_t only: J_t = diag(1 - z_t). Per sequence the exponents are the sorted time averages of
    log(1 - z_t,i) over the counted steps; the spectrum averages them over the sequences."""
    hidden, steps, warmup = 5, 300, 150
    cell = make("mingru", hidden, block=False)
    rates = torch.tensor([0.1, 0.3, 0.6, 1.0, 1.5], dtype=torch.float64)  # about -log(1 - z)
    with torch.no_grad():  # softplus(b_z) = rate: the units' rates well apart
        cell.linear.bias[hidden:] = torch.log(torch.expm1(rates))
        cell.linear.weight[hidden:] *= 0.3
    xs = inputs(steps)
    w_z, b_z = cell.linear.weight[hidden:], cell.linear.bias[hidden:]
    log_keep = torch.log1p(-torch.sigmoid(xs @ w_z.T + b_z)).detach()  # (B, T, H)
    per_sequence = log_keep[:, warmup:].mean(1).sort(dim=1, descending=True).values
    with torch.no_grad():
        got = lyapunov_spectrum(cell, xs, k=hidden, warmup=warmup)
    torch.testing.assert_close(got, per_sequence.mean(0), rtol=0, atol=1e-9)


def test_orthogonal_recurrence_with_identity_nonlinearity_has_zero_exponents():
    """modReLU with a zero bias is the identity (sign(z) |z|): J_t = W_hh, orthogonal."""
    cell = make("orthogonal", 6, init="random")
    with torch.no_grad():
        cell.bias.zero_()
        got = lyapunov_spectrum(cell, inputs(), k=6, reorth_every=3)
    torch.testing.assert_close(got, torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)


# -- an independent float64 QR over hand-written Jacobians ------------------------------------


def rnn_jacobian(cell, x, state):
    w_ih, w_hh, b_ih, b_hh = cell.weights
    (h,) = state
    h_next = torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
    return (h_next,), (1 - h_next**2)[:, :, None] * w_hh


def gru_jacobian(cell, x, state):
    w_ih, w_hh, b_ih, b_hh = cell.weights
    (h,) = state
    x_r, x_z, x_n = (x @ w_ih.T + b_ih).chunk(3, -1)
    w_r, w_z, w_n = w_hh.chunk(3, 0)
    b_r, b_z, b_n = b_hh.chunk(3, 0)
    r = torch.sigmoid(x_r + h @ w_r.T + b_r)
    z = torch.sigmoid(x_z + h @ w_z.T + b_z)
    hn = h @ w_n.T + b_n
    n = torch.tanh(x_n + r * hn)
    h_next = (1 - z) * n + z * h
    dr = (r * (1 - r))[:, :, None] * w_r
    dz = (z * (1 - z))[:, :, None] * w_z
    dn = (1 - n**2)[:, :, None] * (r[:, :, None] * w_n + hn[:, :, None] * dr)
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    jac = (1 - z)[:, :, None] * dn + z[:, :, None] * eye + (h - n)[:, :, None] * dz
    return (h_next,), jac


def lstm_jacobian(cell, x, state):
    w_ih, w_hh, b_ih, b_hh = cell.weights
    h, c = state
    pre_i, pre_f, pre_g, pre_o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, -1)
    w_i, w_f, w_g, w_o = w_hh.chunk(4, 0)
    i, f, g, o = pre_i.sigmoid(), pre_f.sigmoid(), pre_g.tanh(), pre_o.sigmoid()
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)

    def rows(v, w):  # diag(v) W
        return v[:, :, None] * w

    dc_dh = rows(c * f * (1 - f), w_f) + rows(g * i * (1 - i), w_i) + rows(i * (1 - g**2), w_g)
    dc_dc = torch.diag_embed(f)
    through_c = o * (1 - torch.tanh(c_next) ** 2)
    dh_dh = rows(torch.tanh(c_next) * o * (1 - o), w_o) + rows(through_c, dc_dh)
    dh_dc = rows(through_c, dc_dc)
    jac = torch.cat([torch.cat([dh_dh, dh_dc], -1), torch.cat([dc_dh, dc_dc], -1)], -2)
    return (h_next, c_next), jac


def reference_spectrum(jacobian, cell, xs, state, k, reorth_every, warmup):
    """The QR method over explicit Jacobians, in float64."""
    n = sum(s.shape[-1] for s in state)
    draw = torch.randn(
        n, k, generator=torch.Generator().manual_seed(BASIS_SEED), dtype=torch.float64
    )
    q = torch.linalg.qr(draw)[0].expand(xs.shape[0], n, k)
    growth = torch.zeros(xs.shape[0], k, dtype=torch.float64)
    since_qr = 0
    for t in range(xs.shape[1]):
        state, jac = jacobian(cell, xs[:, t], state)
        q = jac @ q
        since_qr += 1
        last_of_warmup, last = t == warmup - 1, t == xs.shape[1] - 1
        if since_qr == reorth_every or last_of_warmup or last:
            q, r = torch.linalg.qr(q)
            if t >= warmup:
                growth += r.diagonal(dim1=-2, dim2=-1).abs().log()
            since_qr = 0
    return (growth.mean(0) / (xs.shape[1] - warmup)).sort(descending=True).values


@pytest.mark.parametrize(
    ("kind", "jacobian", "options"),
    [
        ("rnn", rnn_jacobian, {"nonlinearity": "tanh"}),
        ("gru", gru_jacobian, {}),
        ("lstm", lstm_jacobian, {"onednn": False}),
    ],
)
@pytest.mark.parametrize(("k", "reorth_every", "warmup"), [(3, 1, 0), (40, 4, 10)])
def test_torch_cells_match_a_float64_qr_over_hand_written_jacobians(
    kind, jacobian, options, k, reorth_every, warmup
):
    hidden = 6
    cell = make(kind, hidden, **options)
    with torch.no_grad():
        cell.rnn.weight_hh_l0.mul_(3.0)  # strong recurrence: some exponents positive
    xs = inputs()
    state = tuple(0.1 * torch.ones(B, hidden, dtype=torch.float64) for _ in cell.state_names)
    n = hidden * len(cell.state_names)
    with torch.no_grad():
        got = lyapunov_spectrum(cell, xs, state, k, reorth_every, warmup)
        want = reference_spectrum(jacobian, cell, xs, state, min(k, n), reorth_every, warmup)
    assert got.shape == (min(k, n),)
    # between QRs the weakest directions fold onto the strongest and lose digits: the two
    # computations, in different orders, then agree to a relative 1e-7 (1e-10 with a QR every step)
    torch.testing.assert_close(got, want, rtol=0 if reorth_every == 1 else 1e-7, atol=1e-10)


def test_bad_arguments_name_the_argument():
    cell = make("rnn", 4)
    for kwargs, name in [
        ({"k": 0}, "k"),
        ({"reorth_every": 0}, "reorth_every"),
        ({"warmup": T}, "warmup"),
    ]:
        with pytest.raises(ValueError, match=name):
            lyapunov_spectrum(cell, inputs(), **kwargs)


def test_exponents_are_differentiable_in_the_weights():
    """What flossing trains on: the gradient of sum(lambda_i^2) equals a central finite
    difference along a random direction of W_hh (float64)."""
    cell = make("rnn", 4)
    xs = inputs(30)
    weight = cell.rnn.weight_hh_l0
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)).double()

    def loss() -> torch.Tensor:
        return lyapunov_spectrum(cell, xs, k=2).square().sum()

    (grad,) = torch.autograd.grad(loss(), weight)
    eps = 1e-6
    with torch.no_grad():
        weight.add_(eps * direction)
        up = loss()
        weight.sub_(2 * eps * direction)
        down = loss()
        weight.add_(eps * direction)
    finite = (up - down) / (2 * eps)
    torch.testing.assert_close((grad * direction).sum(), finite, rtol=1e-6, atol=1e-9)
