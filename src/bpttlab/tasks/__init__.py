"""Synthetic long-gap tasks: one module per task, each a dataclass with a seeded generator."""

from bpttlab.tasks.adding import AddingTask
from bpttlab.tasks.base import TRAIN, VALIDATION, Batch, Task, batch_generator
from bpttlab.tasks.copy import CopyTask

__all__ = ["AddingTask", "Batch", "CopyTask", "TRAIN", "Task", "VALIDATION", "batch_generator"]
