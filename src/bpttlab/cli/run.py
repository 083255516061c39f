"""One run in its run dir: hold the lock, fit (or resume), and record what happened in metrics.json,
the run log and TensorBoard's HPARAMS.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
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
from bpttlab.runs.checkpoint import save_atomically
from bpttlab.runs.interrupts import Interrupted, StopOnSignal
from bpttlab.runs.outcome import write_atomically
from bpttlab.runs.resume import check_resume, checkpoint_path
from bpttlab.runs.rundir import RunLock
from bpttlab.runs.runlog import ValidationLog, run_log


def train(cfg: DictConfig, stop: StopOnSignal | None = None) -> dict[str, Any]:
    """Run one experiment into ``cfg.run_dir``; return the metrics written to metrics.json.

    The run holds the run dir's lock throughout. A new run refuses a dir that already holds a
    run; ``resume=true`` refuses anything but the run's own config and a readable checkpoint.
    Whatever happens, metrics.json ends with a ``status``; a failed resume leaves the files
    of the run it tried to continue as they were.
    """
    run_dir = Path(cfg.run_dir)
    stop = stop or StopOnSignal()
    stop.install()
    try:
        module = build_module(cfg)
        trainer = build_trainer(cfg, extra_callbacks=[stop])
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
    holds no run yet."""
    run_dir = Path(cfg.run_dir)
    if checks.boolean("resume", cfg.get("resume", False)):
        return check_resume(cfg)
    if (run_dir / "config.yaml").exists() or (run_dir / "metrics.json").exists():
        raise checks.ConfigError(
            "hydra.run.dir",
            str(run_dir),
            "a directory that holds no run yet (this one does: add resume=true to continue it)",
        )
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
        trainer.fit(module, ckpt_path=resume_from, weights_only=True)
        done = stop.stopped_at_step is None and module.diverged_at_step is None
        if done and module.val_step != trainer.global_step:
            trainer.validate(module, verbose=False)
    except Interrupted:
        pass
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
        save_atomically(trainer, checkpoint_path(cfg))
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
    """The command that continues the run in ``run_dir``: this command, in that dir, resumed."""
    args = [
        a
        for a in sys.argv[1:]
        if a not in ("-m", "--multirun")
        and not a.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "resume="))
    ]
    run_dir_line = f"hydra.run.dir={command_line.hydra_quoted(str(run_dir))}"
    return shlex.join(["bpttlab-train", *args, run_dir_line, "resume=true"])


def log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Fill TensorBoard's HPARAMS tab: the run's hyperparameters with its final metrics."""
    final = {
        f"hparams/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float | bool) and v is not None
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hyperparameters(cfg), final)
            logger.finalize(outcome.TENSORBOARD_STATUS[metrics["status"]])


def summarise(module: SequenceModule, trainer: L.Trainer, wall_seconds: float) -> dict[str, Any]:
    """The numbers metrics.json records; non-finite values become null."""
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
    }
