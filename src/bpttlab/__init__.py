"""bpttlab: experiments on long-range dependencies in recurrent networks.

Reuse the pieces with your own Trainer::

    from bpttlab import AddingTask, BPTT, Clipping, RecurrentNet, SequenceModule
"""

from bpttlab.bptt import BPTT, Window
from bpttlab.clipping import Clipping
from bpttlab.gradflow import GradientFlow
from bpttlab.model import RecurrentNet, Trace
from bpttlab.module import Probe, SequenceModule
from bpttlab.tasks import (
    AddingTask,
    AssociativeRecallTask,
    Batch,
    CopyTask,
    DelayedRecallTask,
    Task,
    TemporalOrderTask,
    VariableCopyTask,
)

__all__ = [
    "AddingTask",
    "AssociativeRecallTask",
    "BPTT",
    "Batch",
    "Clipping",
    "CopyTask",
    "DelayedRecallTask",
    "GradientFlow",
    "Probe",
    "RecurrentNet",
    "SequenceModule",
    "Task",
    "TemporalOrderTask",
    "Trace",
    "VariableCopyTask",
    "Window",
]
