"""The contract every registered cell meets (``bpttlab.cells.CELLS``), checked for each one.

A new cell that registers itself is tested here without a line of test code: its state layout,
fast path against unrolled path, state carried across a split sequence (what TBPTT relies on),
a trace whose last states are the final state, a real training step under every clipping mode
and both precisions, a checkpoint round trip, and a gradient probe that sees every state.
Cell-specific maths (each paper's equations in float64) lives in ``test_cell_<name>.py``.
A cell that takes ``kernel`` is checked with each kernel ("gru:bpttlab" runs bpttlab's own);
fast and unrolled paths agree to 1e-9 in float64 with either.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import fit, small_module

from bpttlab import GradientFlow
from bpttlab.cells import CELLS
from bpttlab.clipping import Clipping
from bpttlab.gradflow import load_profile
from bpttlab.model import RecurrentNet
from bpttlab.tasks import AddingTask, CopyTask

B, T, H, E, VOCAB, OUT = 3, 9, 6, 4, 5, 3
KINDS = sorted(CELLS) + [
    f"{kind}:bpttlab"
    for kind in sorted(CELLS)
    if "kernel" in inspect.signature(CELLS[kind]).parameters
]


def cell_args(variant: str) -> dict:
    """RecurrentNet's kind (and kernel) for a variant of KINDS: "gru" or "gru:bpttlab"."""
    kind, _, kernel = variant.partition(":")
    return {"kind": kind, "kernel": kernel} if kernel else {"kind": kind}


def make_net(kind: str, num_layers: int = 2, seed: int = 0) -> RecurrentNet:
    torch.manual_seed(seed)
    net = RecurrentNet(VOCAB, OUT, **cell_args(kind), hidden_size=H, num_layers=num_layers, t_max=T)
    return net.double()


def tokens(length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, length), generator=torch.Generator().manual_seed(seed))


def flat(state) -> list[torch.Tensor]:
    return [tensor for layer in state for tensor in layer]


def loss_of(outputs, state) -> torch.Tensor:
    """A loss that reaches every output and every final state (fixed random weights)."""
    g = torch.Generator().manual_seed(3)
    loss = (outputs * torch.randn(outputs.shape, generator=g, dtype=outputs.dtype)).sum()
    for s in flat(state):
        real = torch.view_as_real(s) if s.is_complex() else s
        loss = loss + (real * torch.randn(real.shape, generator=g, dtype=real.dtype)).sum()
    return loss


def run_and_grads(net, inputs, state, unrolled: bool):
    net.zero_grad(set_to_none=True)
    run = net(inputs, state, unrolled=unrolled)
    loss_of(run.outputs, run.state).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return run, grads


@pytest.mark.parametrize("kind", KINDS)
def test_state_layout(kind):
    """default_state gives one tensor per state name, batch first; the final state has the same
    layout; outputs are (B, T, output_size)."""
    net = make_net(kind)
    run = net(tokens())
    assert run.outputs.shape == (B, T, OUT)
    assert len(run.state) == 2
    for cell, final in zip(net.layers, run.state, strict=True):
        assert len(final) == len(cell.state_names) >= 1
        default = cell.default_state(torch.zeros(B, T, cell.input_size, dtype=torch.float64))
        for zero, value in zip(default, final, strict=True):
            assert zero.shape == value.shape and zero.shape[0] == B
            assert zero.dtype == value.dtype and not zero.any()


@pytest.mark.parametrize("kind", KINDS)
def test_fast_and_unrolled_paths_agree(kind):
    """float64, from a non-zero carried state: outputs, final state and every parameter gradient
    of the fast path equal the unrolled path's to 1e-9."""
    net = make_net(kind)
    with torch.no_grad():
        carried = net(tokens(5, seed=7)).state  # a state a previous window would carry
    fast, fast_grads = run_and_grads(net, tokens(), carried, unrolled=False)
    slow, slow_grads = run_and_grads(net, tokens(), carried, unrolled=True)
    assert fast.trace is None and slow.trace is not None
    torch.testing.assert_close(slow.outputs, fast.outputs, atol=1e-9, rtol=0)
    for a, b in zip(flat(slow.state), flat(fast.state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    assert slow_grads.keys() == fast_grads.keys() and fast_grads
    for name, grad in fast_grads.items():
        torch.testing.assert_close(slow_grads[name], grad, atol=1e-9, rtol=0, msg=name)


@pytest.mark.parametrize("unrolled", [False, True], ids=["fast", "unrolled"])
@pytest.mark.parametrize("kind", KINDS)
def test_carried_state_continues_the_sequence(kind, unrolled):
    """Running [0, 4) then [4, T) from the carried state gives the outputs and final state of
    one run over [0, T): what truncated BPTT relies on."""
    net = make_net(kind)
    inputs = tokens()
    with torch.no_grad():
        whole = net(inputs, unrolled=unrolled)
        first = net(inputs[:, :4], unrolled=unrolled)
        second = net(inputs[:, 4:], first.state, unrolled=unrolled)
    torch.testing.assert_close(
        torch.cat([first.outputs, second.outputs], 1), whole.outputs, atol=1e-10, rtol=0
    )
    for a, b in zip(flat(second.state), flat(whole.state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_trace_holds_every_state_of_every_step(kind):
    """The unrolled trace lists, for each state name and layer, T tensors of the state's shape,
    the last of which is the final state; its names are the cell's state_names."""
    net = make_net(kind)
    run = net(tokens(), unrolled=True)
    assert tuple(run.trace.steps) == net.state_names
    for index, name in enumerate(net.state_names):
        assert len(run.trace[name]) == 2
        for layer, steps in enumerate(run.trace[name]):
            assert len(steps) == T
            assert torch.equal(steps[-1], run.state[layer][index])
            assert all(s.shape == steps[-1].shape for s in steps)


@pytest.mark.parametrize("mode", ["none", "norm", "value", "timestep"])
@pytest.mark.parametrize("kind", KINDS)
def test_trains_under_every_clipping_mode_and_truncation(tmp_path, kind, mode):
    """Three real optimiser steps under TBPTT(4) in float64, each clipping mode: finite loss,
    the weights move."""
    module = small_module(
        AddingTask(gap=6), **cell_args(kind), truncation=4, clip=Clipping(mode, 0.5)
    )
    before = [p.detach().clone() for p in module.model.parameters()]
    fit(module, tmp_path, steps=3, precision="64-true")
    assert module.updates >= 3 and module.diverged_at_step is None
    after = list(module.model.parameters())
    assert all(p.dtype in (torch.float64, torch.complex128) for p in after)
    assert any(not torch.equal(a, b.double()) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip(kind):
    """A fresh net loaded from another's state_dict computes the same outputs, bitwise."""
    net, fresh = make_net(kind, seed=0), make_net(kind, seed=5)
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(tokens()).outputs, net(tokens()).outputs)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_probe_sees_every_state(tmp_path, kind):
    """A probed step records a profile for every state name of every layer, positive at every
    timestep under full BPTT on copy."""
    module = small_module(CopyTask(gap=4), **cell_args(kind), num_layers=2, lr=0.0)
    flow = GradientFlow(every_n_steps=100, save_dir=str(tmp_path / "gf"))
    fit(module, tmp_path, steps=1, callbacks=[flow], precision="64-true")
    saved = load_profile(tmp_path / "gf" / "step_000000.npz")
    for name in module.model.state_names:
        for layer in range(2):
            profile = saved[f"{name}_layer{layer}"]
            assert profile.shape == (module.task.seq_len,) and (profile > 0).all()


@pytest.mark.parametrize("kind", KINDS + ["lstm:onednn"])
def test_a_kernel_trace_reads_the_gradient_into_every_state(kind):
    """Where a cell serves a read-only trace from its kernel (``cells.paths.choose_path``), the gradient of
    each sink at step t equals the gradient flowing into that state on the unrolled path, in
    float64, for every layer, with a loss on every output and final state; the outputs and the
    parameters' gradients are those of the fast path."""
    options = {"kind": "lstm", "onednn": True} if kind == "lstm:onednn" else cell_args(kind)
    torch.manual_seed(0)
    net = RecurrentNet(VOCAB, OUT, **options, hidden_size=H, num_layers=2, t_max=T).double()
    traced = net(tokens(), traced=True)
    if not traced.trace.sinks:
        assert all(len(steps) == T for steps in traced.trace[net.state_names[0]])
        pytest.skip(f"{kind} has no kernel trace: its step loop serves it")
    sink_grads = {key: [] for key in traced.trace.sinks}
    for key, sink in traced.trace.sinks.items():
        sink.register_hook(sink_grads[key].append)
    loss_of(traced.outputs, traced.state).backward()

    unrolled = net(tokens(), unrolled=True)
    states = list(unrolled.trace.states())
    for state in (s for *_, s in states):
        state.retain_grad()
    loss_of(unrolled.outputs, unrolled.state).backward()
    assert len(sink_grads) == len(net.state_names) * 2
    for name, layer, t, state in states:
        (grad,) = sink_grads[(name, layer)]
        torch.testing.assert_close(grad[t], state.grad, rtol=1e-9, atol=1e-12)
