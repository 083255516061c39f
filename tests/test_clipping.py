"""Clipping: by global norm, by value, none, and per timestep on the backpropagated delta.

The per-timestep mode is checked against an explicit backward recursion for a tanh RNN written
here in float64 without autograd.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import RecordingModule, RecordingSGD, fit_one_batch
from torch import nn

from bpttlab.bptt import BPTT
from bpttlab.checks import ConfigError
from bpttlab.clipping import Clipping
from bpttlab.model import RecurrentNet
from bpttlab.tasks import AddingTask


def parameters_with_grads(seed: int = 0, scale: float = 1.0) -> list[nn.Parameter]:
    """Three float64 parameters with random gradients, and one without a gradient."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in [(3, 4), (5,), (2, 2, 2)]:
        p = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
        p.grad = scale * torch.randn(shape, generator=g, dtype=torch.float64)
        params.append(p)
    params.append(nn.Parameter(torch.zeros(3, dtype=torch.float64)))  # grad None
    return params


def manual_norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((g * g).sum()) for g in grads))


# -- norm, value, none ---------------------------------------------------------------------


def test_norm_mode_rescales_to_threshold_when_above():
    """mode=norm above the threshold: returns the pre-clip global norm and clipped=True, and
    scales every gradient by threshold / norm, so the new global norm is the threshold."""
    params = parameters_with_grads(scale=2.0)
    before = [p.grad.clone() for p in params[:3]]
    norm = manual_norm(before)
    threshold = norm / 3
    returned, clipped = Clipping(mode="norm", threshold=threshold).clip_parameters(params)
    assert clipped is True
    assert returned.item() == pytest.approx(norm, rel=1e-12)
    after = [p.grad for p in params[:3]]
    assert manual_norm(after) == pytest.approx(threshold, rel=1e-5)
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b * (threshold / norm), rtol=1e-5, atol=0)
    assert params[3].grad is None


def test_norm_mode_leaves_gradients_below_threshold():
    """mode=norm below the threshold: gradients untouched (bitwise), clipped=False, the global
    norm is still returned."""
    params = parameters_with_grads(seed=1)
    before = [p.grad.clone() for p in params[:3]]
    norm = manual_norm(before)
    returned, clipped = Clipping(mode="norm", threshold=2 * norm).clip_parameters(params)
    assert clipped is False
    assert returned.item() == pytest.approx(norm, rel=1e-12)
    for p, b in zip(params[:3], before, strict=True):
        assert torch.equal(p.grad, b)


def test_value_mode_clamps_elements():
    """mode=value: every element ends within [-t, t]; elements already inside are unchanged,
    the others become +-t with their sign; clipped=True; returns the pre-clip norm."""
    params = parameters_with_grads(seed=2, scale=2.0)
    before = [p.grad.clone() for p in params[:3]]
    t = 1.0
    assert any((b.abs() > t).any() for b in before) and any((b.abs() <= t).any() for b in before)
    returned, clipped = Clipping(mode="value", threshold=t).clip_parameters(params)
    assert clipped is True
    assert returned.item() == pytest.approx(manual_norm(before), rel=1e-12)
    for p, b in zip(params[:3], before, strict=True):
        inside = b.abs() <= t
        assert (p.grad.abs() <= t).all()
        assert torch.equal(p.grad[inside], b[inside])
        assert torch.equal(p.grad[~inside], torch.sign(b[~inside]) * t)


def test_value_mode_below_threshold_reports_no_clipping():
    """mode=value with every element inside [-t, t]: nothing changes and clipped=False."""
    params = parameters_with_grads(seed=3)
    before = [p.grad.clone() for p in params[:3]]
    t = max(float(b.abs().max()) for b in before) * 1.01
    _, clipped = Clipping(mode="value", threshold=t).clip_parameters(params)
    assert clipped is False
    for p, b in zip(params[:3], before, strict=True):
        assert torch.equal(p.grad, b)


def test_none_mode_changes_nothing_and_returns_norm():
    """mode=none: gradients untouched even far above the threshold; returns the norm and
    clipped=False."""
    params = parameters_with_grads(seed=4, scale=10.0)
    before = [p.grad.clone() for p in params[:3]]
    returned, clipped = Clipping(mode="none", threshold=1e-3).clip_parameters(params)
    assert clipped is False
    assert returned.item() == pytest.approx(manual_norm(before), rel=1e-12)
    for p, b in zip(params[:3], before, strict=True):
        assert torch.equal(p.grad, b)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"mode": "foo"}, "mode"),
        ({"mode": "Norm"}, "mode"),
        ({"mode": "norm", "threshold": 0}, "threshold"),
        ({"mode": "norm", "threshold": -1}, "threshold"),
        ({"mode": "value", "threshold": float("inf")}, "threshold"),
        ({"mode": "timestep", "threshold": float("nan")}, "threshold"),
        ({"mode": "norm", "threshold": "1"}, "threshold"),
    ],
)
def test_invalid_clipping_raises_config_error(kwargs, key):
    """Bad mode / threshold raise ConfigError naming the key in a one-line message."""
    with pytest.raises(ConfigError) as info:
        Clipping(**kwargs)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}=") and "\n" not in str(info.value)


def test_valid_clipping_settings():
    """Every mode with a positive threshold (int or float) is accepted; only timestep hooks the
    trace (and so needs the unrolled path)."""
    for mode in ("none", "norm", "value", "timestep"):
        clip = Clipping(mode=mode, threshold=2)
        assert clip.threshold == 2.0 and bool(clip.trace_hooks(4)) == (mode == "timestep")


# -- per timestep --------------------------------------------------------------------------

B, T, H, E = 4, 12, 4, 3


def make_rnn(scale: float = 2.0, seed: int = 0) -> RecurrentNet:
    """A float64 single-layer tanh RNN on 2 real channels whose W_hh is ``scale`` times an
    orthogonal matrix: large enough that the backward delta grows going back in time."""
    torch.manual_seed(seed)
    net = RecurrentNet(2, 1, token_input=False, kind="rnn", hidden_size=H, embedding_dim=E)
    net = net.double()
    with torch.no_grad():
        q = torch.linalg.qr(torch.randn(H, H, dtype=torch.float64))[0]
        net.layers[0].rnn.weight_hh_l0.copy_(scale * q)
    return net


def explicit_clipped_backward(net: RecurrentNet, inputs, targets, loss_steps, threshold):
    """Forward and backward of the tanh RNN by hand (no autograd), with the loss
    L = sum_{b, t in loss_steps} (y_bt - target_bt)^2 / B. Going back in time, the delta into
    h_k is direct term + W_hh^T (delta_{k+1} * (1 - h_{k+1}^2)); an example's delta is rescaled
    when B * ||delta|| > threshold. Returns (parameter grads by name, raw deltas, clipped
    deltas), deltas indexed by k."""
    p = {n: w.detach() for n, w in net.named_parameters()}
    w_enc, b_enc = p["encoder.weight"], p["encoder.bias"]
    w_ih, w_hh = p["layers.0.rnn.weight_ih_l0"], p["layers.0.rnn.weight_hh_l0"]
    w_o, b_o = p["readout.weight"], p["readout.bias"]
    batch, steps = inputs.shape[:2]
    x = inputs @ w_enc.T + b_enc
    h = torch.zeros(batch, H, dtype=torch.float64)
    hs, previous = [], []
    for t in range(steps):
        previous.append(h)
        h = torch.tanh(
            x[:, t] @ w_ih.T
            + p["layers.0.rnn.bias_ih_l0"]
            + h @ w_hh.T
            + p["layers.0.rnn.bias_hh_l0"]
        )
        hs.append(h)
    grads = {n: torch.zeros_like(w) for n, w in p.items()}
    direct = {}
    for t in loss_steps:
        dy = 2 * (hs[t] @ w_o.T + b_o - targets[:, t, None]) / batch  # (B, 1)
        grads["readout.weight"] += dy.T @ hs[t]
        grads["readout.bias"] += dy.sum(0)
        direct[t] = dy @ w_o
    raw, clipped = [None] * steps, [None] * steps
    recurrent = torch.zeros(batch, H, dtype=torch.float64)
    for k in reversed(range(steps)):
        delta = recurrent + direct.get(k, 0.0)
        raw[k] = delta
        norms = (batch * delta).norm(dim=1, keepdim=True)
        delta = torch.where(norms > threshold, delta * (threshold / norms), delta)
        clipped[k] = delta
        da = delta * (1 - hs[k] ** 2)  # gradient of the pre-activation
        grads["layers.0.rnn.weight_hh_l0"] += da.T @ previous[k]
        grads["layers.0.rnn.bias_hh_l0"] += da.sum(0)
        grads["layers.0.rnn.weight_ih_l0"] += da.T @ x[:, k]
        grads["layers.0.rnn.bias_ih_l0"] += da.sum(0)
        dx = da @ w_ih
        grads["encoder.weight"] += dx.T @ inputs[:, k]
        grads["encoder.bias"] += dx.sum(0)
        recurrent = da @ w_hh
    return grads, raw, clipped


def data(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.rand(B, T, 2, generator=g, dtype=torch.float64)
    targets = torch.randn(B, T, generator=g, dtype=torch.float64)
    return inputs, targets


def pick_threshold(net, inputs, targets, loss_steps) -> float:
    """A threshold between the smallest and largest unclipped per-example delta norm."""
    _, raw, _ = explicit_clipped_backward(net, inputs, targets, loss_steps, math.inf)
    norms = torch.stack([(B * d).norm(dim=1) for d in raw])
    return math.sqrt(float(norms.min()) * float(norms.max()))


def test_explicit_recursion_matches_autograd_without_clipping():
    """The hand-written backward (infinite threshold) gives autograd's parameter gradients, so
    it is a valid reference for the clipped case."""
    net = make_rnn()
    inputs, targets = data()
    outputs, _, _ = net(inputs, unrolled=True)
    loss = (outputs[:, -1, 0] - targets[:, -1]).square().sum() / B
    loss.backward()
    expected, _, _ = explicit_clipped_backward(net, inputs, targets, [T - 1], math.inf)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-12, rtol=0, msg=name)


@pytest.mark.parametrize("loss_at", ["last", "every"])
def test_timestep_clipping_matches_explicit_recursion(loss_at):
    """mode=timestep: with hooks from trace_hooks, the parameter gradients equal those of
    the explicit clipped backward recursion; hooks registered before the clipping see the raw
    deltas of the explicit recursion, hooks after see the clipped ones; no per-example delta
    of the batch-sum loss exceeds the threshold afterwards, deltas under it pass bitwise, and
    the counter and the returned flag report the clipping."""
    net = make_rnn()
    inputs, targets = data()
    loss_steps = [T - 1] if loss_at == "last" else list(range(T))
    threshold = pick_threshold(net, inputs, targets, loss_steps)
    clip = Clipping(mode="timestep", threshold=threshold)

    outputs, _, trace = net(inputs, unrolled=True)
    raw_seen: dict[int, torch.Tensor] = {}
    clipped_seen: dict[int, torch.Tensor] = {}
    for t, state in enumerate(trace["h"][0]):
        state.register_hook(functools.partial(raw_seen.__setitem__, t))
    for hook in clip.trace_hooks(batch_size=B):
        hook(trace, 0)
    for t, state in enumerate(trace["h"][0]):
        state.register_hook(functools.partial(clipped_seen.__setitem__, t))
    loss = (outputs[:, loss_steps, 0] - targets[:, loss_steps]).square().sum() / B
    loss.backward()

    expected, raw, clipped = explicit_clipped_backward(net, inputs, targets, loss_steps, threshold)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-10, rtol=0, msg=name)
    assert sorted(raw_seen) == sorted(clipped_seen) == list(range(T))
    over_steps = 0
    n_clipped = n_kept = 0
    for k in range(T):
        torch.testing.assert_close(raw_seen[k], raw[k], atol=1e-10, rtol=0)
        torch.testing.assert_close(clipped_seen[k], clipped[k], atol=1e-10, rtol=0)
        raw_norms = (B * raw_seen[k]).norm(dim=1)
        out_norms = (B * clipped_seen[k]).norm(dim=1)
        assert (out_norms <= threshold * (1 + 1e-12)).all()
        over = raw_norms > threshold
        assert torch.equal(clipped_seen[k][~over], raw_seen[k][~over])
        torch.testing.assert_close(out_norms[over], torch.full_like(out_norms[over], threshold))
        over_steps += int(over.any())
        n_clipped += int(over.sum())
        n_kept += int((~over).sum())
    assert n_clipped > 0 and n_kept > 0  # the threshold bites somewhere, not everywhere

    unclipped, _, _ = explicit_clipped_backward(net, inputs, targets, loss_steps, math.inf)
    assert not torch.allclose(
        expected["layers.0.rnn.weight_hh_l0"], unclipped["layers.0.rnn.weight_hh_l0"]
    )

    assert clip.clipped_deltas == over_steps
    norm, was_clipped = clip.clip_parameters(net.parameters())
    assert was_clipped is True and clip.clipped_deltas == 0
    assert norm.item() == pytest.approx(manual_norm([p.grad for p in net.parameters()]))
    _, again = clip.clip_parameters(net.parameters())
    assert again is False  # the flag covers deltas since the previous call only


def test_timestep_clipping_above_every_delta_changes_nothing():
    """A threshold above every delta leaves autograd's gradient bitwise unchanged and reports
    no clipping."""
    net = make_rnn()
    inputs, targets = data()

    def grads(clip: Clipping | None):
        net.zero_grad(set_to_none=True)
        outputs, _, trace = net(inputs, unrolled=True)
        if clip is not None:
            for hook in clip.trace_hooks(batch_size=B):
                hook(trace, 0)
        ((outputs[:, -1, 0] - targets[:, -1]).square().sum() / B).backward()
        return [p.grad.clone() for p in net.parameters()]

    clip = Clipping(mode="timestep", threshold=1e6)
    for a, b in zip(grads(clip), grads(None), strict=True):
        assert torch.equal(a, b)
    assert clip.clipped_deltas == 0
    assert clip.clip_parameters(net.parameters())[1] is False


@pytest.mark.parametrize("mode", ["none", "norm", "value"])
def test_trace_hooks_is_a_no_op_for_other_modes(mode):
    """trace_hooks registers nothing outside mode=timestep: the gradient is unchanged."""
    net = make_rnn()
    inputs, targets = data()
    outputs, _, trace = net(inputs, unrolled=True)
    clip = Clipping(mode=mode, threshold=1e-9)
    for hook in clip.trace_hooks(batch_size=B):
        hook(trace, 0)
    ((outputs[:, -1, 0] - targets[:, -1]).square().sum() / B).backward()
    expected, _, _ = explicit_clipped_backward(net, inputs, targets, [T - 1], math.inf)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-12, rtol=0, msg=name)
    assert clip.clipped_deltas == 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_timestep_clipping_covers_every_state_of_gated_cells(kind):
    """For a 2-layer LSTM/GRU, every state of the trace (h of both layers, and c for LSTM) is
    hooked: the delta leaving each is within threshold / B per example, and clipping is
    reported."""
    torch.manual_seed(0)
    net = RecurrentNet(2, 1, token_input=False, kind=kind, hidden_size=H, num_layers=2)
    net = net.double()
    inputs, targets = data()
    threshold = 1e-3
    clip = Clipping(mode="timestep", threshold=threshold)
    outputs, _, trace = net(inputs, unrolled=True)
    for hook in clip.trace_hooks(batch_size=B):
        hook(trace, 0)
    seen = []
    for key, layer, t, state in trace.states():
        state.register_hook(lambda g, key=(key, layer, t): seen.append((key, g)))
    ((outputs[:, :, 0] - targets).square().sum() / B).backward()
    states = list(trace.states())
    assert len(seen) == len(states) == T * 2 * (2 if kind == "lstm" else 1)
    for _, g in seen:
        assert ((B * g).norm(dim=1) <= threshold * (1 + 1e-12)).all()
    assert clip.clipped_deltas > 0
    assert clip.clip_parameters(net.parameters())[1] is True


# -- through the training step --------------------------------------------------------------


def clipped_step(net: RecurrentNet, threshold: float, root):
    """One real training step (full BPTT, adding task, timestep clipping) on ``net``; returns
    the module and the gradients of its updates."""
    record: list = []
    module = RecordingModule(
        net,
        AddingTask(gap=T),
        functools.partial(RecordingSGD, record=record),
        bptt=BPTT(),
        clipping=Clipping(mode="timestep", threshold=threshold),
        batch_size=B,
    )
    fit_one_batch(module, root)
    return module, record


def test_training_step_applies_timestep_clipping(tmp_path):
    """A real training step with Clipping(mode="timestep") on the adding task (batch-mean loss
    at the last step) applies exactly the explicit clipped recursion's gradient and counts the
    update as clipped; with a threshold above every delta it applies the unclipped gradient
    and counts nothing."""
    net = make_rnn()
    loose, loose_record = clipped_step(net, 1e6, tmp_path)
    (batch,) = loose.drawn
    assert batch.inputs.dtype == torch.float64
    unclipped, _, _ = explicit_clipped_backward(net, batch.inputs, batch.targets, [T - 1], 1e6)
    (update,) = loose_record
    for (name, _), g in zip(net.named_parameters(), update, strict=True):
        torch.testing.assert_close(g, unclipped[name], atol=1e-10, rtol=0, msg=name)
    assert loose.updates == 1 and loose.clipped_updates == 0

    threshold = pick_threshold(net, batch.inputs, batch.targets, [T - 1])
    tight, tight_record = clipped_step(net, threshold, tmp_path)  # same seed: the same batch
    (same,) = tight.drawn
    assert torch.equal(same.inputs, batch.inputs)
    expected, _, _ = explicit_clipped_backward(net, batch.inputs, batch.targets, [T - 1], threshold)
    (update,) = tight_record
    for (name, _), g in zip(net.named_parameters(), update, strict=True):
        torch.testing.assert_close(g, expected[name], atol=1e-10, rtol=0, msg=name)
    assert not torch.allclose(
        expected["layers.0.rnn.weight_hh_l0"], unclipped["layers.0.rnn.weight_hh_l0"]
    )
    assert tight.updates == 1 and tight.clipped_updates == 1
