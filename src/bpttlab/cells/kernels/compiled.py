"""C step loops shipped with bpttlab, compiled with the machine's C compiler at first use.

A kernel's step loop runs one small GEMM and a dozen small element-wise operations per
timestep; as torch operations each costs a dispatch from Python and a pass over memory. In C a
step is one call of the BLAS ``sgemm_`` torch itself multiplies matrices with (found in torch's
libraries, so the products are torch's) and one pass for the element-wise work. The library is
built once per source, compiler and CPU (``-march=native``) into ``$XDG_CACHE_HOME/bpttlab``
(``~/.cache/bpttlab`` by default) and loaded with ctypes. Where there is no C compiler (``$CC``,
else ``cc``), no glibc vector maths or no BLAS in torch's libraries, or the build fails,
``library`` returns None with one warning and the kernels run those loops as torch operations:
the same equations, slower, and different in the last bits of float32. ``use_compiled(False)``
(``compiled_kernels=false``) chooses the torch operations.
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

import torch

SOURCES = Path(__file__).parent
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared"]
LINK = ["-lmvec", "-lm"]  # glibc's vector maths (expf over 8 or 16 floats at once)

STEP_SOURCES = ("rnn_step", "gru_step", "lstm_step")  # the kernels' step loops, one C file each

_wanted = True


def use_compiled(enabled: bool) -> bool:
    """Choose the compiled step loops (``enabled``) or torch operations for this process; return
    whether compiled step loops are in effect."""
    global _wanted
    _wanted = enabled
    return compiled_in_effect()


def compiled_in_effect() -> bool:
    """Whether the kernels run their step loops compiled now."""
    return all([library(name) is not None for name in STEP_SOURCES])  # builds every one


def c_compiler() -> str:
    """The C compiler to build with: ``$CC``, else ``cc``."""
    return os.environ.get("CC", "cc")


def library(name: str) -> ctypes.CDLL | None:
    """The compiled ``<name>.c`` of this package, or None (not wanted, or it cannot be built or
    has no BLAS to run its GEMMs)."""
    return build(name) if _wanted else None


@functools.cache
def blas_gemm() -> int | None:
    """The address of ``sgemm_`` in torch's libraries (the BLAS its CPU matrix products run on,
    MKL in the x86 wheels), or None."""
    folder = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        try:
            return ctypes.cast(ctypes.CDLL(str(folder / name)).sgemm_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


class CompiledSteps:
    """A kernel's step loops from ``<name>.c``, ``forward(buffers)`` and ``backward(buffers)``,
    over one run's ``buffers`` (a ctypes Structure holding addresses into ``tensors``, which
    this keeps alive)."""

    def __init__(self, library: ctypes.CDLL, buffers: ctypes.Structure, tensors: tuple):
        self.buffers, self.tensors = buffers, tensors
        self.address = ctypes.addressof(buffers)
        self.library = library

    def forward(self) -> None:
        self.library.forward(self.address)

    def backward(self) -> None:
        self.library.backward(self.address)


def steps(name: str, struct: type[ctypes.Structure], tensors: tuple, *sizes: int):
    """``<name>.c``'s step loops over a ``struct`` of the addresses of ``tensors`` (None for a
    missing one), ``sizes`` and the BLAS ``sgemm_``; None where they do not apply (not float32
    on CPU) or are not compiled."""
    like = next(t for t in tensors if t is not None)
    compiled = library(name) if like.dtype == torch.float32 and like.device.type == "cpu" else None
    if compiled is None:
        return None
    if not all(t is None or t.is_contiguous() for t in tensors):
        raise ValueError(f"{name}.c reads contiguous buffers only")
    addresses = [None if t is None else t.data_ptr() for t in tensors]
    return CompiledSteps(compiled, struct(*addresses, *sizes, blas_gemm()), tensors)


@functools.cache
def build(name: str) -> ctypes.CDLL | None:
    """``<name>.c`` loaded from the cache, built first where it is not there or does not load
    (a damaged file, or one built against another C library); None, with one warning, where it
    cannot be built or torch has no BLAS for its GEMMs."""
    source = SOURCES / f"{name}.c"
    if blas_gemm() is None:
        return unavailable(name, "torch's libraries export no BLAS sgemm_ for its GEMMs")
    if not source.is_file():
        return unavailable(name, f"{source} is missing")
    target = library_path(source)
    loaded = load(target) if target.exists() else None
    if loaded is None:
        error = compile_to(target, c_compiler(), source)
        if error:
            return unavailable(name, error)
        loaded = load(target)
    return loaded if loaded is not None else unavailable(name, f"{target} does not load")


def library_path(source: Path) -> Path:
    """Where ``source``'s library is cached: named by the source and the headers it includes,
    the build line and the CPU."""
    build_line = " ".join([c_compiler(), *FLAGS, *LINK]).encode()
    headers = [header.read_bytes() for header in sorted(SOURCES.glob("*.h"))]
    parts = [source.read_bytes(), *headers, build_line, cpu_identity()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return cache_dir() / f"{source.stem}-{key}.so"


def load(target: Path) -> ctypes.CDLL | None:
    """The library at ``target`` with its step loops typed, or None if it does not load."""
    try:
        library = ctypes.CDLL(str(target))
        functions = library.forward, library.backward
    except (OSError, AttributeError):
        return None
    for function in functions:
        function.argtypes, function.restype = [ctypes.c_void_p], None
    return library


def unavailable(name: str, why: str) -> None:
    """Warn (once per process: ``build`` is cached) that ``name`` runs uncompiled."""
    message = f"bpttlab cannot run {name}.c ({why}); its kernel runs its step loops as torch "
    warnings.warn(message + "operations (slower)", stacklevel=3)


def compile_to(target: Path, compiler: str, source: Path) -> str | None:
    """Build ``source`` into ``target`` (atomically: concurrent workers, on this machine or on
    others sharing the cache folder, may build it too); return why it failed, or None."""
    partial = target.with_name(f"{target.name}.{platform.node()}.{os.getpid()}.partial")
    command = [compiler, *FLAGS, str(source), "-o", str(partial), *LINK]
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
    """Where compiled libraries are kept: the user's cache, else a folder in the temp dir; only
    a folder this user owns (a library loaded from it runs as this user)."""
    user = os.getuid() if hasattr(os, "getuid") else None  # None: no user ids (Windows)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bpttlab"
    for folder in (base, Path(tempfile.gettempdir()) / f"bpttlab-{user}"):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            owned = user is None or folder.stat().st_uid == user
        except OSError:
            continue
        if owned and os.access(folder, os.W_OK):
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
