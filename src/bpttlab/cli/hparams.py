"""The hyperparameters a run is known by: logged to TensorBoard's HPARAMS tab with the run's
final metrics, and used as the columns of bpttlab-report's table."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

KEYS = {
    "cell": "cell.kind",
    "hidden_size": "cell.hidden_size",
    "num_layers": "cell.num_layers",
    "nonlinearity": "cell.nonlinearity",
    "init": "cell.init",
    "task": "task._target_",
    "gap": "task.gap",
    "truncation": "bptt.truncation",
    "update_every": "bptt.update_every",
    "clip": "clip.mode",
    "clip_threshold": "clip.threshold",
    "optim": "optim._target_",
    "lr": "optim.lr",
    "seed": "seed",
}
"""Name -> config key, in the order they are shown."""

FULL = "full"
"""How truncation (and update_every) read when there is none: full BPTT."""


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """Read the hyperparameters from a run's (resolved) config. Class paths become short names
    (``bpttlab.tasks.CopyTask`` -> ``copy``, ``torch.optim.RMSprop`` -> ``rmsprop``); a missing
    truncation reads ``full``, so each column keeps one type across a sweep."""
    values: dict[str, Any] = {}
    for name, key in KEYS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if name == "task" and isinstance(value, str):
            value = task_name(value)
        if name == "optim" and isinstance(value, str):
            value = value.rsplit(".", 1)[-1].lower()
        if name in ("truncation", "update_every"):
            value = FULL if value is None else str(value)
        values[name] = value
    return values


def task_name(target: str) -> str:
    """A task's ``name`` from its class path; the class's own name where its module cannot be
    imported here (a user's task, read by a report run from another directory)."""
    try:
        return getattr(get_class(target), "name", target)
    except Exception:  # Hydra wraps the ImportError in its own exception types
        return target.rsplit(".", 1)[-1]
