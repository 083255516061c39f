"""bpttlab: experiments on long-range dependencies in recurrent networks.

Reuse the pieces with your own Trainer::

    from bpttlab import AddingTask, BPTT, Clipping, RecurrentNet, SequenceModule

Names are imported when first used, so that ``import bpttlab.gradflow.profile`` (say) does not
load Lightning.
"""

from importlib import import_module

_HOMES = {
    "AdaptiveTruncation": "bpttlab.bptt.adaptive",
    "BPTT": "bpttlab.bptt",
    "Window": "bpttlab.bptt",
    "run_windows": "bpttlab.bptt",
    "CELLS": "bpttlab.cells",
    "Cell": "bpttlab.cells",
    "register": "bpttlab.cells",
    "Clipping": "bpttlab.clipping",
    "GradientFlow": "bpttlab.gradflow.callback",
    "Probe": "bpttlab.gradflow.profile",
    "RecurrentNet": "bpttlab.model",
    "Trace": "bpttlab.model",
    "SequenceModule": "bpttlab.module",
    "AddingTask": "bpttlab.tasks",
    "AssociativeRecallTask": "bpttlab.tasks",
    "Batch": "bpttlab.tasks",
    "BatchSource": "bpttlab.tasks",
    "CopyTask": "bpttlab.tasks",
    "DelayedRecallTask": "bpttlab.tasks",
    "Task": "bpttlab.tasks",
    "TemporalOrderTask": "bpttlab.tasks",
    "VariableCopyTask": "bpttlab.tasks",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'bpttlab' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
