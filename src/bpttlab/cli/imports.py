"""``imports=[my_cells,my_tasks]``: the user's modules that the command line imports before it
builds anything, and the config nodes that make their cells and tasks choices of the command
line, as conf/cell/*.yaml and conf/task/*.yaml make bpttlab's own.

A cell registered with ``@bpttlab.register("leaky")`` becomes ``cell=leaky``: a node that
starts from ``cell/base`` and holds ``kind: leaky`` and the options its constructor takes, with
their defaults. A task (a ``bpttlab.Task`` dataclass defined in an imported module) becomes
``task=<its name>`` (its ``name`` attribute, else its class name in snake case without "Task"):
a node with its ``_target_`` and its fields' defaults. A name that has a yaml keeps its yaml.
The modules are found as ``python -m`` finds them: in the current directory first.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import MISSING, OmegaConf

from bpttlab.cells import CELLS
from bpttlab.checks import ConfigError
from bpttlab.runs.outcome import one_line
from bpttlab.tasks import Task

KEY = "imports"
ACCEPTS = "a list of module names, e.g. imports=[my_cells,my_tasks]"
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
BUILT_BY_BPTTLAB = ("input_size", "hidden_size", "t_max")
"""A cell's constructor arguments that RecurrentNet passes: no config keys."""
PLAIN = (bool, int, float, str, type(None))
"""Defaults a config node can hold; an option with another default is left out of the node."""


def module_names(value: Any) -> list[str]:
    """``value`` (a list of module names, or one name) as a list; ConfigError otherwise."""
    if OmegaConf.is_list(value):
        value = OmegaConf.to_container(value)
    names = list(value) if isinstance(value, list | tuple) else [value]
    for name in names:
        if not isinstance(name, str) or not MODULE_NAME.fullmatch(name):
            raise ConfigError(KEY, value, ACCEPTS)
    return names


def requested(overrides: list[str]) -> list[str]:
    """The modules that the last ``imports=...`` of the command line ``overrides`` names."""
    lines = [o for o in overrides if o.lstrip("+").startswith(KEY + "=")]
    if not lines:
        return []
    value = lines[-1].partition("=")[2]
    try:
        (override,) = OverridesParser.create().parse_overrides(lines[-1:])
    except OverrideParseException:
        raise ConfigError(KEY, value, ACCEPTS) from None
    if override.is_sweep_override():
        raise ConfigError(KEY, value, ACCEPTS + " (one list for every run of a sweep)")
    return module_names(override.value())


def import_modules(names: list[str], cwd: str, config_dir: str) -> None:
    """Import ``names`` with ``cwd`` first on the path, then store the config nodes of the
    cells and tasks they define. A module that cannot be imported is a ConfigError on KEY."""
    if not names:
        return
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if error.name is not None and (name + ".").startswith(error.name + "."):
                raise ConfigError(
                    KEY, name, f"modules found in {cwd} or among the installed packages"
                ) from None
            raise _failed(name, error) from None
        except Exception as error:  # the user's module raised while it was imported
            raise _failed(name, error) from None
    store_nodes(Path(config_dir), [m.__name__ for m in modules])


def _failed(name: str, error: BaseException) -> ConfigError:
    return ConfigError(KEY, name, f"modules that import without error ({one_line(error)})")


def store_nodes(config_dir: Path, modules: list[str]) -> None:
    """A ``cell`` node per registered cell and a ``task`` node per task of ``modules`` that
    have no yaml in ``config_dir``."""
    store = ConfigStore.instance()
    for kind, cell in CELLS.items():
        if not (config_dir / "cell" / f"{kind}.yaml").exists():
            options = _defaults(inspect.signature(cell).parameters.values())
            node = {"defaults": ["base"], "kind": kind, **options}
            store.store(group="cell", name=kind, node=node)
    for task in user_tasks(modules):
        name = task_name(task)
        if not (config_dir / "task" / f"{name}.yaml").exists():
            fields = [f for f in dataclasses.fields(task) if f.init]
            target = f"{task.__module__}.{task.__qualname__}"
            store.store(group="task", name=name, node={"_target_": target, **_defaults(fields)})


def user_tasks(modules: list[str]) -> list[type[Task]]:
    """The Task dataclasses defined in ``modules`` (or modules below them)."""
    found, queue = [], list(Task.__subclasses__())
    while queue:
        task = queue.pop(0)
        queue += task.__subclasses__()
        inside = any((task.__module__ + ".").startswith(m + ".") for m in modules)
        if inside and dataclasses.is_dataclass(task) and not inspect.isabstract(task):
            found.append(task)
    return found


def task_name(task: type[Task]) -> str:
    """``task=<name>``: the class's own ``name``, else FirstTokenTask -> first_token."""
    if "name" in vars(task) and isinstance(vars(task)["name"], str):
        return vars(task)["name"]
    stem = task.__name__.removesuffix("Task") or task.__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", stem).lower()


def _defaults(parameters) -> dict[str, Any]:
    """Constructor parameters or dataclass fields as config values: a plain default as it is,
    no default as ``???`` (the command line must give one)."""
    values = {}
    for parameter in parameters:
        if parameter.name in BUILT_BY_BPTTLAB or getattr(parameter, "kind", 0) in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            continue
        default = parameter.default
        if getattr(parameter, "default_factory", dataclasses.MISSING) is not dataclasses.MISSING:
            continue  # a field made by a factory keeps the class's default
        if default is inspect.Parameter.empty or default is dataclasses.MISSING:
            values[parameter.name] = MISSING
        elif isinstance(default, PLAIN):
            values[parameter.name] = default
    return values
