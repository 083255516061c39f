"""bpttlab-train: build a run from the Hydra config, fit it, and write what it measured.

    bpttlab-train cell=gru task=adding task.gap=200 bptt.truncation=20 clip=norm
    bpttlab-train -m cell=rnn,lstm,gru task.gap=50,100,200

Everything reaches code through ``_target_``. A config value that cannot run is reported in
one line naming its key, before any training, with exit status 2.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bpttlab import config_checks, outcome, preflight, rundir, validation
from bpttlab.allocator import freed_memory_kept, keep_freed_memory
from bpttlab.checkpoint import save_atomically
from bpttlab.hparams import hyperparameters
from bpttlab.interrupts import Interrupted, StopOnSignal
from bpttlab.kernels.compiled import compiled_in_effect, use_compiled
from bpttlab.module import SequenceModule
from bpttlab.outcome import write_atomically
from bpttlab.resume import check_resume, checkpoint_path
from bpttlab.rundir import RunLock
from bpttlab.runlog import ValidationLog, run_log
from bpttlab.subnormals import flush_subnormals, subnormals_flushed
from bpttlab.tasks.base import SEED_LIMIT

CONFIG_DIR = str(files("bpttlab.conf"))
DIVERGED_OBJECTIVE = 1e3
CONFIG_MISTAKES = (ValueError, TypeError, MisconfigurationException, OmegaConfBaseException)


def build_module(cfg: DictConfig, cache: dict | None = None) -> SequenceModule:
    """Task, model, optimiser, BPTT schedule and clipping, assembled into a SequenceModule."""
    seed = validation.integer("seed", cfg.seed, 0)
    if seed >= SEED_LIMIT:
        raise validation.ConfigError("seed", seed, f"an integer from 0 to {SEED_LIMIT - 1}")
    validation.positive("optim.lr", cfg.optim.get("lr"))
    if cache is None:  # a check builds nothing that it keeps
        L.seed_everything(seed, verbose=False)
    task = _instantiate("task", cfg.task, cache=cache)
    batch_size = cfg.module.get("batch_size")
    if isinstance(batch_size, int):
        config_checks.check_memory(cfg.cell, task.seq_len, task.input_size, batch_size)
    model = _instantiate(
        "cell",
        cfg.cell,
        cache=cache,
        input_size=task.input_size,
        output_size=task.output_size,
        token_input=task.token_input,
        t_max=task.seq_len,
    )
    make_module = _instantiate("module", cfg.module, cache=cache, _partial_=True)
    parts = {
        "optimizer": _instantiate("optim", cfg.optim, cache=cache),
        "bptt": _instantiate("bptt", cfg.bptt, cache=cache),
        "clipping": _instantiate("clip", cfg.clip, cache=cache),
    }
    # what a module checks does not depend on the optimiser or the seed
    slot = (
        "module",
        *(id(x) for x in (make_module, model, task, parts["bptt"], parts["clipping"])),
    )
    if cache is not None and slot in cache:
        return cache[slot]
    try:  # objects, not configs: instantiate would turn them into DictConfigs
        module = make_module(model=model, task=task, seed=seed, **parts)
    except validation.ConfigError as error:
        raise error.under("module") from None
    if cache is not None:
        cache[slot] = module
    return module


def check_config(cfg: DictConfig, cache: dict | None = None) -> None:
    """Build what a run is made of that can be built without a run dir, to validate ``cfg``.
    With a ``cache`` (a sweep's check), each object is built once per config node."""
    config_checks.check_top_level(cfg)
    build_module(cfg, cache)
    _once(cache, "trainer", cfg.trainer, config_checks.check_trainer)
    _once(cache, "optim", cfg.optim, config_checks.check_optim)
    callbacks = cfg.get("callbacks") or {}
    for name, node in callbacks.items():  # paths in the run dir: not made by a check
        paths = {k: None for k in ("save_dir", "dirpath") if node is not None and k in node}
        if node is not None:
            _instantiate(f"callbacks.{name}", node, cache=cache, **paths)
    grad_flow = callbacks.get("grad_flow")
    if grad_flow is not None and not cfg.get("logger"):
        raise validation.ConfigError(
            "logger",
            None,
            "a logger while callbacks.grad_flow is on (drop it with ~callbacks.grad_flow)",
        )


def build_trainer(cfg: DictConfig, extra_callbacks: list[L.Callback] = ()) -> L.Trainer:
    chosen = (cfg.get("callbacks") or {}).items()
    callbacks = [_instantiate(f"callbacks.{k}", v) for k, v in chosen if v is not None]
    callbacks += list(extra_callbacks)
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    logger = _instantiate("logger", cfg.logger) if cfg.get("logger") else False
    return _instantiate("trainer", cfg.trainer, logger=logger, callbacks=callbacks)


def _instantiate(key: str, node: DictConfig, cache: dict | None = None, **kwargs: Any) -> Any:
    """hydra.utils.instantiate; a bad value becomes a one-line ConfigError on ``key``. With a
    ``cache``, a node (the same object) with the same arguments is built, or fails, once."""
    if cache is None:
        return _build(key, node, **kwargs)
    slot = (key, id(node), repr(sorted(kwargs.items())))
    if slot not in cache:
        try:
            cache[slot] = (node, _build(key, node, **kwargs))
        except validation.ConfigError as error:
            cache[slot] = (node, error)
    built = cache[slot][1]
    if isinstance(built, validation.ConfigError):
        raise built
    return built


def _once(cache: dict | None, key: str, node: DictConfig, check: Callable) -> None:
    """``check(node)``, once per node when there is a cache."""
    if cache is None:
        return check(node)
    slot = ("check", key, id(node))
    if slot not in cache:
        try:
            check(node)
            cache[slot] = (node, None)
        except validation.ConfigError as error:
            cache[slot] = (node, error)
    if cache[slot][1] is not None:
        raise cache[slot][1]


def _build(key: str, node: DictConfig, **kwargs: Any) -> Any:
    config_checks.check_finite(key, node)
    try:
        return instantiate(node, **kwargs)
    except Exception as error:
        cause = error
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, validation.ConfigError):
            raise cause.under(key) from None
        if isinstance(cause, CONFIG_MISTAKES):
            raise validation.ConfigError.failed(key, cause) from error
        raise


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
    if validation.boolean("resume", cfg.get("resume", False)):
        return check_resume(cfg)
    if (run_dir / "config.yaml").exists() or (run_dir / "metrics.json").exists():
        raise validation.ConfigError(
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
    log_hparams(trainer, cfg, metrics)
    line = outcome.final_line(metrics, resume_hint(run_dir))
    log.info(line)
    print(f"run dir: {run_dir}\ntensorboard --logdir {shlex.quote(str(run_dir))}\n{line}")
    if error is not None:
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
    run_dir_line = f"hydra.run.dir={validation.hydra_quoted(str(run_dir))}"
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


def objective(metrics: dict[str, Any], name: str) -> float:
    """The number a sweeper minimises: ``metrics[name]``, or DIVERGED_OBJECTIVE when the run
    diverged or never measured it (so that a search sees a bad but finite score)."""
    value = metrics.get(name)
    if metrics.get("diverged") or value is None or not math.isfinite(float(value)):
        return DIVERGED_OBJECTIVE
    return float(value)


def torch_threads(cfg: DictConfig) -> int:
    """Torch threads per run: ``cfg.threads``, or the cores shared out among the jobs that the
    launcher runs at once (joblib's n_jobs, submitit's cpus_per_task), so N parallel runs do not
    oversubscribe the machine."""
    if cfg.get("threads"):
        return validation.integer("threads", cfg.threads, 1)
    cores = os.cpu_count() or 1
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    jobs = launcher.get("n_jobs")
    if jobs is None:
        return cores
    return max(1, cores // (cores if jobs < 1 else jobs))


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


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Checkpoints are taken after a batch's optimiser steps, which is what resuming needs.
    warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
    # Short runs log less often than log_every_n_steps asks, which is what they should do.
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    try:
        torch.set_num_threads(torch_threads(cfg))
        flush_subnormals(cfg.flush_subnormals)
        keep_freed_memory(cfg.get("keep_freed_memory", True))
        use_compiled(cfg.get("compiled_kernels", True))
        stop = StopOnSignal()
        metrics = train(cfg, stop=stop)
    except validation.ConfigError as error:
        print(f"bpttlab-train: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:
        if _multirun():  # recorded as failed in its run dir; the sweep goes on
            return DIVERGED_OBJECTIVE
        raise SystemExit(1) from None  # train() printed the one-line outcome
    if stop.received is not None:  # a sweep stops too (also when this run got to finish)
        raise SystemExit(128 + signal.Signals[stop.received].value)  # as a shell says
    return objective(metrics, cfg.optimized_metric)


def _multirun() -> bool:
    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def main() -> None:
    """Console entry point: check the command line in one line per error, then run Hydra."""
    try:
        args = validation.hydra_arguments(sys.argv[1:])
        if args is not None:  # None: --help, --cfg, --info and the like, which run nothing
            validation.check_command_line(args, CONFIG_DIR, "train", check_config)
            preflight.check_run_dirs(args, CONFIG_DIR, "train")
    except validation.ConfigError as error:
        for line in getattr(error, "lines", [str(error)]):
            print(f"bpttlab-train: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    _hydra_main()


rundir.register_resolvers()

if __name__ == "__main__":
    main()
