"""The orthogonal RNN (expRNN): its equations in float64, its paths, W_hh orthogonal through
training, the recurrent learning rate, and the exact gradient profile."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import fit, small_module
from test_gradflow import output_delta, probe_once, weights_of

from bpttlab import CopyTask
from bpttlab.cells import OrthogonalCell
from bpttlab.tasks import TRAIN, batch_generator


def expm_taylor(a: torch.Tensor) -> torch.Tensor:
    """exp(a) by scaling and squaring a 30-term Taylor series, in float64."""
    squarings = max(0, int(np.ceil(np.log2(max(a.abs().sum(-1).max().item(), 1e-300)))) + 1)
    a = a / 2**squarings
    term = total = torch.eye(len(a), dtype=torch.float64)
    for k in range(1, 30):
        term = term @ a / k
        total = total + term
    for _ in range(squarings):
        total = total @ total
    return total


def reference(w_ih, stored, bias, x, h):
    """expRNN written out: A = L - L^T (L the strictly lower triangle of the stored matrix),
    W = exp(A), h_t = sign(z) max(|z| + b, 0), z = W h_{t-1} + W_ih x_t. Returns every h_t."""
    lower = torch.tril(stored, -1)
    w = expm_taylor(lower - lower.T)
    hs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ w_ih.T + h @ w.T
        h = torch.sign(z) * torch.clamp(z.abs() + bias, min=0.0)
        hs.append(h)
    return hs


@pytest.mark.parametrize("init", ["henaff", "cayley", "random"])
def test_matches_float64_equations(init):
    """Both paths equal the written-out equations in float64 to 1e-12, from a non-zero state."""
    torch.manual_seed(0)
    cell = OrthogonalCell(3, 6, init=init).double()
    x, h0 = torch.randn(4, 25, 3, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    params = [p.detach() for p in (cell.input.weight, cell.skew, cell.bias)]
    expected = torch.stack(reference(*params, x, h0), 1)
    for y, (h,) in (cell(x, (h0,)), cell.unrolled(x, (h0,))[:2]):
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h, expected[:, -1], rtol=1e-12, atol=1e-12)


def test_inits_are_the_papers():
    """henaff: 2 x 2 rotation blocks with angles in [-pi, pi]; cayley: blocks -tan(s / 2) in
    [-1, 0]; b in [-0.01, 0.01]; random: a rotation (det +1)."""
    torch.manual_seed(0)
    for init, low, high in (("henaff", -np.pi, np.pi), ("cayley", -1.0, 0.0)):
        cell = OrthogonalCell(3, 8, init=init)
        a = torch.tril(cell.skew.detach(), -1)
        angles = a.diagonal(-1)[::2]
        assert torch.count_nonzero(a) == 4 and (angles >= low).all() and (angles <= high).all()
        assert cell.bias.abs().max() <= 0.01
    w = OrthogonalCell(3, 8, init="random").w_hh.detach().double()
    assert torch.det(w).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_and_unrolled_are_bitwise_equal(dtype):
    """One step loop behind both paths: outputs, final state and gradients equal bitwise."""
    torch.manual_seed(0)
    cell = OrthogonalCell(3, 6).to(dtype)
    x = torch.randn(4, 12, 3, dtype=dtype)
    results = []
    for run in (cell, lambda x, s: cell.unrolled(x, s)[:2]):
        cell.zero_grad()
        y, (h,) = run(x, cell.default_state(x))
        (y.square().sum() + h.sum()).backward()
        results.append([y, h] + [p.grad.clone() for p in cell.parameters()])
    for fast, unrolled in zip(*results, strict=True):
        assert torch.equal(fast, unrolled)


def adam_module(task, lr, **cell_options):
    module = small_module(task, "orthogonal", hidden_size=8, **cell_options)
    module.optimizer_factory = functools.partial(torch.optim.Adam, lr=lr)
    return module


def test_w_hh_stays_orthogonal_through_training(tmp_path):
    """100 real Adam steps at lr 1e-2 move A by far more than rounding; W_hh stays orthogonal
    to 1e-5 (max-norm of W W^T - I, float32)."""
    module = adam_module(CopyTask(gap=5), lr=1e-2)
    cell = module.model.layers[0]
    before = cell.skew.detach().clone()
    fit(module, tmp_path, steps=100)
    assert (cell.skew.detach() - before).abs().max() > 0.1
    w = cell.w_hh.detach()
    assert (w @ w.T - torch.eye(8)).abs().max() < 1e-5


def test_recurrent_lr_is_the_skew_parameters_own(tmp_path):
    """The optimiser that training builds holds A in a group with lr = recurrent_lr, and one
    SGD step moves A by recurrent_lr x grad while the other weights move by lr x grad."""
    module = adam_module(CopyTask(gap=5), lr=1e-2, recurrent_lr=1e-4)
    cell = module.model.layers[0]
    groups = module.configure_optimizers().param_groups
    (skew_group,) = [g for g in groups if any(p is cell.skew for p in g["params"])]
    assert skew_group["lr"] == 1e-4 and skew_group["params"] == [cell.skew]
    assert all(g["lr"] == 1e-2 for g in groups if g is not skew_group)

    optimizer = torch.optim.SGD(module.model.optimizer_groups(), lr=1.0)
    x = torch.randn(2, 7, 5)
    module.model.zero_grad()
    module.model(x.argmax(-1)).outputs.square().sum().backward()
    before = [p.detach().clone() for p in (cell.skew, cell.input.weight)]
    grads = [p.grad.clone() for p in (cell.skew, cell.input.weight)]
    optimizer.step()
    torch.testing.assert_close(cell.skew.detach(), before[0] - 1e-4 * grads[0])
    torch.testing.assert_close(cell.input.weight.detach(), before[1] - 1.0 * grads[1])


@pytest.mark.parametrize("truncation", [None, 4])
def test_profile_matches_float64_autograd(tmp_path, truncation):
    """The logged ||dL/dh_k|| equals autograd on the written-out float64 equations (the
    per-example norm of the batch-sum loss's gradient, averaged over the batch) to 1e-6; under
    truncation the reference detaches h where each window starts."""
    task = CopyTask(gap=6)
    module = small_module(task, "orthogonal", truncation=truncation, lr=0.0)
    w = weights_of(module)
    batch = task.generate(4, batch_generator(0, TRAIN, 0, "cpu"))
    profile = probe_once(tmp_path, module)["h_layer0"]

    prefix = "model.layers.0."
    x = w["model.encoder.weight"][batch.inputs]
    params = [w[prefix + "input.weight"], w[prefix + "recurrent.parametrizations.weight.original"]]
    starts = set(range(0, task.seq_len, truncation)) if truncation else {0}
    h, hs = torch.zeros(4, 6, dtype=torch.float64), []
    for t in range(task.seq_len):
        h = h.detach() if t in starts else h
        (h,) = reference(*params, w[prefix + "bias"], x[:, t : t + 1], h)
        h = h + torch.zeros_like(h, requires_grad=True)  # a leaf below h_t: h_t needs a grad
        h.retain_grad()
        hs.append(h)
    logits = torch.stack(hs, 1) @ w["model.readout.weight"].T
    delta = output_delta(w, torch.stack(hs, 1).detach(), batch)
    (delta * logits).sum().backward()
    expected = [h.grad.norm(dim=-1).mean().item() for h in hs]
    np.testing.assert_allclose(profile, expected, rtol=1e-6, atol=1e-14)


def test_bad_options_name_their_key():
    with pytest.raises(ValueError, match=r"^init='x' is invalid: init accepts one of henaff"):
        OrthogonalCell(3, 4, init="x")
    with pytest.raises(ValueError, match=r"^recurrent_lr=0 is invalid"):
        OrthogonalCell(3, 4, recurrent_lr=0)
