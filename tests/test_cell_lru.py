"""The LRU: its equations in float64 (real arithmetic on real and imaginary parts), the
parallel scan against the step loop, |lambda| < 1 through training, and the exact gradient
profile of its complex state."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from conftest import fit, small_module
from test_gradflow import output_delta, probe_once, weights_of

from bpttlab import CopyTask
from bpttlab.cells import LRUCell
from bpttlab.cells.lru import chunked_scan
from bpttlab.tasks import TRAIN, batch_generator


def reference_state(p, u_t, x_re, x_im):
    """One LRU step on real and imaginary parts: x <- lambda x + gamma B u,
    lambda = r e^{i theta}, r = exp(-exp(nu_log)), theta = exp(theta_log), gamma = exp(gamma_log)."""
    r, theta = torch.exp(-torch.exp(p["nu_log"])), torch.exp(p["theta_log"])
    gamma = torch.exp(p["gamma_log"])
    bu_re, bu_im = gamma * (u_t @ p["B_re"].T), gamma * (u_t @ p["B_im"].T)
    l_re, l_im = r * torch.cos(theta), r * torch.sin(theta)
    return l_re * x_re - l_im * x_im + bu_re, l_re * x_im + l_im * x_re + bu_im


def reference_output(p, u_t, x_re, x_im):
    """y = Re(C x) + D u; out = u + a sigmoid(g), [a, g] = W gelu(y) + c (exact erf GELU)."""
    y = x_re @ p["C_re"].T - x_im @ p["C_im"].T + p["D"] * u_t
    gelu = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    a, g = (gelu @ p["glu.weight"].T + p["glu.bias"]).chunk(2, -1)
    return u_t + a / (1 + torch.exp(-g))


def reference_input(p, x):
    return x @ p["encoder.weight"].T + p["encoder.bias"] if "encoder.weight" in p else x


def params_of(cell):
    return {k: v.detach() for k, v in cell.state_dict().items()}


@pytest.mark.parametrize("input_size", [3, 6])
def test_matches_float64_equations(input_size):
    """Both paths equal the written-out equations in float64 to 1e-12, from a non-zero
    complex state, at a length that is not a multiple of the scan's chunk."""
    torch.manual_seed(0)
    cell = LRUCell(input_size, 6, state_size=4).double()
    x = torch.randn(3, 37, input_size, dtype=torch.float64)
    x0 = torch.randn(3, 4, dtype=torch.complex128)
    p = params_of(cell)
    u, x_re, x_im, outs = reference_input(p, x), x0.real, x0.imag, []
    for t in range(x.shape[1]):
        x_re, x_im = reference_state(p, u[:, t], x_re, x_im)
        outs.append(reference_output(p, u[:, t], x_re, x_im))
    expected = torch.stack(outs, 1)
    for y, (h,) in (cell(x, (x0,)), cell.unrolled(x, (x0,))[:2]):
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h, torch.complex(x_re, x_im), rtol=1e-12, atol=1e-12)


def test_init_is_the_papers_ring():
    """|lambda| in [r_min, r_max], arg lambda in [0, max_phase], gamma = sqrt(1 - |lambda|^2)."""
    torch.manual_seed(0)
    cell = LRUCell(3, 8, state_size=500, r_min=0.4, r_max=0.6, max_phase=0.5).double()
    modulus = torch.exp(-torch.exp(cell.nu_log.detach()))
    phase = torch.exp(cell.theta_log.detach())
    assert 0.4 <= modulus.min() < 0.45 and 0.55 < modulus.max() <= 0.6
    assert 0 <= phase.min() < 0.01 and 0.49 < phase.max() <= 0.5
    torch.testing.assert_close(torch.exp(cell.gamma_log.detach()), (1 - modulus**2).sqrt())


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_scan_equals_step_loop(dtype, tol):
    """Fast (chunked scan) and unrolled (step loop) paths: outputs, final state and every
    parameter gradient equal to ``tol`` (relative to the largest entry)."""
    torch.manual_seed(0)
    cell = LRUCell(3, 6, state_size=5).to(dtype)
    x = torch.randn(4, 50, 3, dtype=dtype)
    x0 = cell.default_state(x)[0] + 0.5
    results = []
    for run in (cell, lambda x, s: cell.unrolled(x, s)[:2]):
        cell.zero_grad()
        y, (h,) = run(x, (x0,))
        (y.square().sum() + h.abs().sum()).backward()
        results.append([y, h] + [p.grad.clone() for p in cell.parameters()])
    for fast, unrolled in zip(*results, strict=True):
        assert (fast - unrolled).abs().max() <= tol * unrolled.abs().max()


@pytest.mark.parametrize("modulus", [(0.0, 0.1), (0.9, 0.999)])
def test_scan_is_stable_at_length_2000(modulus):
    """T = 2000 in float32 with |lambda| near 0 (powers underflow) and near 1: the scan equals
    a float64 step loop on the same lambda to 1e-5 of the largest state."""
    torch.manual_seed(0)
    r = torch.empty(16).uniform_(*modulus)
    log_lambda = torch.complex(torch.log(r), torch.empty(16).uniform_(0, 6.28))
    b = torch.randn(2, 2000, 16, dtype=torch.complex64)
    x0 = torch.randn(2, 16, dtype=torch.complex64)
    states = chunked_scan(log_lambda, b, x0)
    lam, x, expected = torch.exp(log_lambda.cdouble()), x0.cdouble(), []
    for t in range(2000):
        x = lam * x + b[:, t].cdouble()
        expected.append(x)
    expected = torch.stack(expected, 1)
    assert torch.isfinite(torch.view_as_real(states)).all()
    assert (states.cdouble() - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_eigenvalues_stay_inside_the_unit_circle_through_training(tmp_path):
    """100 real Adam steps at lr 0.1 move nu_log by far more than rounding; every |lambda|,
    computed as the cell computes it (float32), stays < 1."""
    module = small_module(CopyTask(gap=5), "lru", hidden_size=8, r_min=0.99, r_max=0.999)
    module.optimizer_factory = functools.partial(torch.optim.Adam, lr=0.1)
    cell = module.model.layers[0]
    before = cell.nu_log.detach().clone()
    fit(module, tmp_path, steps=100)
    assert (cell.nu_log.detach() - before).abs().max() > 1.0
    assert torch.exp(cell.log_lambda().detach()).abs().max() < 1


@pytest.mark.parametrize("truncation", [None, 4])
def test_profile_matches_float64_autograd(tmp_path, truncation):
    """Two layers: the logged ||dL/dx_k|| (x_k complex: the norm over real and imaginary
    parts) equals autograd on the written-out float64 equations, with x_k held as two real
    tensors, to 1e-6; under truncation the reference detaches the state where windows start."""
    task = CopyTask(gap=6)
    module = small_module(task, "lru", num_layers=2, truncation=truncation, lr=0.0, state_size=4)
    w = weights_of(module)
    batch = task.generate(4, batch_generator(0, TRAIN, 0, "cpu"))
    profiles = probe_once(tmp_path, module)

    starts = set(range(0, task.seq_len, truncation)) if truncation else {0}
    u = w["model.encoder.weight"][batch.inputs]
    states = []
    for layer in range(2):
        prefix = f"model.layers.{layer}."
        p = {k.removeprefix(prefix): v for k, v in w.items() if k.startswith(prefix)}
        u = reference_input(p, u)
        x_re = x_im = torch.zeros(4, 4, dtype=torch.float64)
        outs, layer_states = [], []
        for t in range(task.seq_len):
            if t in starts:
                x_re, x_im = x_re.detach(), x_im.detach()
            x_re, x_im = reference_state(p, u[:, t], x_re, x_im)
            x_re = x_re + torch.zeros_like(x_re, requires_grad=True)  # leaves below x_t
            x_im = x_im + torch.zeros_like(x_im, requires_grad=True)
            x_re.retain_grad()
            x_im.retain_grad()
            outs.append(reference_output(p, u[:, t], x_re, x_im))
            layer_states.append((x_re, x_im))
        u = torch.stack(outs, 1)
        states.append(layer_states)
    logits = u @ w["model.readout.weight"].T
    (output_delta(w, u.detach(), batch) * logits).sum().backward()
    for layer, layer_states in enumerate(states):
        expected = [(re.grad**2 + im.grad**2).sum(-1).sqrt().mean() for re, im in layer_states]
        np.testing.assert_allclose(
            profiles[f"h_layer{layer}"], torch.stack(expected), rtol=1e-6, atol=1e-14
        )


def test_bad_options_name_their_key():
    for key, value in (("r_min", 1.0), ("r_max", -0.1), ("r_min", "x")):
        with pytest.raises(ValueError, match=rf"^{key}={value!r} is invalid: {key} accepts"):
            LRUCell(3, 4, **{key: value})
    with pytest.raises(ValueError, match=r"^r_min=0.9 is invalid: r_min accepts a number below"):
        LRUCell(3, 4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match=r"^state_size=0 is invalid"):
        LRUCell(3, 4, state_size=0)
    with pytest.raises(ValueError, match=r"^max_phase=0 is invalid"):
        LRUCell(3, 4, max_phase=0)
