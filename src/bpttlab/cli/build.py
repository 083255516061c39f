"""Build a run's parts from its Hydra config: a one-line ConfigError naming the key for a value
that cannot be built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from bpttlab import checks
from bpttlab.cli import config_checks
from bpttlab.module import SequenceModule
from bpttlab.runs.rundir import check_writable
from bpttlab.tasks.base import SEED_LIMIT

OUTPUT_DIRS = ("save_dir", "dirpath")
"""The keys of a logger or callback that name a dir it writes to."""
CONFIG_MISTAKES = (ValueError, TypeError, MisconfigurationException, OmegaConfBaseException)


def build_module(cfg: DictConfig, cache: dict | None = None) -> SequenceModule:
    """Task, model, optimiser, BPTT schedule and clipping, assembled into a SequenceModule."""
    seed = checks.integer("seed", cfg.seed, 0)
    if seed >= SEED_LIMIT:
        raise checks.ConfigError("seed", seed, f"an integer from 0 to {SEED_LIMIT - 1}")
    checks.positive("optim.lr", cfg.optim.get("lr"))
    if cache is None:  # a check builds nothing that it keeps
        L.seed_everything(seed, verbose=False)
    task = _instantiate("task", cfg.task, cache=cache)
    config_checks.check_memory(cfg.cell, task, cfg.module)
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
    except checks.ConfigError as error:
        raise error.under("module") from None
    if cache is not None:
        cache[slot] = module
    return module


def check_config(cfg: DictConfig, cache: dict | None = None) -> None:
    """Build what a run is made of that can be built without a run dir, to validate ``cfg``.
    With a ``cache`` (a sweep's check), each object is built once per config node."""
    config_checks.check_top_level(cfg)
    module = build_module(cfg, cache)
    _once(cache, "trainer", cfg.trainer, config_checks.check_trainer)
    _once(cache, "optim", cfg.optim, config_checks.check_optim)
    if cfg.get("logger"):
        check_output_dirs("logger", cfg.logger)
    callbacks = cfg.get("callbacks") or {}
    for name, node in callbacks.items():  # paths in the run dir: not made by a check
        check_output_dirs(f"callbacks.{name}", node)
        paths = {k: None for k in ("save_dir", "dirpath") if node is not None and k in node}
        if node is not None:
            _instantiate(f"callbacks.{name}", node, cache=cache, **paths)
    grad_flow = callbacks.get("grad_flow")
    if grad_flow is not None and not cfg.get("logger"):
        raise checks.ConfigError(
            "logger",
            None,
            "a logger while callbacks.grad_flow is on (drop it with ~callbacks.grad_flow)",
        )
    check_lyapunov(cfg, module.task.seq_len)


def check_lyapunov(cfg: DictConfig, seq_len: int) -> None:
    """Lyapunov spectra, when on, need a logger and a warm-up shorter than the sequences."""
    lyapunov = (cfg.get("callbacks") or {}).get("lyapunov")
    if lyapunov is None or lyapunov.get("every_n_steps") is None:
        return
    if not cfg.get("logger"):
        raise checks.ConfigError(
            "logger", None, "a logger while callbacks.lyapunov.every_n_steps is set (or null it)"
        )
    if lyapunov.warmup >= seq_len:  # an integer: the callback's own check ran
        raise checks.ConfigError(
            "callbacks.lyapunov.warmup",
            lyapunov.warmup,
            f"an integer below the sequence length {seq_len}",
        )


def check_output_dirs(section: str, node: DictConfig | None) -> None:
    """A dir a logger or callback writes to, set outside the run dir, must be creatable (a
    path under ``${run_dir}`` cannot be resolved yet: the run dir's own check covers it)."""
    for key in OUTPUT_DIRS:
        if node is None or key not in node:
            continue
        try:
            value = node[key]
        except OmegaConfBaseException:  # under ${run_dir}, which needs the run
            continue
        if value is not None:
            check_writable(f"{section}.{key}", value)


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
        except checks.ConfigError as error:
            cache[slot] = (node, error)
    built = cache[slot][1]
    if isinstance(built, checks.ConfigError):
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
        except checks.ConfigError as error:
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
        if isinstance(cause, checks.ConfigError):
            raise cause.under(key) from None
        if isinstance(cause, CONFIG_MISTAKES):
            raise checks.ConfigError.failed(key, cause) from error
        raise
