"""Run directories: a unique name per run, and a lock held while a run lives in one.

Hydra names a run dir from the config (``conf/hydra/default.yaml``); ``${run_id:}`` adds a short
random suffix, so two runs started in the same second never share a directory. A run holds an
exclusive ``flock`` on ``<run_dir>/.lock`` for as long as it lives; the operating system drops
the lock when the process ends, however it ends, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from bpttlab.checks import ConfigError

LOCK_NAME = ".lock"


def register_resolvers() -> None:
    """``${run_id:}``: six random hex digits, the same wherever one config resolves it (cached,
    and Hydra copies the cache into every job of a sweep)."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)


def live_pid(run_dir: Path) -> int | None:
    """The pid of the live run holding ``run_dir``'s lock, or None when no run lives there."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


class RunLock(contextlib.AbstractContextManager):
    """Hold ``<run_dir>/.lock`` exclusively; a second run into the same dir is refused."""

    def __init__(self, run_dir: Path, key: str = "hydra.run.dir"):
        self.run_dir = Path(run_dir)
        self.key = key
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise busy(self.key, self.run_dir, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def busy(key: str, run_dir: Path, pid: object) -> ConfigError:
    return ConfigError(
        key, str(run_dir), f"a directory that no live run is using (pid {pid} is running there)"
    )


def check_writable(key: str, value: object) -> Path:
    """``value`` as a directory a run can be created in: not empty, not a file, and with a
    writable nearest existing ancestor."""
    if value is None or not str(value).strip():
        raise ConfigError(key, value, "a directory path (not empty)")
    path = Path(str(value))
    if path.exists() and not path.is_dir():
        raise ConfigError(key, str(value), "a directory path (this names an existing file)")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(key, str(value), f"a directory path ({ancestor} is a file)")
    try:  # what the filesystem allows, not what the mode bits say (root, read-only mounts)
        os.rmdir(tempfile.mkdtemp(prefix=".bpttlab-probe-", dir=ancestor))
    except OSError:
        raise ConfigError(
            key, str(value), f"a directory path under a writable one ({ancestor} is not)"
        ) from None
    return path
