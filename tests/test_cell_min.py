"""minGRU and minLSTM (Feng et al. 2024) against their equations written out in float64: the
log-space scan and the step loop, the residual block, long sequences, the zero initial state,
and the logged gradient profile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import small_module
from test_gradflow import probe_once, weights_of

from bpttlab import CopyTask
from bpttlab.cells import CELLS
from bpttlab.checks import ConfigError
from bpttlab.tasks import TRAIN, batch_generator

KINDS = ("mingru", "minlstm")


def sigmoid(v):
    return 1 / (1 + torch.exp(-v))


def g(v):
    """The paper's g: v + 0.5 for v >= 0, sigmoid(v) below."""
    return torch.where(v >= 0, v + 0.5, sigmoid(v))


def rms_norm(v, weight):
    return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-6) * weight


def gelu(v):
    return 0.5 * v * (1 + torch.erf(v / math.sqrt(2)))


def reference(kind, w, x, h0, leaves=None):
    """The layer in float64, one step at a time, from its parameters ``w`` (name -> tensor):
    minGRU h = (1 - z) h + z g(c); minLSTM h = f/(f+i) h + i/(f+i) g(c); inside the pre-norm
    residual block with MLP when ``w`` has its norm. ``leaves[t]`` is added to h_t (zero leaves
    whose gradients are dL/dh_t). Returns (outputs, every h_t)."""
    block = "norm.weight" in w
    stream = x @ w["proj_in.weight"].T + w["proj_in.bias"] if "proj_in.weight" in w else x
    u = rms_norm(stream, w["norm.weight"]) if block else x
    pre = u @ w["linear.weight"].T + w["linear.bias"]
    S = len(h0[0])
    h, hs = h0, []
    for t in range(x.shape[1]):
        c = pre[:, t, :S]
        if kind == "mingru":
            z = sigmoid(pre[:, t, S:])
            h = (1 - z) * h + z * g(c)
        else:
            f, i = sigmoid(pre[:, t, S : 2 * S]), sigmoid(pre[:, t, 2 * S :])
            h = f / (f + i) * h + i / (f + i) * g(c)
        if leaves is not None:
            h = h + leaves[t]
        hs.append(h)
    y = torch.stack(hs, 1)
    if "out.weight" in w:
        y = y @ w["out.weight"].T + w["out.bias"]
    if block:
        y = stream + y
        if "ff_norm.weight" in w:
            hidden = gelu(rms_norm(y, w["ff_norm.weight"]) @ w["ff.0.weight"].T + w["ff.0.bias"])
            y = y + hidden @ w["ff.2.weight"].T + w["ff.2.bias"]
    return y, hs


def make_cell(kind, dtype, seed=0, input_size=5, hidden_size=6, **options):
    torch.manual_seed(seed)
    return CELLS[kind](input_size, hidden_size, **options).to(dtype)


def inputs(cell, dtype, T=30, B=3, zero_state=False, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, cell.input_size, generator=generator, dtype=dtype)
    h0 = torch.rand(B, cell.state_size, generator=generator, dtype=dtype) * 2
    return x, torch.zeros_like(h0) if zero_state else h0


OPTIONS = [
    {},  # the paper's block, expansion 1, input width != hidden width (input projection)
    {"block": False},  # the bare recurrence, y_t = h_t
    {"block": False, "expansion": 1.5},  # state of 9 units, read out by W_out
    {"expansion": 2.0, "ff_mult": 0},  # block without MLP
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_both_paths_follow_the_paper_equations_float64(kind, options):
    """Scan and step loop both equal the equations written out, to 1e-12 (outputs and final
    state), from a positive initial state."""
    cell = make_cell(kind, torch.float64, **options)
    x, h0 = inputs(cell, torch.float64)
    w = {name: p.detach() for name, p in cell.named_parameters()}
    y_ref, hs = reference(kind, w, x, h0)
    for y, (h,) in (cell(x, (h0,)), cell.unrolled(x, (h0,))[:2]):
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(h, hs[-1], atol=1e-12, rtol=0)
    assert (torch.stack(hs) > 0).all()  # the states stay positive


def run_and_grads(cell, x, h0, unrolled):
    """Outputs, final state and the gradients of every parameter and of h_0 for a loss that
    weighs every output and the final state."""
    h0 = h0.clone().requires_grad_(True)
    cell.zero_grad()
    if unrolled:
        y, (h,), steps = cell.unrolled(x, (h0,))
        assert len(steps["h"]) == x.shape[1]
        torch.testing.assert_close(steps["h"][-1], h, atol=0, rtol=0)
    else:
        y, (h,) = cell(x, (h0,))
    generator = torch.Generator().manual_seed(3)
    weigh_y = torch.randn(y.shape, generator=generator, dtype=y.dtype)
    weigh_h = torch.randn(h.shape, generator=generator, dtype=h.dtype)
    ((y * weigh_y).sum() + (h * weigh_h).sum()).backward()
    grads = {name: p.grad.clone() for name, p in cell.named_parameters()}
    return y.detach(), h.detach(), grads | {"h0": h0.grad}


# Largest difference between the paths, relative to the largest value of each compared tensor.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-4}


@pytest.mark.parametrize("zero_state", [False, True], ids=["h0>0", "h0=0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("options", OPTIONS[:2], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_scan_and_step_loop_agree(kind, options, dtype, zero_state):
    """Fast (log-space scan) vs unrolled (step loop): outputs, final state, every parameter's
    gradient and h_0's, to 1e-10 (float64) / 2e-4 (float32) of the largest value, T = 50
    (measured worst over seeds and options: 1.4e-13 / 7e-5)."""
    cell = make_cell(kind, dtype, **options)
    x, h0 = inputs(cell, dtype, T=50, zero_state=zero_state)
    fast = run_and_grads(cell, x, h0, unrolled=False)
    loop = run_and_grads(cell, x, h0, unrolled=True)
    scale = TOLERANCE[dtype]
    torch.testing.assert_close(fast[0], loop[0], atol=scale * loop[0].abs().max(), rtol=0)
    torch.testing.assert_close(fast[1], loop[1], atol=scale * loop[1].abs().max(), rtol=0)
    assert fast[2].keys() == loop[2].keys()
    for name, grad in loop[2].items():
        assert torch.isfinite(fast[2][name]).all(), name
        torch.testing.assert_close(fast[2][name], grad, atol=scale * grad.abs().max(), rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_scan_long_sequence_from_zero_state(kind):
    """T = 2000 from the zero state: the float32 scan's outputs, final state and gradients are
    finite (no log 0 = -inf reaches a NaN), and its states are within 2e-3 (relative) of the
    float64 step loop; the float64 scan matches the float64 loop to 1e-9."""
    cell = make_cell(kind, torch.float64, block=False)
    x, h0 = inputs(cell, torch.float64, T=2000, B=2, zero_state=True)
    loop = run_and_grads(cell, x, h0, unrolled=True)
    fast64 = run_and_grads(cell, x, h0, unrolled=False)
    fast32 = run_and_grads(cell.float(), x.float(), h0.float(), unrolled=False)
    for value in (*fast32[:2], *fast32[2].values()):
        assert torch.isfinite(value).all()
    for name, grad in loop[2].items():
        torch.testing.assert_close(fast64[2][name], grad, atol=1e-9 * grad.abs().max(), rtol=0)
    torch.testing.assert_close(fast64[0], loop[0], atol=1e-9 * loop[0].abs().max(), rtol=0)
    torch.testing.assert_close(fast32[0].double(), loop[0], atol=0, rtol=2e-3)


@pytest.mark.parametrize("options", OPTIONS[:2], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_profile_matches_zero_leaf_reference(tmp_path, kind, options):
    """Two layers on copy: the logged ||dL/dh_k|| of both layers equals the per-example norm of
    the batch-sum loss's gradient at a zero leaf added to every h_k of the written-out float64
    reference, averaged over the batch."""
    task = CopyTask(gap=5)
    module = small_module(task, kind, num_layers=2, lr=0.0, **options)
    w = weights_of(module)
    batch = task.generate(4, batch_generator(0, TRAIN, 0, "cpu"))
    saved = probe_once(tmp_path, module)

    T, B, H = task.seq_len, 4, 6
    leaves = [torch.zeros(T, B, H, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    x = w["model.encoder.weight"][batch.inputs]
    for layer in (0, 1):
        prefix = f"model.layers.{layer}."
        layer_w = {k.removeprefix(prefix): v for k, v in w.items() if k.startswith(prefix)}
        x, _ = reference(kind, layer_w, x, torch.zeros(B, H, dtype=torch.float64), leaves[layer])
    logits = x @ w["model.readout.weight"].T + w["model.readout.bias"]
    losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch.targets, reduction="none"
    )
    loss_sum = B * (losses * batch.mask).sum() / batch.mask.sum()
    grads = torch.autograd.grad(loss_sum, leaves)
    for layer, grad in enumerate(grads):
        expected = grad.norm(dim=-1).mean(dim=-1).numpy()
        assert expected.min() > 0
        np.testing.assert_allclose(saved[f"h_layer{layer}"], expected, rtol=1e-6, atol=1e-14)


def test_forget_bias_adds_to_minlstm_forget_gate():
    """forget_bias moves the forget-gate rows of the bias (W_h, W_f, W_i order), nothing else."""
    plain = make_cell("minlstm", torch.float32)
    biased = make_cell("minlstm", torch.float32, forget_bias=2.0)
    difference = (biased.linear.bias - plain.linear.bias).detach()
    S = plain.state_size
    expected = torch.cat([torch.zeros(S), torch.full((S,), 2.0), torch.zeros(S)])
    torch.testing.assert_close(difference, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kind", "options", "key"),
    [
        ("mingru", {"expansion": 0}, "expansion"),
        ("mingru", {"expansion": 0.1}, "expansion"),
        ("minlstm", {"block": "yes"}, "block"),
        ("mingru", {"ff_mult": -1}, "ff_mult"),
        ("minlstm", {"forget_bias": "one"}, "forget_bias"),
    ],
)
def test_bad_options_name_their_key(kind, options, key):
    with pytest.raises(ConfigError) as error:
        CELLS[kind](5, 6, **options)
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}=")
