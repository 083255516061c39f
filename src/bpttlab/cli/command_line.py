"""The command line's checks: ``check_command_line`` composes
every run that a command line asks for and builds it, so that a typo anywhere in a sweep fails
in one line before the first run starts.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bpttlab.checks import ConfigError
from bpttlab.cli import config_checks


class UsageError(ConfigError):
    """A command line that Hydra's own argument parser refuses."""

    def __init__(self, message: str):
        self.key = "command line"
        ValueError.__init__(self, f"{message} (bpttlab-train --help lists the flags)")


def hydra_arguments(argv: list[str]) -> list[str] | None:
    """``argv`` as Hydra will read it: its overrides, after ``-m`` when it is a multirun.
    None when the flags only print something (``--help``, ``--cfg``, ``--info``...)."""
    parser = get_args_parser()

    def refuse(message: str) -> None:
        if message.startswith("unrecognized arguments: ") and "=" in message:
            message += "; overrides cannot be split by a flag: put the flags first"
        raise UsageError(message)

    parser.error = refuse
    parsed = parser.parse_args(argv)
    modes = [parsed.run, parsed.multirun, parsed.cfg, parsed.info, parsed.shell_completion]
    if sum(bool(mode) for mode in modes) > 1:
        raise UsageError("at most one of --run, --multirun (-m), --cfg, --info, --shell-completion")
    for flag, value in (
        ("--config-path", parsed.config_path),
        ("--config-name", parsed.config_name),
        ("--config-dir", parsed.config_dir),
    ):
        if value is not None:
            raise UsageError(f"{flag} {value}: bpttlab-train composes its own config (conf/)")
    if parsed.help or parsed.hydra_help or parsed.experimental_rerun or any(modes[2:]):
        return None
    return (["-m"] if parsed.multirun else []) + list(parsed.overrides)


MULTIRUN_FLAGS = ("-m", "--multirun")
RESERVED = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
"""Keys that pick the code a config builds: never from the command line."""
MAX_RUNS = 10_000
"""The most runs a sweep may ask for; a larger grid is refused in one line."""
MAX_LINES = 50
"""Invalid combinations listed one per line; the rest are counted in one more line."""


class ConfigErrors(ConfigError):
    """Several runs of a sweep that cannot run: ``str()`` is the first, ``lines`` all of them."""

    def __init__(self, errors: list[ConfigError], lines: list[str]):
        self.key = errors[0].key
        self.errors = errors
        self.lines = lines
        ValueError.__init__(self, str(errors[0]))


class Sections(dict):
    """A composed config as its top-level sections, each a node of the config it came from:
    a sweep's run shares every section it does not change with the other runs."""

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def parse_overrides(lines: list[str]) -> list:
    """Hydra's parse of override ``lines``; a line it cannot parse is a ConfigError naming it."""
    parsed = []
    for line in lines:
        try:
            parsed += OverridesParser.create().parse_overrides([line])
        except OverrideParseException as error:
            key, _, value = line.partition("=")
            message = " ".join(str(error).split())
            raise ConfigError(key, value, f"a value Hydra can parse ({message})") from None
    return parsed


def hydra_quoted(value: str) -> str:
    """``value`` as an override value that Hydra reads back as exactly ``value``: as it is
    when it parses so, else in single quotes (a path with parentheses, spaces, quotes...)."""
    try:
        parsed = OverridesParser.create().parse_overrides([f"key={value}"])[0].value()
        if parsed == value:
            return value
    except OverrideParseException:
        pass
    # in quotes, Hydra reads backslashes as escapes only before a quote or at the end
    escaped = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, value).replace("'", "\\'")
    return f"'{escaped}'"


def check_command_line(
    args: list[str],
    config_dir: str,
    config_name: str,
    build: Callable[[DictConfig, dict], object],
) -> None:
    """Compose and ``build`` every run that ``args`` ask for: with ``-m``, every combination of
    the sweep values. Raise ConfigErrors listing each combination that fails, one line each.
    Hydra's own overrides (``hydra...``) are composed into Hydra's config with each
    combination of groups (which may set Hydra's, as ``hparams_search`` does).

    A grid of N runs is not N compositions: each combination of config-group choices
    (``cell=rnn,lstm``) is composed once, each section that a value override changes
    (``task.gap=5,10``) is made once per group combination and value, and ``build`` gets a
    cache, so that it builds each object once per distinct section.
    """
    hydra_parsed = parse_overrides([a for a in args if a.startswith("hydra")])
    hydra_lines = [o.input_line for o in hydra_parsed if not o.is_sweep_override()]
    lines = [a for a in args if not a.startswith("-") and not a.startswith("hydra")]
    for line in lines:
        key, _, value = line.partition("=")
        if key.lstrip("+~").split(".")[-1] in RESERVED:
            raise ConfigError(
                key.lstrip("+~"),
                value,
                "no override: a config group's yaml fixes it (pick another option of the group)",
            )
    parser = OverridesParser.create()
    parsed = parse_overrides(lines)
    values = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in parsed
    ]
    multirun = bool(set(MULTIRUN_FLAGS) & set(args))
    for o in parsed:
        if o.is_sweep_override() and not multirun:
            key, _, value = o.input_line.partition("=")
            raise ConfigError(
                key, value, "one value; to sweep over several, add -m (bpttlab-train -m ...)"
            )
    runs = math.prod(len(v) for v in values)
    if runs > MAX_RUNS:
        swept = " ".join(o.input_line for o in parsed if o.is_sweep_override())
        raise ConfigError(
            "-m", swept, f"a sweep of at most {MAX_RUNS} runs (this one has {runs}): split it"
        )
    groups = [i for i, o in enumerate(parsed) if _is_group(o, config_dir)]
    settings = [i for i in range(len(parsed)) if i not in groups]
    errors: list[tuple[ConfigError, str]] = []
    cache: dict = {}
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for group_choice in itertools.product(*(values[i] for i in groups)):
            try:
                base = _compose(config_name, list(group_choice))
                config_checks.check_new_sections(base, [parsed[i] for i in settings])
                # Hydra's own keys, in the Hydra config these groups make
                with_hydra = [*group_choice, *hydra_lines]
                hydra_cfg = _compose(config_name, with_hydra, return_hydra_config=True).hydra
                config_checks.check_hydra(hydra_cfg)
                config_checks.check_default_dir(hydra_cfg, args, multirun)
            except ConfigError as error:
                errors.append((error, " ".join(group_choice)))
                continue
            variants: dict[tuple[str, ...], object] = {
                (): Sections((k, _section(base, k)) for k in base)
            }
            for setting_choice in itertools.product(*(values[i] for i in settings)):
                run = " ".join((*group_choice, *setting_choice))
                try:
                    cfg = _run_sections(base, group_choice, setting_choice, variants, parser)
                    build(cfg, cache)
                except ConfigError as error:
                    errors.append((error, run))
                except AttributeError as error:  # a key the run needs, deleted with ~key
                    deleted = [o.key_or_group.lstrip("~") for o in parsed if o.is_delete()]
                    if error.args[:1] and error.args[0] in deleted:
                        message = "a value: the run needs this key (do not delete it)"
                        errors.append((ConfigError(error.args[0], None, message), run))
                    else:
                        raise
    if errors:
        sweep = runs > 1
        text = [str(e) + (f" (in the run {run})" if sweep and run else "") for e, run in errors]
        if len(text) > MAX_LINES:
            text = text[:MAX_LINES] + [f"... and {len(text) - MAX_LINES} more invalid runs"]
        raise ConfigErrors([e for e, _ in errors], text)


def _is_group(override, config_dir: str) -> bool:
    key = override.key_or_group.lstrip("+~")
    return "." not in key and (Path(config_dir) / key).is_dir()


def _run_sections(base, group_choice, setting_choice, variants, parser) -> Sections:
    """The config of one run: ``base`` (its groups composed) with the value overrides applied,
    each section made once per distinct set of overrides on it."""
    by_section: dict[str, list[str]] = {}
    for line in setting_choice:
        section = line.lstrip("+~").split("=", 1)[0].split(".", 1)[0]
        by_section.setdefault(section, []).append(line)
    sections = Sections(variants[()])
    for section, section_lines in by_section.items():
        key = (section, *section_lines)
        if key not in variants:
            variant = _apply(base, section_lines, parser)
            absent = isinstance(variant, ConfigError) or section not in variant
            variants[key] = variant if absent else (_section(variant, section),)
        variant = variants[key]
        if isinstance(variant, ConfigError):
            raise variant
        if isinstance(variant, tuple):
            sections[section] = variant[0]
        else:  # the override deleted the section
            sections.pop(section, None)
    return sections


def _section(cfg: DictConfig, key: str) -> object:
    """``cfg[key]``; a value that needs a run to resolve (``${hydra:...}``) as None."""
    try:
        return cfg[key]
    except OmegaConfBaseException:
        return None


def _apply(base: DictConfig, lines: list[str], parser) -> DictConfig | ConfigError:
    cfg = copy.deepcopy(base)
    try:
        ConfigLoaderImpl._apply_overrides_to_config(parser.parse_overrides(lines), cfg)
        OmegaConf.to_container(cfg, resolve=False)
        return cfg
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        return _override_error(error, lines)


def _compose(
    config_name: str, overrides: list[str], return_hydra_config: bool = False
) -> DictConfig:
    try:
        return compose(config_name, overrides, return_hydra_config=return_hydra_config)
    except MissingConfigException as error:
        group, _, option = (error.missing_cfg_file or "?/?").rpartition("/")
        options = [o for o in error.options or [] if o != "base"]  # shared part, not an option
        raise ConfigError(group, option, "one of " + ", ".join(options)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise _override_error(error, overrides) from None


def _override_error(error: Exception, overrides: list[str]) -> ConfigError:
    cause = str(error.__cause__ or "").split("\n")[0]  # Hydra's why, for a value it refused
    message = " ".join(str(error).split()) + (f": {cause}" if cause else "")
    keys = sorted(overrides, key=lambda o: -len(o.split("=")[0]))  # most specific first
    bad = next((o for o in keys if o.split("=")[0].lstrip("+~") in message), None)
    if bad is None and len(overrides) == 1:
        bad = overrides[0]
    if "Config group override must be" in message:  # a group set to null
        bad = next((o for o in overrides if o.endswith("=null")), bad)
        key = (bad or "?=").split("=")[0]
        return ConfigError(key, None, f"a config name; drop the group with ~{key}")
    key, _, value = (bad or "?=?").partition("=")
    if "not in struct" in message or "Could not override" in message or "not found" in message:
        return ConfigError(key, value, "nothing: there is no such key (--cfg job lists them)")
    return ConfigError(key, value, f"a valid value ({message})")
