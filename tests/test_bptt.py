"""BPTT schedules (BPTT.windows) and the gradients SequenceModule computes from them.

The gradient tests drive the real module: ``bptt.run_window`` directly, and the whole
``training_step`` through a one-batch ``Trainer.fit`` whose optimiser is SGD with lr=0 that keeps
a copy of the gradient of every update. They are compared, in float64, with an explicit tanh
recurrence written here with plain tensors.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import RecordingModule, RecordingSGD, fit_one_batch

from bpttlab.bptt import BPTT, Window, run_window
from bpttlab.cells.paths import Tracing
from bpttlab.checks import ConfigError
from bpttlab.model import CARRY_CHUNK, RecurrentNet
from bpttlab.module import SequenceModule
from bpttlab.tasks import AddingTask, Batch, CopyTask, Task

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec.*")

# -- the schedule ------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [1, 2, 7, 26, 40])
def test_full_bptt_is_one_window(seq_len):
    """truncation=None: a single window that runs and scores the whole sequence."""
    assert BPTT().windows(seq_len) == [Window(0, seq_len, 0, seq_len)]
    assert BPTT().k1 is None


def test_truncation_gives_disjoint_chunks():
    """truncation=k, update_every=None: disjoint chunks [0,k), [k,2k), ... covering [0, T), the
    last one possibly short, each run from the state its predecessor ends with."""
    wrong = []
    for seq_len in range(1, 41):
        for k in range(1, 13):
            windows = BPTT(truncation=k).windows(seq_len)
            bounds = list(range(0, seq_len, k)) + [seq_len]
            expected = [Window(a, b, a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            if windows != expected:
                wrong.append((seq_len, k, windows[-2:]))
    assert not wrong, f"{len(wrong)} (T, k) cases differ, first: {wrong[0]}"


@pytest.mark.parametrize("seq_len", range(1, 41))
def test_tbptt_window_invariants(seq_len):
    """Sweep k2 in 1..12, k1 in 1..k2: the loss regions [loss_start, end) partition [0, T) in
    steps of k1 (the last possibly short); each window starts k2 - k1 steps before its loss
    region (or at 0), so a full window runs back exactly k2 steps and end - start <= k2;
    window i carries the state at the start of window i+1; carry lies in [start, end];
    update_every=k2 gives the same schedule as update_every=None."""
    for k2 in range(1, 13):
        for k1 in range(1, k2 + 1):
            windows = BPTT(truncation=k2, update_every=k1).windows(seq_len)
            where = f"T={seq_len} k1={k1} k2={k2}: {windows}"
            assert len(windows) == math.ceil(seq_len / k1), where
            assert windows[0].loss_start == 0 and windows[-1].end == seq_len, where
            for w in windows:
                assert 0 <= w.start <= w.loss_start < w.end <= seq_len, where
                assert w.end - w.start <= k2, where
                # reaches k2 - k1 steps before its loss region: k2 in all for a full k1
                assert w.start == max(w.loss_start - (k2 - k1), 0), where
                assert w.start <= w.carry <= w.end, where
            for w in windows[:-1]:
                assert w.end - w.loss_start == k1, where
            assert windows[-1].end - windows[-1].loss_start <= k1, where
            for a, b in zip(windows, windows[1:], strict=False):
                assert a.end == b.loss_start, where
                assert a.carry == b.start, where
        assert BPTT(truncation=k2, update_every=k2).windows(seq_len) == BPTT(truncation=k2).windows(
            seq_len
        )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"truncation": 0}, "truncation"),
        ({"truncation": -3}, "truncation"),
        ({"truncation": 2.5}, "truncation"),
        ({"truncation": True}, "truncation"),
        ({"truncation": 4, "update_every": 0}, "update_every"),
        ({"truncation": 4, "update_every": 5}, "update_every"),
        ({"update_every": 2}, "update_every"),
    ],
)
def test_invalid_bptt_raises_config_error(kwargs, key):
    """Bad truncation / update_every raise ConfigError naming the key in a one-line message."""
    with pytest.raises(ConfigError) as info:
        BPTT(**kwargs)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}=") and "\n" not in str(info.value)


def test_valid_bptt_settings():
    """Boundary values are accepted (the invalid-config test is not vacuous)."""
    assert BPTT(truncation=1).k1 == 1
    assert BPTT(truncation=4, update_every=4).k1 == 4
    assert BPTT(truncation=4, update_every=1).k1 == 1


# -- the module's windows ----------------------------------------------------------------

HIDDEN, EMBED, BATCH = 4, 3, 2
SCHEDULES = {
    "full": BPTT(),
    "k4": BPTT(truncation=4),
    "k5-every2": BPTT(truncation=5, update_every=2),
}


def make_module(
    kind: str = "rnn",
    bptt: BPTT | None = None,
    task: Task | None = None,
    num_layers: int = 1,
    optimizer=None,
    seed: int = 0,
) -> SequenceModule:
    task = task or CopyTask(gap=6)
    torch.manual_seed(seed)
    model = RecurrentNet(
        task.input_size,
        task.output_size,
        token_input=task.token_input,
        kind=kind,
        hidden_size=HIDDEN,
        num_layers=num_layers,
        embedding_dim=EMBED,
    ).double()
    optimizer = optimizer or functools.partial(torch.optim.SGD, lr=0.0)
    return RecordingModule(model, task, optimizer, bptt=bptt, batch_size=BATCH)


def window_loss(module: SequenceModule, outputs, batch: Batch, window: Window):
    """The loss training_step backpropagates for ``window`` (outputs cover [start, end))."""
    target = batch.slice(window.loss_start, window.end)
    scored = outputs[:, window.loss_start - window.start :]
    return module.task.position_losses(scored, target).sum() / batch.mask.sum()


@pytest.mark.parametrize("unrolled", [False, True], ids=["fused", "unrolled"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_run_reproduces_the_uninterrupted_forward(kind, schedule, unrolled):
    """Carrying each window's state into the next, run_window's outputs over [start, end) and its
    carried state equal those of one uninterrupted run over the whole sequence."""
    module = make_module(kind, SCHEDULES[schedule], num_layers=2)
    batch = module.train_batch(0)  # copy task: integer tokens
    with torch.no_grad():
        full_outputs = module.model(batch.inputs)[0]
        state = None
        for window in module.windows:
            tracing = Tracing.WRITE if unrolled else Tracing.NONE
            outputs, carried, traces = run_window(
                module.model, batch.inputs, state, window, tracing
            )
            assert outputs.shape == (BATCH, window.end - window.start, module.task.output_size)
            torch.testing.assert_close(
                outputs, full_outputs[:, window.start : window.end], atol=1e-12, rtol=0
            )
            if window.carry == 0:  # nothing run yet: the zero state, left as None
                assert carried is None
                state = carried
                continue
            expected = module.model(batch.inputs[:, : window.carry])[1]
            assert len(carried) == len(expected) == 2  # layers
            for a, b in zip(sum(carried, ()), sum(expected, ()), strict=True):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
            assert bool(traces) == unrolled
            state = carried


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_a_carry_over_several_chunks_reaches_the_uninterrupted_state(kind):
    """RecurrentNet.carry (the windows without targets) runs CARRY_CHUNK steps at a time from
    the given state; its state is that of one uninterrupted run over the whole span."""
    model = RecurrentNet(5, 3, kind=kind, hidden_size=8, num_layers=2, embedding_dim=4).double()
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 5, (3, 2 * CARRY_CHUNK + 17), generator=g)
    with torch.no_grad():
        start = model(inputs[:, :9])[1]
        expected = model(inputs[:, 9:], start)[1]
        carried = model.carry(inputs[:, 9:], start)
        assert model.carry(inputs[:, :0], start) is start
    for a, b in zip(sum(carried, ()), sum(expected, ()), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_run_cuts_gradient_at_window_start(kind, schedule):
    """Driving run_window (unrolled) over the module's windows with the state carried: each window's
    loss has a gradient of exactly zero w.r.t. every hidden state computed before the window's
    start, and a non-zero one w.r.t. every state (h, and c for LSTM) inside [start, end); with
    full BPTT that is every state from t = 0."""
    module = make_module(kind, SCHEDULES[schedule], num_layers=2)
    batch = module.train_batch(0)  # copy task: integer tokens
    earlier: list[tuple[int, torch.Tensor]] = []  # (timestep, state) of previous windows
    state = None
    for window in module.windows:
        outputs, carried, traces = run_window(
            module.model, batch.inputs, state, window, Tracing.WRITE
        )
        offsets = [(offset, len(trace["h"][0])) for offset, trace in traces]
        assert offsets[0][0] == window.start
        assert sum(n for _, n in offsets) == window.end - window.start
        inside = [(offset + t, s) for offset, trace in traces for _, _, t, s in trace.states()]
        assert sorted({t for t, _ in inside}) == list(range(window.start, window.end))
        loss = window_loss(module, outputs, batch, window)
        tensors = [s for _, s in earlier] + [s for _, s in inside]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for (t, _), g in zip(earlier, grads[: len(earlier)], strict=True):
            assert g is None or torch.equal(g, torch.zeros_like(g)), (window, t)
        for (t, _), g in zip(inside, grads[len(earlier) :], strict=True):
            assert g is not None and g.abs().sum() > 0, (window, t)
        earlier += inside
        state = carried
    if schedule != "full":
        assert len(module.windows) > 1


# -- explicit reference recurrence and the training step ---------------------------------


def reference_outputs(model: RecurrentNet, params: dict, inputs, cut_before=()):
    """Explicit tanh-RNN forward with plain tensors: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1}
    + b_hh) per layer, readout at every step; the state is detached before every step in
    ``cut_before``."""
    assert model.kind == "rnn" and model.layers[0].nonlinearity == "tanh"
    if model.token_input:
        x = params["encoder.weight"][inputs]
    else:
        x = inputs @ params["encoder.weight"].T + params["encoder.bias"]
    batch, steps = x.shape[:2]
    hs = [x.new_zeros(batch, model.hidden_size) for _ in range(model.num_layers)]
    outputs = []
    for t in range(steps):
        if t in cut_before:
            hs = [h.detach() for h in hs]
        layer_input = x[:, t]
        for layer in range(model.num_layers):
            w_ih, w_hh = (
                params[f"layers.{layer}.rnn.weight_ih_l0"],
                params[f"layers.{layer}.rnn.weight_hh_l0"],
            )
            b_ih, b_hh = (
                params[f"layers.{layer}.rnn.bias_ih_l0"],
                params[f"layers.{layer}.rnn.bias_hh_l0"],
            )
            hs[layer] = torch.tanh(layer_input @ w_ih.T + b_ih + hs[layer] @ w_hh.T + b_hh)
            layer_input = hs[layer]
        outputs.append(layer_input @ params["readout.weight"].T + params["readout.bias"])
    return torch.stack(outputs, dim=1)


def reference_grads(module: SequenceModule, batch: Batch, cut_before, loss_start, end):
    """Gradients of the masked loss over [loss_start, end) (normalised by the whole batch's
    mask count, as training_step does) of the explicit recurrence, on leaf copies of the
    module's weights."""
    params = {n: p.detach().clone().requires_grad_() for n, p in module.model.named_parameters()}
    outputs = reference_outputs(module.model, params, batch.inputs, set(cut_before))
    target = batch.slice(loss_start, end)
    loss = module.task.position_losses(outputs[:, loss_start:end], target).sum()
    loss = loss / batch.mask.sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads, strict=True))


def train_one_batch(module: SequenceModule, record: list, tmp_path) -> list[dict]:
    """Run the real training_step on one batch; return the gradients of each update by name."""
    names = [n for n, _ in module.model.named_parameters()]
    before = [p.detach().clone() for p in module.model.parameters()]
    fit_one_batch(module, tmp_path)
    assert module.batches == 1 and module.updates == len(record)
    for a, b in zip(before, module.model.parameters(), strict=True):
        assert torch.equal(a, b)  # lr = 0: every update saw the same weights
    updates = [dict(zip(names, grads, strict=True)) for grads in record]
    for grads in updates:
        assert all(g.dtype == torch.float64 for g in grads.values())
    return updates


def assert_grads_close(actual: dict, expected: dict, atol: float = 1e-10):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=name)


def make_recording_module(bptt, task, num_layers=1):
    record: list = []
    module = make_module(
        "rnn",
        bptt,
        task,
        num_layers=num_layers,
        optimizer=functools.partial(RecordingSGD, record=record),
    )
    return module, record


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("task", [CopyTask(gap=6), AddingTask(gap=12)], ids=["copy", "adding"])
def test_full_bptt_gradient_matches_explicit_recurrence(task, num_layers, tmp_path):
    """Full BPTT: the gradient training_step applies equals that of the explicit tanh
    recurrence written with plain tensors, for every parameter (float64, atol 1e-10)."""
    module, record = make_recording_module(BPTT(), task, num_layers)
    updates = train_one_batch(module, record, tmp_path)
    assert len(updates) == 1
    (batch,) = module.drawn
    expected = reference_grads(module, batch, (), 0, task.seq_len)
    assert all(g.abs().sum() > 0 for g in expected.values())
    assert_grads_close(updates[0], expected)


@pytest.mark.parametrize(
    ("gap", "k", "num_layers"),
    [(8, 4, 1), (8, 7, 2), (6, 4, 1), (6, 4, 2)],
    ids=["T28-k4-1layer", "T28-k7-2layers", "T26-k4-1layer", "T26-k4-2layers"],
)
def test_tbptt_chunk_gradients_sum_to_detach_every_k(gap, k, num_layers, tmp_path):
    """TBPTT with truncation k: update i of training_step equals the explicit recurrence's
    gradient of the loss of chunk [ik, (i+1)k) from the state detached at ik, and the updates
    sum to the gradient of the whole loss with .detach() every k steps, which is not the
    full-BPTT gradient."""
    task = CopyTask(gap=gap)
    seq_len = task.seq_len
    module, record = make_recording_module(BPTT(truncation=k), task, num_layers)
    updates = train_one_batch(module, record, tmp_path)
    (batch,) = module.drawn
    assert len(updates) == math.ceil(seq_len / k)
    for i, grads in enumerate(updates):
        end = min((i + 1) * k, seq_len)
        assert_grads_close(grads, reference_grads(module, batch, [i * k], i * k, end))
    summed = {n: sum(u[n] for u in updates) for n in updates[0]}
    cuts = range(k, seq_len, k)
    assert_grads_close(summed, reference_grads(module, batch, cuts, 0, seq_len))
    full = reference_grads(module, batch, (), 0, task.seq_len)
    name = "layers.0.rnn.weight_hh_l0"
    assert not torch.allclose(summed[name], full[name], atol=1e-6)


@pytest.mark.parametrize(
    ("task", "bptt"),
    [
        (CopyTask(gap=6), BPTT(truncation=5, update_every=2)),
        (CopyTask(gap=6), BPTT(truncation=4)),
        (AddingTask(gap=13), BPTT(truncation=4)),
        (AddingTask(gap=13), BPTT(truncation=6, update_every=5)),
    ],
    ids=["copy-k5-every2", "copy-k4", "adding-k4", "adding-k6-every5"],
)
def test_tbptt_update_gradients_match_truncated_reference(task, bptt, tmp_path):
    """For every window that holds targets, training_step's update equals the explicit
    recurrence run from t = 0 with the state detached at the window's start and the loss taken
    over [loss_start, end); windows without targets (adding task) give no update."""
    module, record = make_recording_module(bptt, task)
    updates = train_one_batch(module, record, tmp_path)
    (batch,) = module.drawn
    trained = [w for w in module.windows if batch.mask[:, w.loss_start : w.end].any()]
    assert len(updates) == len(trained) >= 1
    if isinstance(task, AddingTask):
        assert len(trained) == 1 < len(module.windows)
    for window, grads in zip(trained, updates, strict=True):
        expected = reference_grads(module, batch, [window.start], window.loss_start, window.end)
        assert_grads_close(grads, expected)
