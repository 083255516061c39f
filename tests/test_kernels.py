"""bpttlab's kernels (``bpttlab.cells.kernels``) against the equations written out here as a plain
float64 loop: outputs, final state and the gradients with respect to the inputs, the initial
state and all four weights, under an upstream gradient on every output and on the final state;
then gradcheck on a tiny size, float32 agreement with torch's nn.RNN/nn.GRU/nn.LSTM, the
kernels' float32 steps (compiled C and torch operations) against the equations in float64,
sinks included, and the cells' fast path with kernel="bpttlab" against their unrolled path."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from bpttlab.cells import kernels
from bpttlab.cells.kernels import compiled
from bpttlab.checks import ConfigError
from bpttlab.model import RecurrentNet

B, T, E, H = 3, 11, 4, 5
KINDS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]


def elman_reference_with_states(x, h, w_ih, w_hh, b_ih, b_hh, activation):
    """(outputs, final h, every h_t as later steps use it)."""
    outputs = []
    for t in range(x.shape[1]):
        h = activation(x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        outputs.append(h)
    return torch.stack(outputs, 1), h, outputs


def elman_reference(*args):
    return elman_reference_with_states(*args)[:2]


def gru_reference_with_states(x, h, w_ih, w_hh, b_ih, b_hh):
    """(outputs, final h, every h_t as later steps use it)."""
    w_ir, w_iz, w_in = w_ih.chunk(3)
    w_hr, w_hz, w_hn = w_hh.chunk(3)
    b_ir, b_iz, b_in = b_ih.chunk(3)
    b_hr, b_hz, b_hn = b_hh.chunk(3)
    outputs = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        r = torch.sigmoid(x_t @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
        z = torch.sigmoid(x_t @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
        n = torch.tanh(x_t @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs, 1), h, outputs


def gru_reference(*args):
    return gru_reference_with_states(*args)[:2]


def lstm_reference_with_states(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """(outputs, final h, final c, every h_t, every c_t as later steps use them)."""
    hs, cs = [], []
    for t in range(x.shape[1]):
        pre = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = pre.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs, 1), h, c, hs, cs


def lstm_reference(*args):
    return lstm_reference_with_states(*args)[:3]


def problem(kind: str, dtype=torch.float64, batch=B, steps=T, inputs=E, hidden=H, seed=0):
    """(kernel, reference, torch module, tensors): tensors are x, the initial state and the
    weights, every one a leaf that requires grad."""
    torch.manual_seed(seed)
    if kind.startswith("rnn"):
        nonlinearity = kind.split("_")[1]
        module = nn.RNN(inputs, hidden, batch_first=True, nonlinearity=nonlinearity)
        activation = torch.tanh if nonlinearity == "tanh" else torch.relu

        def kernel(*args):
            return kernels.rnn(*args, nonlinearity)

        def reference(*args):
            return elman_reference(*args, activation)

        states = 1
    elif kind == "gru":
        module, kernel, reference, states = (
            nn.GRU(inputs, hidden, batch_first=True),
            kernels.gru,
            gru_reference,
            1,
        )
    else:
        module, kernel, reference, states = (
            nn.LSTM(inputs, hidden, batch_first=True),
            kernels.lstm,
            lstm_reference,
            2,
        )
    module = module.to(dtype)
    x = torch.randn(batch, steps, inputs, dtype=dtype)
    state = [0.5 * torch.randn(batch, hidden, dtype=dtype) for _ in range(states)]
    weights = [
        p.detach().clone()
        for p in (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0)
    ]
    tensors = [t.requires_grad_() for t in (x, *state, *weights)]
    return kernel, reference, module, tensors


def outputs_and_grads(function, tensors, seed=1):
    """Every output of ``function(*tensors)`` and the gradients of a loss with a random
    upstream gradient on each output (the sequence and every final state)."""
    outputs = function(*tensors)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return outputs, torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_the_equations_in_float64(kind):
    """Outputs, final state and gradients w.r.t. x, the initial state and W_ih, W_hh, b_ih,
    b_hh equal the plain loop's to 1e-12."""
    kernel, reference, _, tensors = problem(kind)
    outputs, grads = outputs_and_grads(kernel, tensors)
    expected_outputs, expected_grads = outputs_and_grads(reference, tensors)
    assert len(outputs) == len(expected_outputs)
    for got, want in zip(outputs, expected_outputs, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    names = (
        ["x"] + [f"state{i}" for i in range(len(tensors) - 5)] + ["w_ih", "w_hh", "b_ih", "b_hh"]
    )
    for name, got, want in zip(names, grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    kernel, _, _, tensors = problem(kind, batch=2, steps=3, inputs=2, hidden=3)
    assert torch.autograd.gradcheck(kernel, tensors)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_agrees_with_torch(kind):
    """float32, B=8, T=50, H=32: outputs and final state within 1e-5 of torch's module,
    every gradient within 1e-4 (relative 1e-4)."""
    kernel, _, module, tensors = problem(
        kind, torch.float32, batch=8, steps=50, inputs=6, hidden=32
    )
    x, *state, w_ih, w_hh, b_ih, b_hh = tensors

    def torch_module(x, *rest):
        *state, w_ih, w_hh, b_ih, b_hh = rest
        parameters = {
            "weight_ih_l0": w_ih,
            "weight_hh_l0": w_hh,
            "bias_ih_l0": b_ih,
            "bias_hh_l0": b_hh,
        }
        packed = tuple(s.unsqueeze(0) for s in state)
        y, final = torch.func.functional_call(
            module, parameters, (x, packed if len(packed) > 1 else packed[0])
        )
        final = final if isinstance(final, tuple) else (final,)
        return (y, *(s.squeeze(0) for s in final))

    outputs, grads = outputs_and_grads(kernel, tensors)
    expected_outputs, expected_grads = outputs_and_grads(torch_module, tensors)
    for got, want in zip(outputs, expected_outputs, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(params=["compiled", "torch"])
def step_work(request):
    """The kernels' step loops in C or as torch operations, then as before."""
    wanted = request.param == "compiled"
    if wanted and shutil.which(compiled.c_compiler()) is None:
        pytest.skip("no C compiler here: the kernels' steps cannot be compiled")
    compiled.use_compiled(wanted)
    if wanted:
        assert all(compiled.library(name) is not None for name in compiled.STEP_SOURCES)
    yield request.param
    compiled.use_compiled(True)


STATES_REFERENCES = {
    "rnn_tanh": (("h",), lambda *a: elman_reference_with_states(*a, torch.tanh)),
    "rnn_relu": (("h",), lambda *a: elman_reference_with_states(*a, torch.relu)),
    "gru": (("h",), gru_reference_with_states),
    "lstm": (("h", "c"), lstm_reference_with_states),
}


@pytest.mark.parametrize("kind", KINDS)
def test_float32_steps_match_the_equations_in_float64(kind, step_work):
    """The float32 kernel (B=8, T=60, H=32 from a non-zero state), its steps compiled or as
    torch operations: outputs, final state, every gradient and the sinks' dL/d(state)_t at
    every step equal the float64 equations' to float32 rounding."""
    kernel, _, _, tensors = problem(kind, torch.float32, batch=8, steps=60, inputs=6, hidden=32)
    if kind.startswith("rnn"):  # its sink comes after the nonlinearity
        nonlinearity = kind.split("_")[1]

        def kernel(*args):
            return kernels.rnn(*args[:-1], nonlinearity, args[-1])

    names, reference = STATES_REFERENCES[kind]
    T, H = 60, 32
    zero = torch.zeros(1, 1, 1, requires_grad=True)
    sinks = [zero.expand(T, 8, H) for _ in names]
    outputs, grads = outputs_and_grads(kernel, [*tensors, *sinks])
    grads, caught = grads[: len(tensors)], grads[len(tensors) :]

    wide = [t.detach().double().requires_grad_() for t in tensors]
    (*expected_outputs,) = reference(*wide)
    expected_outputs, steps = expected_outputs[: 1 + len(names)], expected_outputs[1 + len(names) :]
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g).double()).sum() for o in expected_outputs)
    expected = torch.autograd.grad(loss, [*wide, *(s for states in steps for s in states)])
    for got, want in zip(outputs, expected_outputs, strict=True):
        torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=0)
    for got, want in zip(grads, expected[: len(wide)], strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    for i, (name, got) in enumerate(zip(names, caught, strict=True)):
        want = torch.stack(expected[len(wide) + i * T : len(wide) + (i + 1) * T])
        torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_cell_fast_path_with_the_kernel_equals_unrolled(kind):
    """A two-layer RecurrentNet with kernel="bpttlab" in float64 from a non-zero state: the
    fast path's outputs, final state and parameter gradients equal the unrolled path's to
    1e-12 (the kernel's tanh is 2 sigmoid(2x) - 1, so not bitwise)."""
    torch.manual_seed(0)
    net = RecurrentNet(
        5, 3, kind=kind, hidden_size=6, num_layers=2, t_max=T, kernel="bpttlab"
    ).double()
    inputs = torch.randint(0, 5, (B, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        carried = net(inputs[:, :4]).state

    def run(unrolled):
        net.zero_grad(set_to_none=True)
        result = net(inputs, carried, unrolled=unrolled)
        g = torch.Generator().manual_seed(3)
        finals = [s for layer in result.state for s in layer]
        loss = sum(
            (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
            for o in [result.outputs, *finals]
        )
        loss.backward()
        return [result.outputs, *finals], {n: p.grad.clone() for n, p in net.named_parameters()}

    fast, fast_grads = run(unrolled=False)
    slow, slow_grads = run(unrolled=True)
    for got, want in zip(fast, slow, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, slow_grads[name], atol=1e-12, rtol=0, msg=name)


def test_kernel_choice_is_validated():
    with pytest.raises(ConfigError, match="kernel"):
        RecurrentNet(5, 3, kind="gru", kernel="fast")
