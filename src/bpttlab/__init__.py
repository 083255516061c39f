"""bpttlab: experiments on long-range dependencies in recurrent networks.

Reuse the pieces with your own Trainer::

    from bpttlab import AddingTask, BPTT, Clipping, RecurrentNet, SequenceModule
"""

from bpttlab.bptt import BPTT, Window
from bpttlab.clipping import Clipping
from bpttlab.model import RecurrentNet, Trace
from bpttlab.module import Probe, SequenceModule
from bpttlab.tasks import AddingTask, Batch, CopyTask, Task

__all__ = [
    "AddingTask",
    "BPTT",
    "Batch",
    "Clipping",
    "CopyTask",
    "Probe",
    "RecurrentNet",
    "SequenceModule",
    "Task",
    "Trace",
    "Window",
]
