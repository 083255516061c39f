"""Run directories: a unique name per run, a lock held while a run (or a sweep) lives in one,
and what marks a directory as holding a run.

Hydra names a run dir from the config (``conf/hydra/default.yaml``); ``${run_id:}`` adds a short
random suffix, so two runs started in the same second never share a directory. A run holds an
exclusive ``flock`` on ``<run_dir>/.lock`` for as long as it lives, a sweep on
``<sweep_dir>/.lock``; the operating system drops the lock when the process ends, however it
ends, so a killed run leaves no stale lock.

Hydra records a job (``.hydra/``: its config and overrides) in its run dir before the run's own
code starts; ``${hydra_record:}`` has it do so only in a directory that holds no record yet, so
that resuming a run, alone or in a sweep, never rewrites the record of the run it continues.
That record, or the run's config.yaml, marks a run that started: one without a metrics.json
and without a live process ended without recording how (killed, out of memory, a crash).
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
HYDRA_RECORD = ".hydra"
RUN_RECORDS = ("metrics.json", "config.yaml", f"{HYDRA_RECORD}/config.yaml")
"""Files that mark a directory as holding a run: its outcome, its config, Hydra's record."""


def register_resolvers() -> None:
    """``${run_id:}``: six random hex digits, the same wherever one config resolves it (cached,
    and Hydra copies the cache into every job of a sweep). ``${hydra_record:DIR}``: where
    Hydra writes its record of a job in DIR: ``.hydra``, or nowhere (None) when DIR holds one."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("hydra_record"):
        OmegaConf.register_new_resolver("hydra_record", hydra_record)


def hydra_record(run_dir: str) -> str | None:
    return None if (Path(run_dir) / HYDRA_RECORD).exists() else HYDRA_RECORD


def holds_run(path: Path) -> bool:
    """Whether a run started in ``path``: it holds a metrics.json, config.yaml or Hydra record."""
    return any((Path(path) / name).is_file() for name in RUN_RECORDS)


def run_dirs(root: Path) -> list[Path]:
    """Every directory below ``root`` (``root`` too) that holds a run, outside hidden ones."""
    found = {
        record.parent.parent if record.parent.name == HYDRA_RECORD else record.parent
        for name in ("metrics.json", "config.yaml")
        for record in Path(root).rglob(name)
    }
    return [
        d
        for d in found
        if holds_run(d) and not any(p.startswith(".") for p in d.relative_to(root).parts)
    ]


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


def hold_while_alive(path: Path, key: str) -> None:
    """Hold ``path``'s lock until this process ends (the operating system releases it then,
    however the process ends); a second process asking for it is refused (ConfigError on
    ``key``)."""
    RunLock(path, key).__enter__()  # the descriptor stays open, on purpose, until exit


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
