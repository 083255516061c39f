"""RecurrentNet: fused vs unrolled paths, the Trace, initialisations and config validation."""

from __future__ import annotations

import math

import pytest
import torch

from bpttlab.checks import ConfigError
from bpttlab.model import RecurrentNet, Trace

B, T, H, VOCAB, CHANNELS, OUT = 3, 7, 5, 6, 3, 4

# (kind, num_layers, nonlinearity)
CELL_CONFIGS = [(kind, layers, "tanh") for kind in ("rnn", "lstm", "gru") for layers in (1, 2)] + [
    ("rnn", 1, "relu"),
    ("rnn", 2, "relu"),
]


def make_net(
    kind: str,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    token_input: bool = True,
    seed: int = 0,
    **kwargs,
) -> RecurrentNet:
    torch.manual_seed(seed)
    return RecurrentNet(
        input_size=VOCAB if token_input else CHANNELS,
        output_size=OUT,
        token_input=token_input,
        kind=kind,
        hidden_size=H,
        num_layers=num_layers,
        embedding_dim=4,
        **({"nonlinearity": nonlinearity} if kind == "rnn" else {}),
        **kwargs,
    )


def make_inputs(token_input: bool, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if token_input:
        return torch.randint(0, VOCAB, (B, T), generator=g)
    return torch.randn(B, T, CHANNELS, generator=g, dtype=dtype)


def make_state(kind: str, num_layers: int, dtype: torch.dtype, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    h = (0.5 * torch.randn(num_layers, B, H, generator=g, dtype=dtype)).requires_grad_()
    if kind == "lstm":
        c = (0.5 * torch.randn(num_layers, B, H, generator=g, dtype=dtype)).requires_grad_()
        return (h, c)
    return h


def state_tensors(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def as_net_state(state):
    """(layers, B, H) tensors per state name -> RecurrentNet's state: a tuple per layer."""
    tensors = state_tensors(state)
    return tuple(tuple(t[layer] for t in tensors) for layer in range(tensors[0].shape[0]))


def stacked(final) -> tuple[torch.Tensor, ...]:
    """RecurrentNet's final state -> one (layers, B, H) tensor per state name."""
    return tuple(torch.stack(per_layer) for per_layer in zip(*final, strict=True))


NATIVE = {"kernel": "torch", "onednn": False}
"""torch's native CPU kernel on the fast path (the rnn, gru and lstm cells' defaults are faster)."""


def run_and_backward(net, inputs, state, unrolled: bool):
    """Forward one path, backprop a loss mixing outputs and final state with fixed random
    weights; return (outputs, final state tensors, parameter grads, initial-state grads)."""
    net.zero_grad(set_to_none=True)
    if state is not None:
        for s in state_tensors(state):
            s.grad = None
    net_state = None if state is None else as_net_state(state)
    outputs, final, trace = net(inputs, net_state, unrolled=unrolled)
    assert (trace is not None) == unrolled
    finals = stacked(final)
    g = torch.Generator().manual_seed(3)
    loss = (outputs * torch.randn(outputs.shape, generator=g, dtype=outputs.dtype)).sum()
    for f in finals:
        loss = loss + (f * torch.randn(f.shape, generator=g, dtype=f.dtype)).sum()
    loss.backward()
    param_grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    state_grads = () if state is None else tuple(s.grad.clone() for s in state_tensors(state))
    return outputs.detach(), tuple(f.detach() for f in finals), param_grads, state_grads


@pytest.mark.parametrize("token_input", [True, False], ids=["tokens", "real"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize(("kind", "num_layers", "nonlinearity"), CELL_CONFIGS)
def test_fused_and_unrolled_agree_float64(kind, num_layers, nonlinearity, token_input, with_state):
    """In float64 the step loop computes the same outputs, final state, parameter gradients and
    initial-state gradients as torch.nn.RNN/LSTM/GRU (independent implementation)."""
    net = make_net(kind, num_layers, nonlinearity, token_input).double()
    inputs = make_inputs(token_input, torch.float64)
    state = make_state(kind, num_layers, torch.float64) if with_state else None
    fused = run_and_backward(net, inputs, state, unrolled=False)
    unrolled = run_and_backward(net, inputs, state, unrolled=True)

    torch.testing.assert_close(unrolled[0], fused[0], atol=1e-6, rtol=0)
    assert len(unrolled[1]) == len(fused[1]) == (2 if kind == "lstm" else 1)
    for a, b in zip(unrolled[1], fused[1], strict=True):
        assert a.shape == (num_layers, B, H)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert unrolled[2].keys() == fused[2].keys()
    for name in fused[2]:
        assert fused[2][name].abs().sum() > 0, name
        torch.testing.assert_close(unrolled[2][name], fused[2][name], atol=1e-6, rtol=0)
    for a, b in zip(unrolled[3], fused[3], strict=True):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("token_input", [True, False], ids=["tokens", "real"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize(("kind", "num_layers", "nonlinearity"), CELL_CONFIGS)
def test_fused_and_unrolled_bitwise_equal_float32_cpu(
    kind, num_layers, nonlinearity, token_input, with_state
):
    """With torch's native kernel, on CPU in float32 the fused path and the step loop are
    bitwise equal (torch.equal) in outputs, final state and every gradient: a probed step of
    such a run (the step loop) changes no number."""
    net = make_net(kind, num_layers, nonlinearity, token_input, **NATIVE)
    inputs = make_inputs(token_input, torch.float32)
    state = make_state(kind, num_layers, torch.float32) if with_state else None
    fused = run_and_backward(net, inputs, state, unrolled=False)
    unrolled = run_and_backward(net, inputs, state, unrolled=True)

    assert torch.equal(unrolled[0], fused[0])
    for a, b in zip(unrolled[1], fused[1], strict=True):
        assert torch.equal(a, b)
    for name in fused[2]:
        assert torch.equal(unrolled[2][name], fused[2][name]), name
    for a, b in zip(unrolled[3], fused[3], strict=True):
        assert torch.equal(a, b)


def test_fused_path_restores_mkldnn_flag():
    """The fused path switches oneDNN off only for its own call and restores the global flag."""
    net = make_net("lstm")
    before = torch.backends.mkldnn.enabled
    try:
        for flag in (True, False):
            torch.backends.mkldnn.enabled = flag
            net(make_inputs(True, torch.float32))
            assert torch.backends.mkldnn.enabled is flag
    finally:
        torch.backends.mkldnn.enabled = before


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_trace_layout_and_last_layer_feeds_readout(kind, num_layers):
    """The Trace holds num_layers lists of T states of shape (B, H) (plus c for LSTM only), its
    last entries are the final state, and the last layer's h states are what the readout sees."""
    net = make_net(kind, num_layers).double()
    inputs = make_inputs(True, torch.float64)
    outputs, final, trace = net(inputs, unrolled=True)

    assert isinstance(trace, Trace)
    assert list(trace.steps) == (["h", "c"] if kind == "lstm" else ["h"])
    for name, index in zip(trace.steps, range(2), strict=False):
        assert len(trace[name]) == num_layers
        assert all(len(steps) == T for steps in trace[name])
        assert all(s.shape == (B, H) for steps in trace[name] for s in steps)
        final_name = stacked(final)[index]
        assert torch.equal(final_name, torch.stack([steps[-1] for steps in trace[name]]))

    states = list(trace.states())
    expected_count = num_layers * T * (2 if kind == "lstm" else 1)
    assert len(states) == expected_count
    assert {k for k, *_ in states} == ({"h", "c"} if kind == "lstm" else {"h"})
    for k, layer, t, s in states:
        assert s is trace[k][layer][t]

    hidden = torch.stack(trace["h"][-1], dim=1)  # (B, T, H)
    torch.testing.assert_close(net.readout(hidden), outputs, atol=0, rtol=0)
    # and not the first layer's states when there are several
    if num_layers > 1:
        assert not torch.allclose(net.readout(torch.stack(trace["h"][0], dim=1)), outputs)


# -- initialisations -----------------------------------------------------------------------


def layer_weights(net: RecurrentNet, layer: int):
    return net.layers[layer].weights


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_orthogonal_init_gives_orthogonal_gate_blocks(kind):
    """init="orthogonal": every H x H gate block of every layer's W_hh satisfies W W^T = I."""
    net = make_net(kind, num_layers=2, init="orthogonal").double()
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    eye = torch.eye(H, dtype=torch.float64)
    for layer in range(2):
        w_hh = layer_weights(net, layer)[1].detach()
        blocks = w_hh.split(H)
        assert len(blocks) == gates
        for block in blocks:
            torch.testing.assert_close(block @ block.T, eye, atol=1e-5, rtol=0)
    # the default init is not orthogonal: the check above can fail
    default = layer_weights(make_net(kind).double(), 0)[1].detach()[:H]
    assert not torch.allclose(default @ default.T, eye, atol=1e-2)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_identity_init_rnn(nonlinearity):
    """init="identity" (rnn): W_hh = I and both biases zero in every layer."""
    net = make_net("rnn", num_layers=2, nonlinearity=nonlinearity, init="identity")
    for layer in range(2):
        _, w_hh, b_ih, b_hh = layer_weights(net, layer)
        assert torch.equal(w_hh, torch.eye(H))
        assert torch.equal(b_ih, torch.zeros(H))
        assert torch.equal(b_hh, torch.zeros(H))


@pytest.mark.parametrize("t_max", [3, 50])
def test_chrono_init_lstm(t_max):
    """init="chrono" (lstm, gates i, f, g, o): b_f in [0, log(t_max - 1)], b_i = -b_f, the
    other ih biases and all hh biases zero."""
    for seed in range(3):
        net = make_net("lstm", num_layers=2, init="chrono", t_max=t_max, seed=seed)
        for layer in range(2):
            _, _, b_ih, b_hh = layer_weights(net, layer)
            b_i, b_f, b_g, b_o = b_ih.detach().split(H)
            assert (b_f >= 0).all() and (b_f <= math.log(t_max - 1) + 1e-6).all()
            assert torch.equal(b_i, -b_f)
            assert torch.equal(b_g, torch.zeros(H)) and torch.equal(b_o, torch.zeros(H))
            assert torch.equal(b_hh, torch.zeros(4 * H))
            if t_max > 3:
                assert b_f.std() > 0  # drawn, not a constant


def test_chrono_init_gru():
    """init="chrono" (gru, gates r, z, n): the update gate z (rows H:2H) gets log U[1, t_max-1];
    r and n and all hh biases are zero."""
    t_max = 40
    net = make_net("gru", num_layers=2, init="chrono", t_max=t_max)
    for layer in range(2):
        _, _, b_ih, b_hh = layer_weights(net, layer)
        b_r, b_z, b_n = b_ih.detach().split(H)
        assert (b_z >= 0).all() and (b_z <= math.log(t_max - 1) + 1e-6).all()
        assert b_z.std() > 0
        assert torch.equal(b_r, torch.zeros(H)) and torch.equal(b_n, torch.zeros(H))
        assert torch.equal(b_hh, torch.zeros(3 * H))


def test_chrono_distribution_is_log_uniform():
    """Chrono biases are log of U[1, t_max - 1]: exp(b) fills that interval roughly uniformly."""
    torch.manual_seed(0)
    net = RecurrentNet(VOCAB, OUT, kind="lstm", hidden_size=400, init="chrono", t_max=21)
    draws = net.layers[0].rnn.bias_ih_l0.detach()[400:800].exp()
    assert draws.min() >= 1 - 1e-5 and draws.max() <= 20 + 1e-4
    assert abs(draws.mean().item() - 10.5) < 1.0  # mean of U[1, 20]


@pytest.mark.parametrize("init", ["default", "orthogonal", "chrono"])
def test_forget_bias_adds_to_lstm_forget_gate(init):
    """forget_bias adds to the LSTM forget-gate ih bias (rows H:2H) and nothing else."""
    kwargs = {"t_max": 10} if init == "chrono" else {}
    base = make_net("lstm", num_layers=2, init=init, seed=4, **kwargs)
    shifted = make_net("lstm", num_layers=2, init=init, seed=4, forget_bias=1.5, **kwargs)
    for layer in range(2):
        wb, ws = layer_weights(base, layer), layer_weights(shifted, layer)
        b_base, b_shift = wb[2].detach(), ws[2].detach()
        torch.testing.assert_close(b_shift[H : 2 * H], b_base[H : 2 * H] + 1.5)
        assert torch.equal(b_shift[:H], b_base[:H])
        assert torch.equal(b_shift[2 * H :], b_base[2 * H :])
        for a, b in zip((wb[0], wb[1], wb[3]), (ws[0], ws[1], ws[3]), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kind": "lstm", "init": "identity"}, "init"),
        ({"kind": "gru", "init": "identity"}, "init"),
        ({"kind": "rnn", "init": "chrono", "t_max": 10}, "init"),
        ({"kind": "lstm", "init": "chrono"}, "t_max"),
        ({"kind": "lstm", "init": "chrono", "t_max": 2}, "t_max"),
        ({"kind": "gru", "forget_bias": 1.0}, "forget_bias"),
        ({"kind": "rnn", "forget_bias": 1.0}, "forget_bias"),
        ({"kind": "foo"}, "kind"),
        ({"kind": "lstm", "hidden_size": 0}, "hidden_size"),
        ({"kind": "lstm", "num_layers": 0}, "num_layers"),
        ({"kind": "lstm", "nonlinearity": "relu"}, "nonlinearity"),
        ({"kind": "gru", "nonlinearity": "relu"}, "nonlinearity"),
        ({"kind": "rnn", "nonlinearity": "sigmoid"}, "nonlinearity"),
        ({"kind": "rnn", "init": "xavier"}, "init"),
        ({"kind": "rnn", "embedding_dim": 0}, "embedding_dim"),
    ],
)
def test_invalid_config_raises_config_error_naming_key(kwargs, key):
    """Invalid cell settings raise ConfigError whose key and one-line message name the key."""
    full = {"input_size": VOCAB, "output_size": OUT, "hidden_size": H, **kwargs}
    with pytest.raises(ConfigError) as info:
        RecurrentNet(**full)
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"{key}=") and "\n" not in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "rnn", "nonlinearity": "relu", "init": "identity"},
        {"kind": "lstm", "init": "chrono", "t_max": 3, "forget_bias": 1.0},
        {"kind": "gru", "init": "chrono", "t_max": 3},
        {"kind": "gru", "init": "orthogonal"},
    ],
)
def test_valid_combinations_construct(kwargs):
    """The accepted combinations build without error (the invalid-config test is not vacuous)."""
    net = RecurrentNet(VOCAB, OUT, hidden_size=H, **kwargs)
    assert net(make_inputs(True, torch.float32))[0].shape == (B, T, OUT)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_stack_equals_torch_multilayer_module(kind):
    """A stack of one-layer cells on its default paths computes what one multi-layer torch
    module with the same weights computes: to 1e-12 in float64, and in float32 to float32
    rounding (1e-5) of the float64 module."""
    net = make_net(kind, num_layers=3)
    torch_module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
        4, H, 3, batch_first=True
    )
    with torch.no_grad():
        for layer, cell in enumerate(net.layers):
            for name, weight in zip(
                ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), cell.weights, strict=True
            ):
                getattr(torch_module, f"{name}_l{layer}").copy_(weight)
    inputs = make_inputs(True, torch.float32)
    single = net(inputs).outputs.detach()
    net, torch_module = net.double(), torch_module.double()
    with torch.no_grad():
        expected = net.readout(torch_module(net.encoder(inputs))[0])
        torch.testing.assert_close(net(inputs).outputs, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(single.double(), expected, atol=1e-5, rtol=0)


def autograd_nodes(tensor: torch.Tensor) -> set[str]:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


def test_onednn_fast_path_equals_unrolled_to_rounding():
    """cell.onednn=true runs oneDNN's LSTM kernel (faster on CPU); the unrolled path then equals
    it to float32 rounding, not bitwise: outputs to 1e-6, gradients to 1e-5 (relative 1e-4)."""
    torch.manual_seed(0)
    net = RecurrentNet(VOCAB, OUT, kind="lstm", hidden_size=32, num_layers=2, onednn=True)
    inputs = torch.randint(0, VOCAB, (8, 60), generator=torch.Generator().manual_seed(1))
    fused = run_and_backward(net, inputs, None, unrolled=False)
    assert "MkldnnRnnLayerBackward0" in autograd_nodes(net(inputs).outputs)
    unrolled = run_and_backward(net, inputs, None, unrolled=True)
    torch.testing.assert_close(unrolled[0], fused[0], atol=1e-6, rtol=0)
    for name in fused[2]:
        torch.testing.assert_close(unrolled[2][name], fused[2][name], atol=1e-5, rtol=1e-4)
