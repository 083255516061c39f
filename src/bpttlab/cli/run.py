"""One run in its run dir: hold the lock, fit (or resume), and record what happened in metrics.json,
the run log and TensorBoard's HPARAMS.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf

from bpttlab import checks
from bpttlab.cells.kernels.compiled import compiled_in_effect
from bpttlab.cli import command_line
from bpttlab.cli.allocator import freed_memory_kept
from bpttlab.cli.build import build_module, build_trainer
from bpttlab.cli.hparams import hyperparameters
from bpttlab.cli.subnormals import subnormals_flushed
from bpttlab.module import SequenceModule
from bpttlab.runs import outcome
from bpttlab.runs.checkpoint import LastCheckpoint, save_atomically
from bpttlab.runs.interrupts import Interrupted, StopOnSignal
from bpttlab.runs.outcome import write_atomically
from bpttlab.runs.resume import check_no_checkpoint, check_resume, checkpoint_path, identity
from bpttlab.runs.rundir import RunLock
from bpttlab.runs.runlog import ValidationLog, run_log


def train(cfg: DictConfig, stop: StopOnSignal | None = None) -> dict[str, Any]:
    """Run one experiment into ``cfg.run_dir``; return the metrics written to metrics.json.

    The run holds the run dir's lock throughout. A new run refuses a dir that already holds a
    run, and a checkpoint dir that holds a checkpoint; ``resume=true`` refuses anything but the
    run's own config and a checkpoint that this run wrote, intact, and raises Finished for a
    run that has finished within its budget. Whatever happens, metrics.json ends with a
    ``status``; a failed resume leaves the files of the run it tried to continue as they were.
    """
    run_dir = Path(cfg.run_dir)
    stop = stop or StopOnSignal()
    stop.install()
    try:
        module = build_module(cfg)
        trainer = build_trainer(cfg, extra_callbacks=[stop])
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, LastCheckpoint):
                callback.identity = identity(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir):
            resume_from = check_run_dir(cfg)
            with run_log(run_dir) as log:
                trainer.callbacks.insert(0, ValidationLog(log))  # before the checkpoints
                return _fit(cfg, module, trainer, stop, resume_from, log)
    finally:
        stop.uninstall()


def check_run_dir(cfg: DictConfig) -> Path | None:
    """The checkpoint to resume from (``resume=true``), or None for a new run in a dir that
    holds no run yet (also with ``resume=true``: the job of a resumed sweep that never began;
    a single run's command line is refused before, see ``preflight``)."""
    run_dir = Path(cfg.run_dir)
    holds_run = (run_dir / "config.yaml").exists() or (run_dir / "metrics.json").exists()
    if checks.boolean("resume", cfg.get("resume", False)) and holds_run:
        return check_resume(cfg)
    if holds_run:
        raise checks.ConfigError(
            "hydra.run.dir",
            str(run_dir),
            "a directory that holds no run yet (this one does: add resume=true to continue it)",
        )
    check_no_checkpoint(checkpoint_path(cfg).parent)
    return None


def _fit(
    cfg: DictConfig,
    module: SequenceModule,
    trainer: L.Trainer,
    stop: StopOnSignal,
    resume_from: Path | None,
    log: logging.Logger,
) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if resume_from is None:
        write_atomically(run_dir / "config.yaml", resolved)
    log.info("%s %s", "resume" if resume_from else "run", run_dir)
    log.info("config: %s", " ".join(f"{k}={v}" for k, v in hyperparameters(cfg).items()))
    log.info("budget: trainer.max_steps=%s", cfg.trainer.max_steps)
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        with warnings.catch_warnings():
            # Batch k is drawn from (seed, k), not from a dataloader's position: a resumed run
            # goes on exactly as the run never stopped (tests/test_interrupts.py), whatever
            # Lightning, which cannot know that, warns.
            warnings.filterwarnings(
                "ignore",
                "You're resuming from a checkpoint that ended before the epoch ended "
                "and your dataloader is not resumable",
                PossibleUserWarning,
            )
            trainer.fit(module, ckpt_path=resume_from, weights_only=True)
        done = stop.stopped_at_step is None and module.diverged_at_step is None
        if done and module.val_step != trainer.global_step:
            trainer.validate(module, verbose=False)
    except Interrupted:
        pass
    except SIGTERMException:
        # Lightning's own stop, for a SIGTERM in the instant before ``stop`` took SIGTERM back
        # (start of fit or of the closing validation): an interruption like any other.
        stop.received = stop.received or "SIGTERM"
        stop.stopped_here(trainer)
    except BaseException as caught:  # recorded as failed, then raised again
        error = caught
        log.error("exception during the run", exc_info=True)
    metrics = summarise(module, trainer, time.perf_counter() - start)
    metrics["status"] = status(module, stop, error)
    if error is not None:
        metrics["error"] = outcome.one_line(error)
    keep_old = error is not None and resume_from is not None
    if not keep_old:  # a failed resume leaves the finished record it tried to continue
        outcome.write_metrics(run_dir, metrics)
        if resume_from is not None:
            write_atomically(run_dir / "config.yaml", resolved)  # the new budget
    # an interrupted run was saved at the batch it stopped after
    if error is None and stop.stopped_at_step is None and trainer.global_step > 0:
        save_atomically(trainer, checkpoint_path(cfg), identity(cfg))
    try:
        log_hparams(trainer, cfg, metrics)
    except Exception as caught:  # TensorBoard cannot write (a full disk): the rest is recorded
        log.error("TensorBoard's HPARAMS not written", exc_info=True)
        if error is None:  # else the final line says why the run failed
            reason = outcome.one_line(caught)
            print(
                f"bpttlab-train: error: TensorBoard's HPARAMS not written: {reason}",
                file=sys.stderr,
            )
    line = outcome.final_line(metrics, resume_hint(run_dir))
    log.info(line)
    print(f"run dir: {run_dir}\ntensorboard --logdir {shlex.quote(str(run_dir))}\n{line}")
    if error is not None:
        outcome.mark_reported(error)
        raise error
    return metrics


def status(module: SequenceModule, stop: StopOnSignal, error: BaseException | None) -> str:
    if error is not None:
        return "failed"
    if module.diverged_at_step is not None:
        return "diverged"
    if stop.stopped_at_step is not None:
        return "interrupted"
    return "completed"


def resume_hint(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` alone: its own overrides (in a sweep,
    this job's values, not the sweep's), in that dir, resumed."""
    if HydraConfig.initialized():
        args = list(HydraConfig.get().overrides.task)
    else:
        args = [a for a in sys.argv[1:] if not a.startswith(("-", "hydra."))]
    args = [a for a in args if not a.startswith("resume=")]
    run_dir_line = f"hydra.run.dir={command_line.hydra_quoted(str(run_dir))}"
    return shlex.join(["bpttlab-train", *args, run_dir_line, "resume=true"])


def log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Fill TensorBoard's HPARAMS tab: the run's hyperparameters with its final metrics, under
    ``z_hparams/``: one point each, they sort after the ``train/`` and ``val/`` curves, which
    TensorBoard's Time Series opens first (``bpttlab.gradflow.figures.FAMILY``)."""
    final = {
        f"z_hparams/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float | bool) and v is not None
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hyperparameters(cfg), final)
            logger.finalize(outcome.TENSORBOARD_STATUS[metrics["status"]])


def summarise(module: SequenceModule, trainer: L.Trainer, wall_seconds: float) -> dict[str, Any]:
    """The numbers metrics.json records; non-finite values become null. ``paths``: per layer,
    the path it ran (``cells.paths.LayerPath``) in each kind of call this process made;
    ``truncation_history``: under ``bptt.truncation=auto`` every choice of K (else null)."""
    val = module.val_metrics
    loss = val.get("loss")
    finite = loss is not None and math.isfinite(loss)
    return {
        "final_val_loss": loss if finite else None,
        "baseline_loss": module.task.baseline_loss,
        "normalized_loss": val["normalized_loss"] if finite else None,
        "val_accuracy": val.get("accuracy"),
        "solved": bool(val.get("solved", False)),
        "solved_at_step": module.solved_at_step,
        "diverged": module.diverged_at_step is not None,
        "diverged_at_step": module.diverged_at_step,
        "steps": trainer.global_step,
        "sequences": module.batches * module.batch_size,
        "wall_seconds": round(wall_seconds, 3),
        "subnormals_flushed": subnormals_flushed(),
        "freed_memory_kept": freed_memory_kept(),
        "compiled_kernels": compiled_in_effect(),
        "paths": module.model.paths,
        "truncation_history": module.adaptive.records() if module.adaptive else None,
    }
