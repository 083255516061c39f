"""Checks of the keys no constructor of bpttlab checks: the Trainer's, the optimiser's ranges,
the top-level keys, booleans, non-finite numbers, and whether a run's tensors fit in memory.
Each raises a one-line ConfigError naming the full key."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from bpttlab.checks import ConfigError, boolean, choice, integer, positive

METRICS = (
    "final_val_loss",
    "normalized_loss",
    "val_accuracy",
    "solved_at_step",
    "diverged_at_step",
    "steps",
    "sequences",
    "wall_seconds",
)
"""The numeric metrics.json keys a sweeper can minimise (``optimized_metric``)."""

PRECISIONS = ("32-true", "64-true")
GPU_PRECISIONS = ("16-mixed", "bf16-mixed", "bf16-true")
BOOLEANS = {
    "trainer": ("enable_progress_bar", "enable_model_summary", "deterministic"),
    "module": ("stop_when_solved",),
    "task": ("recall_loss_only",),
    "cell": ("onednn",),
}


MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))
"""The most torch threads a run may ask for: more threads than cores only oversubscribe them,
and a cluster node may have several times the cores of the machine a sweep starts on (hence
the slack and the floor); tens of thousands exhaust what the OS lets one process start."""


def check_top_level(cfg: DictConfig) -> None:
    boolean("resume", cfg.get("resume", False))
    boolean("flush_subnormals", cfg.get("flush_subnormals", True))
    boolean("keep_freed_memory", cfg.get("keep_freed_memory", True))
    boolean("compiled_kernels", cfg.get("compiled_kernels", True))
    threads = cfg.get("threads")
    if threads is not None:
        integer("threads", threads, 1, optional=True)
        if threads > MAX_THREADS:
            raise ConfigError(
                "threads",
                threads,
                f"an integer from 1 to {MAX_THREADS} or null (4x this machine's "
                f"{os.cpu_count()} cores, at least 256: more threads only oversubscribe them)",
            )
    choice("optimized_metric", cfg.get("optimized_metric"), METRICS)
    for section, keys in BOOLEANS.items():
        node = cfg.get(section) or {}
        for key in keys:
            if key in node:
                boolean(f"{section}.{key}", node[key])


def check_trainer(trainer: DictConfig) -> None:
    """The Trainer arguments bpttlab runs with: one device, CPU or an available GPU, a
    precision that means what it says, and positive intervals."""
    accelerator = choice("trainer.accelerator", trainer.get("accelerator"), ("cpu", "gpu", "auto"))
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", "gpu", "cpu or auto here (no CUDA GPU is visible)")
    gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    allowed = PRECISIONS + (GPU_PRECISIONS if gpu else ())
    choice("trainer.precision", str(trainer.get("precision")), allowed)
    devices = trainer.get("devices", 1)
    if devices != 1:
        raise ConfigError(
            "trainer.devices", devices, "1 (sweep for parallelism: -m with a launcher)"
        )
    integer("trainer.max_steps", trainer.get("max_steps"), 1)
    integer("trainer.val_check_interval", trainer.get("val_check_interval"), 1)
    integer("trainer.log_every_n_steps", trainer.get("log_every_n_steps"), 1)
    integer("trainer.num_sanity_val_steps", trainer.get("num_sanity_val_steps", 0), 0)
    integer("trainer.check_val_every_n_epoch", trainer.get("check_val_every_n_epoch"), 1, True)
    if trainer.get("max_epochs", -1) != -1:
        integer("trainer.max_epochs", trainer.max_epochs, 1)


def check_hydra(hydra: DictConfig) -> None:
    """The launcher's and sweeper's keys that their plugins would take without a word (joblib
    runs an unknown backend as loky) or refuse with a traceback (Optuna)."""
    launcher = hydra.get("launcher") or {}
    if str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        from joblib.parallel import BACKENDS  # the backends joblib knows now

        optional_choice("hydra.launcher.backend", launcher.get("backend"), sorted(BACKENDS))
        optional_choice("hydra.launcher.prefer", launcher.get("prefer"), ("processes", "threads"))
        optional_choice("hydra.launcher.require", launcher.get("require"), ("sharedmem",))
    sweeper = hydra.get("sweeper") or {}
    if str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        integer("hydra.sweeper.n_trials", sweeper.get("n_trials"), 1)
        integer("hydra.sweeper.n_jobs", sweeper.get("n_jobs"), 1)
        direction = sweeper.get("direction")
        directions = list(direction) if OmegaConf.is_list(direction) else [direction]
        if not directions or not all(str(d) in ("minimize", "maximize") for d in directions):
            raise ConfigError(
                "hydra.sweeper.direction",
                direction,
                "minimize or maximize (a list of them for several objectives)",
            )


def optional_choice(key: str, value: object, choices: Iterable[str]) -> object:
    choices = tuple(choices)
    if value is not None and value not in choices:
        raise ConfigError(key, value, "one of " + ", ".join(choices) + " or null")
    return value


def check_optim(optim: DictConfig) -> None:
    """The optimiser's documented ranges."""
    positive("optim.lr", optim.get("lr"))
    for key in ("momentum", "alpha", "dampening"):
        if key in optim:
            unit_interval(f"optim.{key}", optim[key])
    if "betas" in optim:
        betas = optim.betas
        if not OmegaConf.is_list(betas) or len(betas) != 2:
            raise ConfigError("optim.betas", betas, "two numbers in [0, 1), e.g. [0.9,0.999]")
        for i, beta in enumerate(betas):
            unit_interval(f"optim.betas.{i}", beta)
    if "weight_decay" in optim:
        number("optim.weight_decay", optim.weight_decay, 0.0)
    if "eps" in optim:
        positive("optim.eps", optim.eps)
    for key in ("nesterov", "amsgrad", "centered", "maximize"):
        if key in optim:
            boolean(f"optim.{key}", optim[key])


def unit_interval(key: str, value: object) -> float:
    number(key, value, 0.0)
    if not value < 1:
        raise ConfigError(key, value, "a number in [0, 1)")
    return float(value)


def number(key: str, value: object, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, value, f"a finite number >= {minimum}")
    if value < minimum:
        raise ConfigError(key, value, f"a finite number >= {minimum}")
    return float(value)


def check_finite(key: str, node: object) -> None:
    """No NaN or infinity anywhere under ``node`` (the yaml would read them as floats)."""
    container = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    for path, value in _leaves(key, container):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(path, value, "a finite number")


def _leaves(prefix: str, node: object):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(f"{prefix}.{k}", v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(f"{prefix}.{i}", v)
    else:
        yield prefix, node


def check_memory(cell: DictConfig, seq_len: int, input_size: int, batch_size: int) -> None:
    """Refuse a network whose weights, gradients, optimiser state and one batch's activations
    (float32, a lower bound) exceed this machine's memory."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}.get(cell.get("kind"), 4)
    hidden = cell.get("hidden_size")
    layers = cell.get("num_layers")
    embedding = cell.get("embedding_dim")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (hidden, layers, embedding)):
        return  # the cell's own checks name the key
    if min(hidden, layers, embedding) < 1:
        return
    per_layer = gates * hidden * (max(embedding, hidden) + hidden + 2)
    parameters = layers * per_layer + embedding * (input_size + 1) + hidden * (input_size + 1)
    activations = batch_size * seq_len * layers * hidden * (gates + 2)
    needed = 4 * (4 * parameters + activations)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ConfigError(
            "cell.hidden_size",
            hidden,
            f"a size that fits in memory: this run needs at least {needed / 2**30:.3g} GiB, "
            f"the machine has {available / 2**30:.3g} GiB",
        )
