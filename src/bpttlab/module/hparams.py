"""The hyperparameters of a SequenceModule's parts as plain values: what a fit shows in
TensorBoard's HPARAMS tab (and any logger's hyperparameters) and its checkpoint keeps."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from bpttlab.bptt import BPTT
from bpttlab.clipping import Clipping
from bpttlab.model import RecurrentNet
from bpttlab.tasks import Task

FULL = "full"
"""How truncation and update_every read under full BPTT (so each keeps one type: a string)."""


def hyperparameters(
    model: RecurrentNet, task: Task, optimizer: Callable, bptt: BPTT, clipping: Clipping
) -> dict[str, object]:
    """Plain values named as ``bpttlab-train`` names them: the cell and its size, the task by
    its name and its settings, the BPTT schedule (truncation and the steps between updates,
    ``"full"`` without truncation), the clipping, the optimiser by its lower-case class name
    and the arguments a ``functools.partial`` gives it."""
    settings = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.init}
    partial = isinstance(optimizer, functools.partial)
    factory = optimizer.func if partial else optimizer
    options = optimizer.keywords if partial else {}
    return {
        "cell": model.kind,
        "hidden_size": model.hidden_size,
        "num_layers": model.num_layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "task": task.name,
        **{k: plain(v) for k, v in settings.items()},
        "truncation": FULL if bptt.truncation is None else str(bptt.truncation),
        "update_every": FULL if bptt.k1 is None else str(bptt.k1),
        "clip": clipping.mode,
        "clip_threshold": clipping.threshold,
        "optim": getattr(factory, "__name__", type(factory).__name__).lower(),
        **{k: plain(v) for k, v in options.items()},
    }


def plain(value: object) -> object:
    """``value`` if it is a number, string, bool or None, else its text."""
    return value if value is None or isinstance(value, int | float | str | bool) else str(value)
