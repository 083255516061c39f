"""Bad input gets a one-line error that names the argument and what it accepts.

Constructors check their own arguments with these helpers. A ``ConfigError`` is a ``ValueError``
whose key is the argument's name; the command line prefixes it with the config group
(``hidden_size`` becomes ``cell.hidden_size``).
"""

from __future__ import annotations

from collections.abc import Iterable


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
