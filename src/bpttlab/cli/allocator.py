"""Keep freed memory in the process for reuse (glibc's malloc, on Linux).

By default glibc gives every allocation above its mmap threshold (128 KiB, rising to at most
32 MiB) fresh pages of its own from the kernel and returns them when it is freed; a training
step that allocates a few such tensors (oneDNN's LSTM workspace, a long sequence's
activations) then pays a page fault for every 4 KiB page it touches, every step: measured on
a 2-core VM, 16,000 faults and a third of an LSTM step's time (README, Benchmarks). With ``keep_freed_memory`` (the default) allocations come from the heap
and freed memory stays there (up to 2 GiB at its top) for the next step to reuse: the process's
resident memory stays near its peak instead of shrinking between steps, and a heap of mixed
sizes grows where a later request does not fit a freed block (a full-BPTT run over 10 000
steps peaked 15-41 % higher). Numbers do not change.
The setting lasts for the life of the process (a joblib worker keeps it for later jobs);
elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import functools

import torch

M_TRIM_THRESHOLD = -1  # free memory at the heap's top beyond this goes back to the kernel
M_MMAP_MAX = -4  # how many allocations may have pages of their own (0: none)
KEPT_AT_TOP = 2**31 - 1  # bytes, the most mallopt takes


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has mallopt and mallinfo2), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(enabled: bool) -> bool:
    """Make glibc keep freed memory for reuse (``enabled``); return whether it is in effect.
    False leaves the allocator as it is."""
    libc = glibc()
    if not enabled or libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT_AT_TOP))


def freed_memory_kept() -> bool:
    """Whether freed memory is kept now, observed: a 64 MiB tensor gets pages of its own
    (``mallinfo2().hblkhd`` grows) only when it is not."""
    libc = glibc()
    if libc is None:
        return False
    before = libc.mallinfo2().hblkhd
    probe = torch.empty(1 << 24, dtype=torch.float32)
    own_pages = libc.mallinfo2().hblkhd - before
    del probe
    return own_pages < (1 << 26)
