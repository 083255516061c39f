"""Where the compiled step loops are kept: a private cache folder that holds only libraries this
user built, each built once (under a file lock) and the outdated ones removed.

A library loaded from the cache runs as this user, so the cache trusts nothing it did not build:
its folder must be this user's and private (mode 0700), and a library file must be this user's
regular file that neither group nor others can write. The folder is ``$XDG_CACHE_HOME/bpttlab``
(``~/.cache/bpttlab`` by default), else ``<temp dir>/bpttlab-<uid>``, else a fresh private temp
folder for this process (one warning says why the first was not used). An untrusted or damaged
file in the folder is built again in its place. A library is named by its source, the headers,
the build line and the CPU (``-march=native``), so a cache shared between machines hands no
machine another's build; building one removes the libraries of older sources (and leftovers of
interrupted builds) that this user owns.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no file locks; the atomic rename still keeps files whole
    fcntl = None

SOURCES = Path(__file__).parent
STEP_SOURCES = ("rnn_step", "gru_step", "lstm_step")  # the kernels' step loops, one C file each
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared"]
LINK = ["-lmvec", "-lm"]  # glibc's vector maths (expf over 8 or 16 floats at once)
COMPILE_SECONDS = 120  # a build taking longer has failed
LOCK_WAIT_SECONDS = 2 * COMPILE_SECONDS  # then the holder is stuck: build without the lock


class CannotBuild(Exception):
    """The library cannot be built or loaded here; the message says why."""


def c_compiler() -> str:
    """The C compiler to build with: ``$CC``, else ``cc``."""
    return os.environ.get("CC", "cc")


def load_or_build(name: str) -> ctypes.CDLL:
    """``<name>.c`` of this package loaded from the cache, built there first where no trusted
    library that loads is there yet."""
    source = SOURCES / f"{name}.c"
    if not source.is_file():
        raise CannotBuild(f"{source} is missing")
    target = library_path(source)
    library = load_trusted(target)
    if library is not None:
        return library
    with build_lock(target.parent) as locked:
        library = load_trusted(target)  # built by another process while this one waited
        if library is None:
            compile_to(target, source)
            library = load_trusted(target)
            if library is None:
                target.unlink(missing_ok=True)
                raise CannotBuild(f"{c_compiler()} built a library that does not load")
        if locked:  # else another build may be under way: its partial file is not outdated
            remove_outdated(target.parent)
    return library


def load_trusted(target: Path) -> ctypes.CDLL | None:
    """The library at ``target`` if this user built it (see ``trusted``) and it loads."""
    if not trusted(target):
        return None
    try:
        return ctypes.CDLL(str(target))
    except OSError:
        return None


def trusted(path: Path) -> bool:
    """Whether ``path`` is this user's regular file that neither group nor others can write."""
    try:
        status = path.lstat()
    except OSError:
        return False
    writable_by_others = status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return stat.S_ISREG(status.st_mode) and owned(status) and not writable_by_others


def owned(status: os.stat_result) -> bool:
    """Whether this user owns the file of ``status`` (where there are user ids)."""
    return not hasattr(os, "getuid") or status.st_uid == os.getuid()


def library_path(source: Path) -> Path:
    """Where ``source``'s library is cached."""
    return cache_folder() / library_name(source)


def library_name(source: Path) -> str:
    """The file name of ``source``'s library: its stem and a hash of the source, the headers it
    includes, the build line and the CPU."""
    build_line = " ".join([c_compiler(), *FLAGS, *LINK]).encode()
    headers = [header.read_bytes() for header in sorted(source.parent.glob("*.h"))]
    parts = [source.read_bytes(), *headers, build_line, cpu_identity()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return f"{source.stem}-{key}.so"


def compile_to(target: Path, source: Path) -> None:
    """Build ``source`` into ``target`` atomically (a partial file, renamed when complete),
    writable by this user only."""
    partial = target.with_name(f"{target.name}.{platform.node()}.{os.getpid()}.partial")
    compiler = c_compiler()
    command = [compiler, *FLAGS, str(source), "-o", str(partial), *LINK]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_SECONDS)
        if result.returncode != 0:
            last_line = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise CannotBuild(f"{compiler} failed: {last_line}")
        os.chmod(partial, 0o700)  # whatever the umask: a group-writable file is not trusted
        os.replace(partial, target)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CannotBuild(f"{compiler}: {error}") from None
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[bool]:
    """Hold the folder's build lock (one build at a time, also between machines sharing the
    folder) and give True; after LOCK_WAIT_SECONDS without it, go on unlocked (False)."""
    if fcntl is None:
        yield False
        return
    descriptor = os.open(folder / "build.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def remove_outdated(folder: Path) -> None:
    """Remove this user's libraries of older sources and leftovers of interrupted builds
    (called holding the build lock: no build is under way)."""
    current = {library_name(SOURCES / f"{name}.c") for name in STEP_SOURCES}
    for path in folder.iterdir():
        step_loops = path.name.startswith(tuple(f"{name}-" for name in STEP_SOURCES))
        outdated = path.suffix in (".so", ".partial") and path.name not in current
        if step_loops and outdated and path.is_file() and owned(path.lstat()):
            path.unlink(missing_ok=True)


@functools.cache
def cache_folder() -> Path:
    """The first private folder of: the user's cache, one in the temp dir, a fresh one."""
    configured = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bpttlab"
    user = os.getuid() if hasattr(os, "getuid") else "user"
    for folder in (configured, Path(tempfile.gettempdir()) / f"bpttlab-{user}"):
        why = not_private(folder)
        if why is None:
            return folder
        if folder == configured:
            warnings.warn(
                f"bpttlab does not build its step loops in {folder} ({why}; it uses only a "
                "folder of yours with mode 700): it builds them in a private folder of its own",
                stacklevel=2,
            )
    fresh = Path(tempfile.mkdtemp(prefix="bpttlab-"))  # 0700, this process's
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)
    return fresh


def not_private(folder: Path) -> str | None:
    """Why ``folder`` (created if missing) is not a private folder of this user; None if it is."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = folder.stat()
    except OSError as error:
        return str(error)
    if not stat.S_ISDIR(status.st_mode):
        return "not a folder"
    if not owned(status):
        return f"owned by user id {status.st_uid}"
    if status.st_mode & 0o077:
        return f"mode {stat.S_IMODE(status.st_mode):o}, not 700"
    return None


def cpu_identity() -> bytes:
    """The CPU the library is compiled for: its model and instruction-set flags (a cache shared
    between machines must not hand one machine's -march=native build to another)."""
    identity = [platform.machine(), platform.processor()]
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        identity += [line for line in cpuinfo.splitlines() if line.startswith(("model", "flags"))]
    except OSError:
        pass
    return "\n".join(identity).encode()
