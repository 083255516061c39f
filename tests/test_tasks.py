"""Copy and adding against their published definitions, baselines and solved criteria, and
the seeding of batches (deterministic; training and validation disjoint)."""

from __future__ import annotations

import math

import pytest
import torch

from bpttlab import AddingTask, CopyTask
from bpttlab.tasks import TRAIN, VALIDATION, batch_generator


def draw(task, batch_size=64, seed=0, split=TRAIN, index=0):
    return task.generate(batch_size, batch_generator(seed, split, index, "cpu"))


@pytest.mark.parametrize("gap", [1, 5, 100])
def test_copy_layout_follows_arjovsky(gap):
    """10 symbols in 1..8, gap - 1 blanks, the marker 9 at step gap + 9, 10 blanks; targets are
    blanks for gap + 10 steps, then the symbols; loss everywhere, accuracy on the recall."""
    task = CopyTask(gap=gap)
    batch = draw(task)
    T = gap + 20
    assert batch.inputs.shape == batch.targets.shape == (64, T) and task.seq_len == T
    symbols = batch.inputs[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    assert torch.all(batch.inputs[:, gap + 9] == 9)
    rest = torch.cat([batch.inputs[:, 10 : gap + 9], batch.inputs[:, gap + 10 :]], dim=1)
    assert torch.all(rest == 0)
    assert torch.all(batch.targets[:, : gap + 10] == 0) and torch.equal(
        batch.targets[:, -10:], symbols
    )
    assert batch.mask.all() and batch.scored.sum() == 64 * 10 and batch.scored[:, -10:].all()
    assert (task.input_size, task.output_size) == (10, 9)


def memoryless_copy_logits(task, batch):
    """Certain blanks before the recall, a uniform guess over the 8 symbols during it."""
    logits = torch.full((*batch.inputs.shape, task.output_size), -1e4)
    logits[:, :-10, 0] = 1e4
    logits[:, -10:, 1:] = 0.0
    return logits


@pytest.mark.parametrize("gap", [10, 100, 500])
def test_copy_memoryless_predictor_scores_the_baseline(gap):
    """Baseline 10 ln 8 / (T + 20), and the memoryless predictor scores exactly that."""
    task = CopyTask(gap=gap)
    batch = draw(task)
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / (gap + 20))
    metrics = task.metrics(memoryless_copy_logits(task, batch), batch)
    assert metrics["loss"] == pytest.approx(task.baseline_loss, rel=1e-5)
    assert metrics["normalized_loss"] == pytest.approx(1.0, rel=1e-5) and not metrics["solved"]


def test_copy_recall_only_loss_has_baseline_ln8():
    task = CopyTask(gap=30, recall_loss_only=True)
    batch = draw(task)
    assert torch.equal(batch.mask, batch.scored)
    assert task.metrics(memoryless_copy_logits(task, batch), batch)["loss"] == pytest.approx(
        math.log(8), rel=1e-5
    )


def test_copy_oracle_is_solved():
    task = CopyTask(gap=20)
    batch = draw(task)
    oracle = torch.nn.functional.one_hot(batch.targets, task.output_size).float() * 100
    metrics = task.metrics(oracle, batch)
    assert metrics["accuracy"] == 1.0 and metrics["solved"] == 1.0 and metrics["loss"] < 1e-6
    wrong = oracle.clone()
    wrong[:, -1] = 0  # forget the last symbol: 90 % recall accuracy is not solved
    assert not task.metrics(wrong, batch)["solved"]


@pytest.mark.parametrize("gap", [2, 7, 100])
def test_adding_layout_follows_the_definition(gap):
    """Values in [0, 1]; exactly one marker in each half; the target at the last step is the
    sum of the two marked values; the loss is at the last step only."""
    task = AddingTask(gap=gap)
    batch = draw(task, batch_size=256)
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]
    assert batch.inputs.shape == (256, gap, 2) and values.min() >= 0 and values.max() <= 1
    half = gap // 2
    assert torch.all(markers[:, :half].sum(1) == 1) and torch.all(markers[:, half:].sum(1) == 1)
    assert torch.allclose(batch.targets[:, -1], (values * markers).sum(1))
    assert batch.mask[:, -1].all() and batch.mask.sum() == 256


def test_adding_baseline_is_one_sixth():
    """Always predicting 1 scores Var(sum) = 1/6 (within sampling error on 40 000 sequences);
    the exact answer is solved, a blurred one (noise 0.2) is not."""
    task = AddingTask(gap=50)
    batch = draw(task, batch_size=40_000)
    assert task.baseline_loss == 1 / 6
    ones = torch.ones(*batch.targets.shape, 1)
    assert task.loss(ones, batch).item() == pytest.approx(1 / 6, abs=0.006)
    exact = batch.targets[..., None].clone()
    assert task.metrics(exact, batch)["solved"] == 1.0
    noisy = exact + 0.2 * torch.randn_like(exact, generator=torch.Generator().manual_seed(1))
    assert not task.metrics(noisy, batch)["solved"]


@pytest.mark.parametrize("task", [CopyTask(gap=20), AddingTask(gap=20)], ids=["copy", "adding"])
def test_batches_are_seeded_and_train_and_validation_never_meet(task):
    """Same (seed, split, index) -> the same batch; another index, seed or split -> another.
    No validation batch equals any of the first 300 training batches of its run."""
    first, again = draw(task, index=3), draw(task, index=3)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.inputs, draw(task, index=4).inputs)
    assert not torch.equal(first.inputs, draw(task, seed=1, index=3).inputs)
    train = {draw(task, batch_size=4, index=i).inputs.numpy().tobytes() for i in range(300)}
    val = {
        draw(task, batch_size=4, split=VALIDATION, index=i).inputs.numpy().tobytes()
        for i in range(8)
    }
    assert len(train) == 300 and not train & val


def test_bad_task_values_name_their_key():
    from bpttlab.checks import ConfigError

    for make, message in (
        (lambda: CopyTask(gap=0), "gap"),
        (lambda: AddingTask(gap=1), "gap"),
    ):
        with pytest.raises(ConfigError, match=message):
            make()
