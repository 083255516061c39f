"""C step loops shipped with bpttlab, compiled with the machine's C compiler when first needed.

A kernel's step loop runs one small GEMM and a dozen small element-wise operations per
timestep; as torch operations each costs a dispatch from Python and a pass over memory. In C a
step is one call of the BLAS ``sgemm_`` torch itself multiplies matrices with (found in torch's
libraries, so the products are torch's) and one pass for the element-wise work. A library is
built at the first call of a kernel that can use it (float32 on CPU), once per source, compiler
and CPU, into a private cache (``library_cache``), and loaded with ctypes. Before its first
call the library answers a handshake: its version and the size and the offset and size of each
field of its buffers struct, which must equal those of the ctypes Structure the kernel fills
(a drift between the two would corrupt memory). Where there is no C compiler (``$CC``, else
``cc``), no glibc vector maths or no BLAS in torch's libraries, the build fails or the handshake
differs, the kernels run those loops as torch operations, with one warning per process: the
same equations, slower, and different in the last bits of float32. ``use_compiled(False)``
(``compiled_kernels=false``) chooses the torch operations.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from pathlib import Path

import torch

from bpttlab.cells.kernels import library_cache
from bpttlab.cells.kernels.library_cache import SOURCES, STEP_SOURCES, c_compiler

__all__ = ["SOURCES", "STEP_SOURCES", "c_compiler", "compiled_in_effect", "steps", "use_compiled"]

LAYOUT_VERSION = 1  # STEP_LOOPS_VERSION of step_loops.h: the meaning of the buffers' fields

_wanted = True
_ran = False  # whether a compiled step loop ran in this process
_warned = False


def use_compiled(enabled: bool) -> None:
    """Choose the compiled step loops (``enabled``, where they can run) or torch operations
    for the kernels' calls from now on in this process."""
    global _wanted
    _wanted = enabled


def compiled_in_effect() -> bool:
    """Whether a compiled step loop has run in this process."""
    return _ran


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
        global _ran
        self.library.forward(self.address)
        _ran = True

    def backward(self) -> None:
        global _ran
        self.library.backward(self.address)
        _ran = True


def steps(name: str, struct: type[ctypes.Structure], tensors: tuple, *sizes: int):
    """``<name>.c``'s step loops over a ``struct`` of the addresses of ``tensors`` (None for a
    missing one), ``sizes`` and the BLAS ``sgemm_``; None where they do not apply (not float32
    on CPU, not wanted) or cannot run (not built, or a library whose layout is not ``struct``)."""
    like = next(t for t in tensors if t is not None)
    if not (_wanted and like.dtype == torch.float32 and like.device.type == "cpu"):
        return None
    compiled = checked(name, struct)
    if compiled is None:
        return None
    if not all(t is None or t.is_contiguous() for t in tensors):
        raise ValueError(f"{name}.c reads contiguous buffers only")
    addresses = [None if t is None else t.data_ptr() for t in tensors]
    return CompiledSteps(compiled, struct(*addresses, *sizes, blas_gemm()), tensors)


@functools.cache
def checked(name: str, struct: type[ctypes.Structure]) -> ctypes.CDLL | None:
    """The compiled ``<name>.c`` if its handshake answers ``struct``'s layout, else None."""
    compiled = library(name)
    if compiled is None:
        return None
    expected = layout(struct)
    answer = (ctypes.c_long * len(expected))()
    try:
        handshake = compiled.layout
    except AttributeError:
        return unavailable(name, "it answers no layout handshake")
    handshake.argtypes, handshake.restype = [ctypes.c_void_p, ctypes.c_long], ctypes.c_long
    length = handshake(answer, len(expected))
    if length != len(expected) or list(answer) != expected:
        got = list(answer)[: max(0, length)]
        why = f"its version and layout {got} differ from {struct.__qualname__}'s {expected}"
        return unavailable(name, why)
    return compiled


def layout(struct: type[ctypes.Structure]) -> list[int]:
    """What the library's handshake must answer for ``struct``: the version, the struct's size,
    its number of fields, then each field's offset and size in declaration order."""
    fields = [getattr(struct, name) for name, *_ in struct._fields_]
    offsets_and_sizes = [n for field in fields for n in (field.offset, field.size)]
    return [LAYOUT_VERSION, ctypes.sizeof(struct), len(fields), *offsets_and_sizes]


@functools.cache
def build(name: str) -> ctypes.CDLL | None:
    """``<name>.c`` loaded from the cache, built there first where needed (see
    ``library_cache``) and its step loops typed; None, with the process's one warning, where
    it cannot be built or torch has no BLAS for its GEMMs."""
    if blas_gemm() is None:
        return unavailable(name, "torch's libraries export no BLAS sgemm_ for its GEMMs")
    try:
        loaded = library_cache.load_or_build(name)
        functions = loaded.forward, loaded.backward
    except library_cache.CannotBuild as error:
        return unavailable(name, str(error))
    except AttributeError:
        return unavailable(name, "it has no forward and backward step loops")
    for function in functions:
        function.argtypes, function.restype = [ctypes.c_void_p], None
    return loaded


def unavailable(name: str, why: str) -> None:
    """Warn, the first time in this process, that ``name`` runs as torch operations."""
    global _warned
    if not _warned:
        _warned = True
        message = f"bpttlab cannot run {name}.c ({why}); the kernels run their step loops "
        warnings.warn(message + "as torch operations (slower)", stacklevel=4)
