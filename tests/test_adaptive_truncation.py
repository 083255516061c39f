"""``bptt.truncation=auto`` as a library: the decay it reads from the full-BPTT pass, the K it
chooses, and whether that K's bias bound holds on batches it never saw.

References are independent of the code under test: the decay of a linear recurrence is its
eigenvalue modulus, and truncated and full gradients are written out as a plain loop over
chunks with the state detached between them, differentiated by autograd (float64)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import small_module

from bpttlab import BPTT, RecurrentNet
from bpttlab.bptt.adaptive import AdaptiveTruncation, truncation_grid
from bpttlab.model import detach_state
from bpttlab.tasks import AddingTask, Batch, BatchSource, CopyTask, Task


def model_for(task: Task, kind: str) -> RecurrentNet:
    return small_module(task, kind=kind, hidden_size=8).model.double()


def batch_of(task: Task, step: int, batch_size: int = 16) -> Batch:
    batch = BatchSource(task, 0, batch_size, 1).train(step, "cpu")
    values = {k: getattr(batch, k) for k in ("inputs", "targets")}
    as64 = {k: v.double() for k, v in values.items() if v.is_floating_point()}
    return dataclasses.replace(batch, **as64)


def adapt(model, task, max_bias, step=0, **settings):
    """One choice of K on the batch of ``step``, checked on the next one."""
    chooser = AdaptiveTruncation(task.seq_len, max_bias, **settings)
    batch, held_out = batch_of(task, step), batch_of(task, step + 1)
    return chooser.adapt(model, batch, held_out, task.position_losses, step)


def plain_gradient(model: RecurrentNet, task: Task, batch: Batch, k: int) -> torch.Tensor:
    """The TBPTT(k, k) gradient of ``batch`` at fixed weights: chunks of k steps, the state
    detached between them, the chunk losses over the whole batch's target count, summed."""
    total, state, seq_len = 0.0, None, batch.inputs.shape[1]
    for start in range(0, seq_len, k):
        end = min(start + k, seq_len)
        outputs, state, _ = model(batch.inputs[:, start:end], detach_state(state), unrolled=True)
        total = total + task.position_losses(outputs, batch.slice(start, end)).sum()
    grads = torch.autograd.grad(total / batch.mask.sum(), list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


def test_the_decay_read_from_a_linear_recurrence_is_its_eigenvalue_modulus():
    """LRU, one layer, adding (one loss, at the last step): dL/dx_k = conj(lambda)^(T-1-k) *
    dL/dx_{T-1} elementwise, so with every |lambda_i| = r the profile falls by exactly r per
    step back: decay_per_step = log10 r."""
    task = AddingTask(gap=30)
    for r in (0.8, 0.95):
        model = model_for(task, "lru")
        model.layers[0].nu_log.data.fill_(math.log(-math.log(r)))
        found = adapt(model, task, max_bias=0.1)
        assert found.decay_per_step == pytest.approx(math.log10(r), abs=1e-9)


def test_the_candidates_cover_the_range_on_a_geometric_grid():
    assert truncation_grid(1, 20, 100) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, 19, 20]
    assert truncation_grid(5, 1000, 30) == [5, 6, 7, 8, 10, 12, 14, 17, 20, 24, 28, 30]
    assert truncation_grid(50, 80, 30) == [30]  # capped at T: full BPTT


@pytest.mark.parametrize(("kind", "task"), [("gru", CopyTask(gap=10)), ("lstm", AddingTask(30))])
def test_a_tighter_bias_bound_never_chooses_a_shorter_truncation(kind, task):
    model = model_for(task, kind)
    chosen = [adapt(model, task, max_bias=b).truncation for b in (0.8, 0.4, 0.2, 0.1, 0.05, 0.01)]
    assert chosen == sorted(chosen) and len(set(chosen)) >= 3, chosen


CASES = [
    ("rnn", CopyTask(gap=10)),
    ("gru", CopyTask(gap=10)),
    ("lstm", CopyTask(gap=10)),
    ("gru", AddingTask(gap=30)),
    ("lstm", AddingTask(gap=30)),
]
HELD_OUT_SLACK = 1.5
"""The bound is met exactly on the batch the choice is made on; on other batches of the same
task at the same weights the bias of that K may exceed it by at most half of it."""


@pytest.mark.parametrize(("kind", "task"), CASES, ids=[f"{k}-{t.name}" for k, t in CASES])
def test_the_chosen_truncation_meets_the_bound_on_held_out_batches(kind, task):
    max_bias = 0.1
    model = model_for(task, kind)
    found = adapt(model, task, max_bias)
    assert found.truncation < task.seq_len  # a real truncation, not full BPTT
    for step in (2, 3, 4):
        batch = batch_of(task, step)
        full = plain_gradient(model, task, batch, task.seq_len)
        truncated = plain_gradient(model, task, batch, found.truncation)
        error = (torch.linalg.vector_norm(truncated - full) / torch.linalg.vector_norm(full)).item()
        assert error <= HELD_OUT_SLACK * max_bias, (step, found.truncation, error)
    # on its own batch the bias it reports is the plain loop's, and the bound holds exactly
    batch = batch_of(task, 0)
    full = plain_gradient(model, task, batch, task.seq_len)
    truncated = plain_gradient(model, task, batch, found.truncation)
    error = torch.linalg.vector_norm(truncated - full) / torch.linalg.vector_norm(full)
    assert found.bias == pytest.approx(error.item(), rel=1e-9) and found.bias <= max_bias
    grid = truncation_grid(1, task.seq_len, task.seq_len)
    if found.truncation > 1:  # the candidate before it misses the bound
        shorter = plain_gradient(model, task, batch, grid[grid.index(found.truncation) - 1])
        assert torch.linalg.vector_norm(shorter - full) / torch.linalg.vector_norm(full) > max_bias


def test_no_gradient_is_left_behind_and_the_weights_do_not_change():
    task = CopyTask(gap=6)
    model = model_for(task, "gru")
    before = [p.detach().clone() for p in model.parameters()]
    adapt(model, task, 0.1)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"max_bias": 0.0}, "max_bias"),
        ({"max_bias": -1}, "max_bias"),
        ({"min_truncation": 0}, "min_truncation"),
        ({"min_truncation": 8, "max_truncation": 4}, "max_truncation"),
        ({"adapt_every_n_steps": 0}, "adapt_every_n_steps"),
        ({"update_every": 2}, "update_every"),
    ],
)
def test_bad_settings_of_auto_are_a_value_error_naming_the_argument(settings, key):
    with pytest.raises(ValueError, match=rf"^{key}="):
        BPTT(truncation="auto", **settings)


def test_a_truncation_that_is_neither_a_count_nor_auto_is_refused():
    with pytest.raises(ValueError, match=r"^truncation='sometimes' is invalid: .* auto or null"):
        BPTT(truncation="sometimes")
