"""Resuming a run: only the run's own config, only from a checkpoint that loads, and only
with a checkpoint loaded as plain tensors and containers (``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bpttlab.checks import ConfigError
from bpttlab.runs.outcome import one_line

MAY_CHANGE = ("trainer.max_steps", "resume", "keep_freed_memory")
"""Keys a resumed run may set differently from the run it continues: the budget, and settings
that change only its speed."""


def checkpoint_path(cfg: DictConfig) -> Path:
    """Where the run's ``last.ckpt`` lives."""
    dirpath = OmegaConf.select(cfg, "callbacks.checkpoint.dirpath", default=None)
    return Path(dirpath or Path(cfg.run_dir) / "checkpoints") / "last.ckpt"


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested container as ``{"a.b.c": value}``."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out |= flat(value, f"{prefix}{key}.")
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def differing_keys(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """The keys whose values differ between two configs (resolved), but for MAY_CHANGE."""
    old = flat(OmegaConf.to_container(saved, resolve=True))
    new = flat(OmegaConf.to_container(cfg, resolve=True))
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, ...) != new.get(k, ...))
    return [k for k in keys if k not in MAY_CHANGE]


def check_resume(cfg: DictConfig) -> Path:
    """Check that ``cfg`` (with ``resume=true``) can continue the run in ``cfg.run_dir``;
    return its checkpoint. Raises a one-line ConfigError on ``resume`` otherwise."""
    run_dir = Path(cfg.run_dir)
    checkpoint = checkpoint_path(cfg)
    if not checkpoint.is_file():
        raise ConfigError("resume", True, f"false here: {checkpoint} does not exist")
    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            "resume", True, f"false here: {checkpoint} cannot be read ({one_line(error)})"
        ) from None
    saved = run_dir / "config.yaml"
    try:
        differences = differing_keys(OmegaConf.load(saved), cfg)
    except Exception as error:
        raise ConfigError(
            "resume", True, f"false here: {saved} cannot be read ({one_line(error)})"
        ) from None
    if differences:
        raise ConfigError(
            "resume",
            True,
            "the run's own config (only trainer.max_steps may change); this command changes "
            + ", ".join(differences),
        )
    return checkpoint
