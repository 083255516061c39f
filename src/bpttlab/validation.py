"""Bad input gets a one-line error that names the config key and what it accepts.

Constructors check their own arguments with the helpers below; ``check_command_line`` composes
every run that a command line asks for and builds it, so that a typo anywhere in a sweep fails
in one line before the first run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config value that bpttlab cannot run with. ``str(error)`` is one line."""

    def __init__(self, key: str, value: object, accepts: str):
        self.key = key
        super().__init__(f"{key}={value!r} is invalid: {key} accepts {accepts}")

    def under(self, prefix: str) -> ConfigError:
        """The same error for a key that lives under ``prefix`` in the config tree."""
        if self.key == prefix or self.key.startswith(prefix + "."):
            return self
        error = ConfigError.__new__(ConfigError)
        error.key = f"{prefix}.{self.key}"
        message = str(self).replace(self.key, error.key)
        ValueError.__init__(error, message)
        return error

    @classmethod
    def failed(cls, key: str, error: BaseException) -> ConfigError:
        """The config under ``key`` could not be built: say why, in one line."""
        self = cls.__new__(cls)
        self.key = key
        reason = " ".join(str(error).split()) or type(error).__name__
        ValueError.__init__(self, f"{key}: cannot be built from this config: {reason}")
        return self


def boolean(key: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def choice(key: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(key, value, "one of " + ", ".join(choices))
    return value


def integer(key: str, value: object, minimum: int, optional: bool = False) -> int | None:
    """Return ``value`` as an int >= ``minimum`` (or None when ``optional``), else raise."""
    if value is None and optional:
        return None
    accepts = f"an integer >= {minimum}" + (" or null" if optional else "")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, accepts)
    return value


def positive(key: str, value: object) -> float:
    """Return ``value`` as a finite float > 0, else raise ConfigError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < float("inf")
    ):
        raise ConfigError(key, value, "a finite number > 0")
    return float(value)


INFO_FLAGS = {"-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "--shell-completion"}


def check_command_line(
    args: list[str], config_dir: str, config_name: str, build: Callable[[DictConfig], object]
) -> None:
    """Compose and ``build`` every run that ``args`` ask for; raise ConfigError on the first
    that fails. Sweeps (``a=1,2 b=x,y``) are checked value by value, the other keys held at
    their first value. Hydra's own overrides (``hydra...``) are left to Hydra.
    """
    if INFO_FLAGS & set(args):
        return
    lines = [a for a in args if not a.startswith("-") and not a.startswith("hydra")]
    parsed = OverridesParser.create().parse_overrides(lines)
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [None] for o in parsed]

    def line(i: int, value: str | None) -> str:
        return parsed[i].input_line if value is None else f"{parsed[i].get_key_element()}={value}"

    base = [line(i, v[0]) for i, v in enumerate(values)]
    runs = [base] + [
        base[:i] + [line(i, v)] + base[i + 1 :] for i, vs in enumerate(values) for v in vs[1:]
    ]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for overrides in runs:
            build(_compose(config_name, overrides))


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as error:
        group, _, option = (error.missing_cfg_file or "?/?").rpartition("/")
        options = [o for o in error.options or [] if o != "base"]  # shared part, not an option
        raise ConfigError(group, option, "one of " + ", ".join(options)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        message = " ".join(str(error).split())
        keys = sorted(overrides, key=lambda o: -len(o.split("=")[0]))  # most specific first
        bad = next((o for o in keys if o.split("=")[0].lstrip("+~") in message), None)
        if "Config group override must be" in message:  # a group set to null
            bad = next((o for o in overrides if o.endswith("=null")), bad)
            key = (bad or "?=").split("=")[0]
            raise ConfigError(key, None, f"a config name; drop the group with ~{key}") from None
        key, _, value = (bad or "?=?").partition("=")
        if "not in struct" in message or "Could not override" in message:
            raise ConfigError(
                key, value, "nothing: there is no such key (--cfg job lists them)"
            ) from None
        raise ConfigError(key, value, f"a valid value ({message})") from None
