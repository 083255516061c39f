"""Synthetic long-gap tasks: one module per task, each a dataclass with a seeded generator."""

from bpttlab.tasks.adding import AddingTask
from bpttlab.tasks.associative_recall import AssociativeRecallTask
from bpttlab.tasks.base import TRAIN, VALIDATION, Batch, Task, batch_generator
from bpttlab.tasks.copy import CopyTask
from bpttlab.tasks.delayed_recall import DelayedRecallTask
from bpttlab.tasks.source import BatchSource
from bpttlab.tasks.temporal_order import TemporalOrderTask
from bpttlab.tasks.variable_copy import VariableCopyTask

__all__ = [
    "AddingTask",
    "AssociativeRecallTask",
    "Batch",
    "BatchSource",
    "CopyTask",
    "DelayedRecallTask",
    "TRAIN",
    "Task",
    "TemporalOrderTask",
    "VALIDATION",
    "VariableCopyTask",
    "batch_generator",
]
