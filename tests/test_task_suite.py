"""The synthetic long-gap task suite: temporal order, selective copy, associative and delayed
recall. Shapes, where the information lies, seeding, baselines, an oracle, config errors."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from bpttlab.checks import ConfigError
from bpttlab.tasks import (
    AssociativeRecallTask,
    Batch,
    DelayedRecallTask,
    Task,
    TemporalOrderTask,
    VariableCopyTask,
    batch_generator,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"

TASKS = {
    "temporal_order": lambda: TemporalOrderTask(gap=50),
    "variable_copy": lambda: VariableCopyTask(gap=20, num_symbols=8, recall=5),
    "associative_recall": lambda: AssociativeRecallTask(gap=12),
    "delayed_recall": lambda: DelayedRecallTask(gap=15),
}
CLASSES = {
    "temporal_order": TemporalOrderTask,
    "variable_copy": VariableCopyTask,
    "associative_recall": AssociativeRecallTask,
    "delayed_recall": DelayedRecallTask,
}


def seeded(seed: int) -> torch.Generator:
    # A plain CPU generator: generate must be a pure function of it. (batch_generator's seeds
    # differ only above bit 32, which the CPU Mersenne Twister ignores, so it is not used to
    # tell seeds apart here.)
    return torch.Generator().manual_seed(seed)


def make(name: str, batch_size: int = 256, seed: int = 0) -> tuple[Task, Batch]:
    task = TASKS[name]()
    return task, task.generate(batch_size, seeded(seed))


def scored_steps(task: Task) -> range:
    """The timesteps where each task takes its loss and accuracy."""
    if isinstance(task, VariableCopyTask):
        return range(task.gap + 1, task.seq_len)
    if isinstance(task, AssociativeRecallTask):
        return range(task.query_start, task.seq_len)
    return range(task.seq_len - 1, task.seq_len)


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("batch_size", [1, 300])
def test_shapes_dtypes_and_masks(name: str, batch_size: int) -> None:
    task, batch = make(name, batch_size)
    shape = (batch_size, task.seq_len)
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == shape
    assert batch.scored is not None and batch.scored.shape == shape
    assert batch.inputs.dtype == batch.targets.dtype == torch.long
    assert batch.mask.dtype == batch.scored.dtype == torch.bool
    assert task.classification and task.token_input
    assert batch.inputs.min() >= 0 and batch.inputs.max() < task.input_size
    assert batch.targets.min() >= 0 and batch.targets.max() < task.output_size
    expected = torch.zeros(task.seq_len, dtype=torch.bool)
    expected[list(scored_steps(task))] = True
    assert torch.equal(batch.mask, expected.expand(shape))
    assert torch.equal(batch.scored, batch.mask)
    for start, end in task.landmarks().values():
        assert 0 <= start < end <= task.seq_len


def test_temporal_order_positions_and_labels() -> None:
    task, batch = make("temporal_order")
    d = task.distractors
    relevant = batch.inputs >= d
    assert (relevant.sum(1) == 2).all()
    steps = relevant.nonzero()[:, 1].view(-1, 2)  # row-major: (first, second) per example
    (lo1, hi1), (lo2, hi2) = task.ranges()
    assert (lo1, hi1, lo2, hi2) == (5, 10, 25, 30)  # floor of 0.1, 0.2, 0.5, 0.6 of L = 50
    assert task.landmarks() == {"first symbol": (5, 10), "second symbol": (25, 30)}
    assert set(steps[:, 0].tolist()) == set(range(lo1, hi1))
    assert set(steps[:, 1].tolist()) == set(range(lo2, hi2))
    symbols = batch.inputs.gather(1, steps) - d  # 0: A, 1: B
    assert torch.equal(batch.targets[:, -1], 2 * symbols[:, 0] + symbols[:, 1])
    counts = torch.bincount(batch.targets[:, -1], minlength=4)
    assert (counts > 256 * 0.15).all()  # all four orders occur, roughly evenly


@pytest.mark.parametrize("gap", [10, 11, 19, 37])
def test_temporal_order_ranges_are_never_empty(gap: int) -> None:
    task = TemporalOrderTask(gap=gap)
    (lo1, hi1), (lo2, hi2) = task.ranges()
    assert (lo1, hi1, lo2, hi2) == tuple(int(f * gap + 1e-9) for f in (0.1, 0.2, 0.5, 0.6))
    assert lo1 < hi1 <= lo2 < hi2 < gap
    batch = task.generate(64, seeded(1))
    assert ((batch.inputs >= task.distractors).sum(1) == 2).all()


def test_variable_copy_positions_and_order() -> None:
    task, batch = make("variable_copy")
    G, R = task.gap, task.recall
    head = batch.inputs[:, :G]
    placed = head != 0
    assert (placed.sum(1) == R).all()  # distinct positions: none overwritten
    assert (batch.inputs[:, G] == task.marker).all()
    assert (batch.inputs[:, G + 1 :] == 0).all()
    assert ((batch.targets[:, -R:] >= 1) & (batch.targets[:, -R:] <= task.num_symbols)).all()
    assert torch.equal(head[placed].view(-1, R), batch.targets[:, -R:])  # order of appearance
    steps = placed.nonzero()[:, 1]
    assert set(steps.tolist()) == set(range(G))  # positions spread over the whole span
    assert task.landmarks() == {
        "symbols": (0, G),
        "marker": (G, G + 1),
        "recall": (G + 1, G + 1 + R),
    }


def test_associative_recall_pairs_and_queries() -> None:
    task, batch = make("associative_recall")
    P, K, V, start = task.num_pairs, task.num_keys, task.num_values, task.query_start
    assert task.seq_len == 3 * P + task.gap
    keys, values = batch.inputs[:, 0 : 2 * P : 2], batch.inputs[:, 1 : 2 * P : 2]
    assert ((keys >= 1) & (keys <= K)).all() and ((values > K) & (values <= K + V)).all()
    assert (keys.sort(1).values.diff(dim=1) > 0).all()  # keys distinct within a sequence
    assert (batch.inputs[:, 2 * P : start] == 0).all()
    queries = batch.inputs[:, start:]
    assert torch.equal(queries.sort(1).values, keys.sort(1).values)  # each key asked once
    match = queries.unsqueeze(2) == keys.unsqueeze(1)  # (B, query, pair)
    answers = (match.long() * (values - K - 1).unsqueeze(1)).sum(2)
    assert torch.equal(batch.targets[:, start:], answers)
    assert not (queries == keys).all()  # the order is shuffled
    assert task.landmarks() == {"pairs": (0, 2 * P), "queries": (start, task.seq_len)}


def test_delayed_recall_layout() -> None:
    task, batch = make("delayed_recall")
    C = task.num_classes
    assert ((batch.inputs[:, 0] >= 0) & (batch.inputs[:, 0] < C)).all()
    middle = batch.inputs[:, 1:-1]
    assert middle.shape[1] == task.gap
    assert ((middle >= C) & (middle < C + task.distractors)).all()
    assert (batch.inputs[:, -1] == task.marker).all()
    assert torch.equal(batch.targets[:, -1], batch.inputs[:, 0])
    assert set(batch.targets[:, -1].tolist()) == set(range(C))


@pytest.mark.parametrize("name", TASKS)
def test_seeding(name: str) -> None:
    a, b, c = (make(name, 32, seed)[1] for seed in (3, 3, 4))
    for field in ("inputs", "targets", "mask", "scored"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(a.targets, c.targets)
    task = TASKS[name]()
    first, again = (task.generate(8, batch_generator(0, 0, 5, "cpu")) for _ in range(2))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)


def memoryless(task: Task, batch: Batch) -> torch.Tensor:
    """Uniform logits over the classes that can be targets, at every step."""
    shape = (*batch.inputs.shape, task.output_size)
    outputs = torch.full(shape, -1e9)
    admissible = slice(1, None) if isinstance(task, VariableCopyTask) else slice(None)
    outputs[..., admissible] = 0.0
    return outputs


def oracle(task: Task, batch: Batch) -> torch.Tensor:
    outputs = torch.zeros(*batch.inputs.shape, task.output_size)
    return outputs.scatter(2, batch.targets.unsqueeze(2), 1e4)


@pytest.mark.parametrize("name", TASKS)
def test_memoryless_predictor_scores_the_baseline(name: str) -> None:
    task, batch = make(name)
    loss = task.loss(memoryless(task, batch), batch).item()
    assert loss == pytest.approx(task.baseline_loss, abs=1e-5)
    metrics = task.metrics(memoryless(task, batch), batch)
    assert metrics["normalized_loss"] == pytest.approx(1.0, abs=1e-5)
    assert not metrics["solved"]


def test_baseline_values() -> None:
    assert TemporalOrderTask().baseline_loss == pytest.approx(math.log(4))
    assert VariableCopyTask().baseline_loss == pytest.approx(math.log(8))
    assert AssociativeRecallTask(num_values=16).baseline_loss == pytest.approx(math.log(16))
    assert DelayedRecallTask().baseline_loss == pytest.approx(math.log(4))


@pytest.mark.parametrize("name", TASKS)
def test_oracle_solves(name: str) -> None:
    task, batch = make(name)
    metrics = task.metrics(oracle(task, batch), batch)
    assert metrics["accuracy"] == 1.0
    assert metrics["loss"] == pytest.approx(0.0, abs=1e-6)
    assert task.solved(metrics) and metrics["solved"] == 1.0


@pytest.mark.parametrize(
    ("cls", "options", "key"),
    [
        (TemporalOrderTask, {"gap": 9}, "gap"),
        (TemporalOrderTask, {"gap": 20.0}, "gap"),
        (TemporalOrderTask, {"distractors": 0}, "distractors"),
        (VariableCopyTask, {"gap": 9, "recall": 10}, "gap"),
        (VariableCopyTask, {"recall": 0}, "recall"),
        (VariableCopyTask, {"num_symbols": 1}, "num_symbols"),
        (AssociativeRecallTask, {"gap": 0}, "gap"),
        (AssociativeRecallTask, {"num_pairs": 0}, "num_pairs"),
        (AssociativeRecallTask, {"num_pairs": 5, "num_keys": 4}, "num_keys"),
        (AssociativeRecallTask, {"num_values": 1}, "num_values"),
        (DelayedRecallTask, {"gap": 0}, "gap"),
        (DelayedRecallTask, {"num_classes": 1}, "num_classes"),
        (DelayedRecallTask, {"distractors": True}, "distractors"),
    ],
)
def test_invalid_options_name_the_key(cls: type[Task], options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        cls(**options)
    assert error.value.key == key


@pytest.mark.parametrize("name", TASKS)
def test_yaml_instantiates(name: str) -> None:
    config = OmegaConf.load(CONF / f"{name}.yaml")
    task = hydra.utils.instantiate(config)
    assert type(task) is CLASSES[name]
    assert task.name == name
    assert {k for k in config if k != "_target_"} <= set(vars(task))
    assert task.generate(2, batch_generator(0, 0, 0, "cpu")).inputs.shape == (2, task.seq_len)
