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
import signal
import sys
import threading
import warnings
from importlib.resources import files
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from bpttlab import checks
from bpttlab.cells.kernels.compiled import use_compiled
from bpttlab.cli import command_line, imports, preflight
from bpttlab.cli.allocator import keep_freed_memory
from bpttlab.cli.build import check_config
from bpttlab.cli.run import train
from bpttlab.cli.subnormals import flush_subnormals
from bpttlab.runs import outcome, rundir
from bpttlab.runs.interrupts import StopOnSignal
from bpttlab.runs.resume import Finished

CONFIG_DIR = str(files("bpttlab.conf"))
DIVERGED_OBJECTIVE = 1e3


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
        return checks.integer("threads", cfg.threads, 1)
    cores = os.cpu_count() or 1
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    jobs = launcher.get("n_jobs")
    if jobs is None:
        return cores
    return max(1, cores // (cores if jobs < 1 else jobs))


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Checkpoints are taken after a batch's optimiser steps, which is what resuming needs.
    warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
    # Short runs log less often than log_every_n_steps asks, which is what they should do.
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    stop = StopOnSignal()
    threading.excepthook = _thread_failed
    THREAD_ERRORS.clear()
    try:  # a launcher's worker is a process of its own: it imports them too
        names = imports.module_names(cfg.get("imports", []))
        imports.import_modules(names, HydraConfig.get().runtime.cwd, CONFIG_DIR)
        torch.set_num_threads(torch_threads(cfg))
        flush_subnormals(cfg.flush_subnormals)
        keep_freed_memory(cfg.get("keep_freed_memory", True))
        use_compiled(cfg.get("compiled_kernels", True))
        metrics = train(cfg, stop=stop)
    except Finished as finished:  # its files are left as they are
        print(f"bpttlab-train: {finished}")
        return objective(finished.metrics, cfg.optimized_metric)
    except checks.ConfigError as error:
        print(f"bpttlab-train: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (Exception, SystemExit) as error:  # SystemExit: Lightning's on a second Ctrl-C
        if stop.received is not None:  # the signal ended it: the status a shell gives
            raise SystemExit(128 + signal.Signals[stop.received].value) from None
        if not outcome.reported(error):  # failed before or while recording its outcome
            reason = outcome.one_line(error)
            print(
                f"bpttlab-train: error: the run in {cfg.run_dir} failed: {reason}", file=sys.stderr
            )
        if _multirun():  # recorded as failed in its run dir; the sweep goes on
            return DIVERGED_OBJECTIVE
        raise SystemExit(1) from None
    if THREAD_ERRORS:  # nothing else said so
        print(f"bpttlab-train: error: {THREAD_ERRORS[0]}", file=sys.stderr)
    if stop.received is not None:  # a sweep stops too (also when this run got to finish)
        raise SystemExit(128 + signal.Signals[stop.received].value)  # as a shell says
    return objective(metrics, cfg.optimized_metric)


THREAD_ERRORS: list[str] = []
"""Why threads of this run failed, e.g. TensorBoard's writer on a full disk."""


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """Keep a failed thread's reason for one line at the end, instead of its traceback now:
    a run that fails for the same reason says it once."""
    name = args.thread.name if args.thread is not None else "a thread"
    THREAD_ERRORS.append(f"{name} failed: {outcome.one_line(args.exc_value)}")


def _multirun() -> bool:
    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def main() -> None:
    """Console entry point: check the command line in one line per error, then run Hydra."""
    try:
        args = command_line.hydra_arguments(sys.argv[1:])
        overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
        imports.import_modules(imports.requested(overrides), os.getcwd(), CONFIG_DIR)
        if args is not None:  # None: --help, --cfg, --info and the like, which run nothing
            command_line.check_command_line(args, CONFIG_DIR, "train", check_config)
            preflight.check_run_dirs(args, CONFIG_DIR, "train")
    except Finished as finished:  # before Hydra writes anything into its run dir
        print(f"bpttlab-train: {finished}")
        return
    except checks.ConfigError as error:
        for line in getattr(error, "lines", [str(error)]):
            print(f"bpttlab-train: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    _hydra_main()


rundir.register_resolvers()

if __name__ == "__main__":
    main()
