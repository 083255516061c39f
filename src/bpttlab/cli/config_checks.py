"""Checks of the keys no constructor of bpttlab checks: the Trainer's, the optimiser's ranges,
the top-level keys (none added), booleans, non-finite numbers, the launcher's and sweeper's
keys, the default run dir, and whether a run's tensors fit in memory. Each raises a one-line
ConfigError naming the full key."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bpttlab.cells import CELLS
from bpttlab.checks import ConfigError, boolean, choice, integer, positive
from bpttlab.cli.imports import module_names
from bpttlab.runs.rundir import check_writable

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
    module_names(cfg.get("imports", []))
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


def check_default_dir(hydra: DictConfig, args: list[str], multirun: bool) -> None:
    """The run (or sweep) dir that Hydra makes when the command line names none (a dir it
    names is checked whole, by preflight): the part of its pattern before the first
    interpolation must lie under a writable dir (not, say, a read-only working dir)."""
    multirun = multirun or str(hydra.get("mode")) == "MULTIRUN"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if any(a.startswith(key + "=") for a in args):
        return
    pattern = OmegaConf.to_container(hydra, resolve=False)[key.split(".")[1]]["dir"]
    check_writable(key, Path(pattern.split("${")[0] + "_").parent)


def check_new_sections(base: DictConfig, overrides: list) -> None:
    """Refuse ``+name=...`` that adds a top-level key no part of bpttlab reads."""
    for override in overrides:
        key = override.key_or_group.lstrip("+~")
        if (override.is_add() or override.is_force_add()) and key.split(".")[0] not in base:
            value = override.input_line.partition("=")[2]
            value = value if override.is_sweep_override() else override.value()
            raise ConfigError(key, value, "nothing: there is no such key (--cfg job lists them)")


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


SIZE_KEYS = ("hidden_size", "num_layers", "embedding_dim", "state_size", "expansion", "ff_mult")
"""The cell keys that size a network (those its kind has)."""


def check_memory(cell: DictConfig, task: object, module: DictConfig) -> None:
    """Refuse a run whose weights, gradients, optimiser state, one batch's activations and
    fixed validation set (float32, a lower bound, estimated: nothing is allocated) exceed this
    machine's memory, naming the key that drives it: the one whose value, set to 1, would save
    the most."""
    sizes = {f"cell.{k}": cell.get(k) for k in SIZE_KEYS if cell.get(k) is not None}
    if cell.get("block") is False or sizes.get("cell.ff_mult") == 0:
        sizes.pop("cell.ff_mult", None)  # no MLP
    sizes["module.batch_size"] = module.get("batch_size")
    sizes["module.val_batches"] = module.get("val_batches", 4)
    numbers = all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in sizes.values()
    )
    if not numbers or any(k not in sizes for k in ("cell.hidden_size", "cell.num_layers")):
        return  # the constructors name the key
    needed = memory_needed(cell.get("kind"), sizes, task)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed <= available:
        return
    key = max(sizes, key=lambda k: needed - memory_needed(cell.get("kind"), sizes | {k: 1}, task))
    raise ConfigError(
        key,
        sizes[key],
        f"a size that fits in memory: this run needs at least {needed / 2**30:.3g} GiB, "
        f"the machine has {available / 2**30:.3g} GiB",
    )


def memory_needed(kind: object, sizes: dict[str, float], task: object) -> float:
    """Bytes a run of ``kind`` with these ``sizes`` holds at least (see check_memory)."""
    hidden, layers = sizes["cell.hidden_size"], sizes["cell.num_layers"]
    embedding = sizes.get("cell.embedding_dim", hidden)
    batch, seq_len = sizes["module.batch_size"], task.seq_len
    first, per_step = layer_size(kind, sizes, embedding)
    parameters = first + (layers - 1) * layer_size(kind, sizes, hidden)[0]
    parameters += embedding * (task.input_size + 1) + (hidden + 1) * task.output_size
    activations = batch * seq_len * layers * per_step
    per_position = 16 if task.token_input else 4 * task.input_size + 8  # inputs and targets
    validation = sizes["module.val_batches"] * batch * seq_len * per_position
    return 4 * (4 * parameters + activations) + validation


def layer_size(kind: object, sizes: dict[str, float], n_in: float) -> tuple[float, float]:
    """A layer's weights, and the numbers it keeps per sequence and step for the backward
    pass, for ``n_in`` inputs (a lower bound: biases and norms left out)."""
    hidden = sizes["cell.hidden_size"]
    if kind == "lru":
        state = sizes.get("cell.state_size", hidden)
        return 4 * state * hidden + 3 * state + 2 * hidden * hidden, 4 * state + 3 * hidden
    if kind in ("mingru", "minlstm"):
        state = int(sizes.get("cell.expansion", 1) * hidden)
        gates = 2 if kind == "mingru" else 3
        ff = sizes.get("cell.ff_mult", 0)
        weights = gates * state * min(n_in, hidden) + 2 * ff * hidden * hidden
        return weights, (gates + 1) * state + ff * hidden
    if kind == "orthogonal":  # A in float64, and exp(A)
        return n_in * hidden + 3 * hidden * hidden, 3 * hidden
    gates = getattr(CELLS.get(kind), "gates", 4)  # 4 for a cell of unknown gate count
    return gates * hidden * (n_in + hidden + 2), (gates + 2) * hidden
