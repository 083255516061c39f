"""C step functions shipped with bpttlab, compiled with the machine's C compiler at first use.

A kernel's step loop does a dozen small element-wise operations per timestep; as torch
operations each costs a dispatch and a pass over memory, in C they are one pass. The library is
built once per source, compiler and CPU (``-march=native``) into ``$XDG_CACHE_HOME/bpttlab``
(``~/.cache/bpttlab`` by default) and loaded with ctypes. Where there is no C compiler (``$CC``,
else ``cc``) or no glibc vector maths, or the build fails, ``library`` returns None with one
warning and the kernels run those steps as torch operations: the same equations, slower, and
different in the last bits of float32. ``use_compiled(False)`` (``compiled_kernels=false``)
chooses the torch operations.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCES = Path(__file__).parent
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared"]
LIBRARIES = ["-lmvec", "-lm"]  # glibc's vector maths (expf over 8 or 16 floats at once)

_wanted = True


def use_compiled(enabled: bool) -> bool:
    """Choose the compiled steps (``enabled``) or torch operations for this process; return
    whether compiled steps are in effect."""
    global _wanted
    _wanted = enabled
    return compiled_in_effect()


def compiled_in_effect() -> bool:
    """Whether the kernels run their steps compiled now."""
    return library("lstm_step") is not None


def library(name: str) -> ctypes.CDLL | None:
    """The compiled ``<name>.c`` of this package, or None (not wanted, or it cannot be built)."""
    return build(name) if _wanted else None


@functools.cache
def build(name: str) -> ctypes.CDLL | None:
    path = SOURCES / f"{name}.c"
    if not path.is_file():
        return unavailable(name, f"{path} is missing")
    source = path.read_bytes()
    compiler = os.environ.get("CC", "cc")
    build_line = " ".join([compiler, *FLAGS, *LIBRARIES]).encode()
    key = hashlib.sha256(b"\0".join([source, build_line, cpu_identity()])).hexdigest()[:16]
    target = cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        error = compile_to(target, compiler, path)
        if error:
            return unavailable(name, error)
    return ctypes.CDLL(str(target))


def unavailable(name: str, why: str) -> None:
    """Warn (once per process: ``build`` is cached) that ``name`` runs uncompiled."""
    message = f"bpttlab could not compile {name}.c ({why}); its kernel runs its steps as torch "
    warnings.warn(message + "operations (slower)", stacklevel=3)


def compile_to(target: Path, compiler: str, source: Path) -> str | None:
    """Build ``source`` into ``target`` (atomically: concurrent workers may build it too);
    return why it failed, or None."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    command = [compiler, *FLAGS, str(source), "-o", str(partial), *LIBRARIES]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{compiler}: {error}"
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        last_line = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{compiler} failed: {last_line}"
    os.replace(partial, target)
    return None


def cache_dir() -> Path:
    """Where compiled libraries are kept: the user's cache, else a folder in the temp dir."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bpttlab"
    for folder in (base, Path(tempfile.gettempdir()) / f"bpttlab-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return Path(tempfile.mkdtemp(prefix="bpttlab-"))


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
