"""Resuming a run: only the run's own config, only from a checkpoint that loads as plain tensors
and containers (``weights_only=True``), carries this run's identity and matches its checksum;
a run that has finished within its budget is left as it is."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bpttlab.checks import ConfigError
from bpttlab.runs.checkpoint import LAST
from bpttlab.runs.outcome import final_line, one_line
from bpttlab.runs.seal import seal_problem

MAY_CHANGE = (
    *("trainer.max_steps", "resume", "keep_freed_memory"),
    *("trainer.enable_progress_bar", "callbacks.progress_bar"),
    *("trainer.log_every_n_steps", "callbacks.grad_flow.figures_every_n_steps"),
)
"""Keys (and the keys under them) a resumed run may set differently from the run it continues:
the budget, and settings that change what it shows, how often, or how fast it runs, but no
number it computes (a resume ends bit-identical to a run never interrupted). Not ``threads``
nor ``compiled_kernels``: they change float32 rounding (docs/safety.md)."""


def may_change(key: str) -> bool:
    """Whether a resume may set ``key`` (a dotted config key) differently: see MAY_CHANGE."""
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def checkpoint_path(cfg: DictConfig) -> Path:
    """Where the run's ``last.ckpt`` lives."""
    dirpath = OmegaConf.select(cfg, "callbacks.checkpoint.dirpath", default=None)
    return Path(dirpath or Path(cfg.run_dir) / "checkpoints") / LAST


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
    return [k for k in keys if not may_change(k)]


def identity(cfg: DictConfig) -> dict[str, Any]:
    """What a checkpoint records of the run that writes it: the run dir's name, the seed and a
    digest of the resolved config but for MAY_CHANGE."""
    resolved = flat(OmegaConf.to_container(cfg, resolve=True))
    settings = {k: v for k, v in resolved.items() if not may_change(k)}
    text = json.dumps(settings, sort_keys=True, default=repr)
    config = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {"run": Path(cfg.run_dir).name, "seed": cfg.seed, "config": config}


class Finished(Exception):
    """The run to resume has finished within this budget: there is nothing to continue."""

    def __init__(self, run_dir: Path, metrics: dict[str, Any]):
        self.metrics = metrics
        try:
            summary = final_line(metrics)
        except (KeyError, TypeError, ValueError):  # a metrics.json edited by hand
            summary = metrics["status"]
        super().__init__(
            f"{run_dir} finished already ({summary}); nothing to resume, its files "
            "are left as they are (a larger trainer.max_steps continues it)"
        )


def check_resume(cfg: DictConfig) -> Path:
    """Check that ``cfg`` (with ``resume=true``) can continue the run in ``cfg.run_dir``;
    return its checkpoint. Raises Finished when that run has finished within ``cfg``'s budget,
    and a one-line ConfigError on ``resume`` when it cannot be continued."""
    run_dir = Path(cfg.run_dir)
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise ConfigError(
            "resume", True, f"false here: {run_dir} holds no run ({saved_path} does not exist)"
        )
    try:
        saved = OmegaConf.load(saved_path)
        differences = differing_keys(saved, cfg)
    except Exception as error:
        raise ConfigError(
            "resume", True, f"false here: {saved_path} cannot be read ({one_line(error)})"
        ) from None
    if differences:
        raise ConfigError(
            "resume",
            True,
            "the run's own config (only trainer.max_steps and settings that change no number "
            "may change: docs/safety.md lists them); this command changes "
            + ", ".join(differences),
        )
    metrics = finished_metrics(run_dir)
    if metrics is not None and budget(cfg) <= budget(saved):
        raise Finished(run_dir, metrics)
    checkpoint = checkpoint_path(cfg)
    if not checkpoint.is_file():
        raise ConfigError("resume", True, f"false here: {checkpoint} does not exist")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            "resume", True, f"false here: {checkpoint} cannot be read ({one_line(error)})"
        ) from None
    problem = seal_problem(state, identity(cfg))
    if problem is not None:
        raise ConfigError(
            "resume", True, f"false here: {checkpoint} cannot continue this run: {problem}"
        )
    return checkpoint


def finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of the run in ``run_dir`` if it ended as a result (completed or diverged)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    finished = isinstance(metrics, dict) and metrics.get("status") in ("completed", "diverged")
    return metrics if finished else None


def budget(cfg: DictConfig) -> float:
    """``trainer.max_steps``, with -1 (no limit) as infinity."""
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    return math.inf if steps is None or steps < 0 else steps


def check_no_checkpoint(dirpath: object) -> None:
    """A new run's checkpoint dir must hold no ``last.ckpt``: that would be another run's, and
    the new run would overwrite it."""
    existing = Path(str(dirpath)) / LAST
    if existing.exists():
        raise ConfigError(
            "callbacks.checkpoint.dirpath",
            str(dirpath),
            f"a directory that holds no other run's checkpoint ({existing} does; resume that run "
            "in its own hydra.run.dir, or give this run another dirpath)",
        )
