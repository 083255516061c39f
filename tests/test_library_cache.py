"""The compiled step loops' cache (``bpttlab.cells.kernels.library_cache``) with real files and
real processes: concurrent processes build a library once; building removes this user's
outdated libraries only; a library is loaded only from this user's private folder and only if
this user's and not writable by others (a planted library whose constructor writes a marker
file must never be loaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpttlab.cells.kernels import compiled, library_cache

pytestmark = pytest.mark.skipif(
    shutil.which(compiled.c_compiler()) is None, reason="no C compiler here: nothing is compiled"
)
as_root = pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0, reason="chown to another user needs root"
)
NOBODY = 65534


def start_python(code: str, tmp_path: Path, *args: str, **env) -> subprocess.Popen:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **env}
    env["TMPDIR"] = str(tmp_path / "tmp")  # where a process builds when the cache is not private
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run_python(code: str, tmp_path: Path, **env) -> tuple[str, str]:
    process = start_python(code, tmp_path, **env)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out, err


def name_of(step_loops: str) -> str:
    return library_cache.library_name(compiled.SOURCES / f"{step_loops}.c")


BUILD_AT_ONCE = """
import os, pathlib, sys, time
from bpttlab.cells.kernels import compiled
ready, count = pathlib.Path(sys.argv[1]), int(sys.argv[2])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < count:  # every process imported torch: build together
    time.sleep(0.01)
print(compiled.build("rnn_step") is not None)
"""


@pytest.mark.slow
def test_concurrent_processes_build_a_library_once(tmp_path):
    """Four processes that need the library at the same moment: the compiler runs once (a
    compiler that takes a second, logging each run), all four load it, no partial file is
    left."""
    log, ready, count = tmp_path / "compiler.log", tmp_path / "ready", 4
    compiler = tmp_path / "cc"
    compiler.write_text(f'#!/bin/sh\necho run >>"{log}"\nsleep 1\nexec cc "$@"\n')
    compiler.chmod(0o755)
    ready.mkdir()
    processes = [
        start_python(BUILD_AT_ONCE, tmp_path, str(ready), str(count), CC=str(compiler))
        for _ in range(count)
    ]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0 and out.split() == ["True"], err
    assert log.read_text().split() == ["run"]
    folder = tmp_path / "cache" / "bpttlab"
    lock, library = sorted(p.name for p in folder.iterdir())
    assert lock == "build.lock" and library.startswith("rnn_step-") and library.endswith(".so")


def test_a_build_removes_this_users_outdated_libraries_only(tmp_path):
    """Building the RNN's library removes this user's libraries of older sources and the
    leftover of an interrupted build, and keeps the other kernels' current libraries, files
    that are not step loops and (as root) another user's files."""
    folder = tmp_path / "cache" / "bpttlab"
    folder.mkdir(parents=True, mode=0o700)
    outdated = ["rnn_step-0000000000000000.so", "gru_step-1111111111111111.so.host.7.partial"]
    kept = [name_of("gru_step"), "notes.txt"]
    for name in outdated + kept:
        (folder / name).write_bytes(b"old")
    if os.getuid() == 0:
        others = folder / "lstm_step-2222222222222222.so"
        others.write_bytes(b"old")
        os.chown(others, NOBODY, NOBODY)
        kept.append(others.name)
    run_python("from bpttlab.cells.kernels import compiled; compiled.build('rnn_step')", tmp_path)
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([*kept, name_of("rnn_step"), "build.lock"])


PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *marker = fopen(MARKER, "w");
    if (marker) fclose(marker);
}
void forward(void *buffers) {}
void backward(void *buffers) {}
long layout(long *out, long capacity) { return 0; }
"""


def plant(folder: Path, marker: Path, mode: int, owner: int | None) -> list[Path]:
    """A library at each step loops' expected place whose loading writes ``marker``."""
    source = folder.parent / "planted.c"
    source.write_text(PLANTED)
    planted = []
    for name in compiled.STEP_SOURCES:
        target = folder / name_of(name)
        command = ["cc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o", str(target)]
        subprocess.run(command, check=True)
        target.chmod(mode)
        if owner is not None:
            os.chown(target, owner, owner)
        planted.append(target)
    return planted


TRAIN_AND_SAY_WHERE = """
import torch
from bpttlab.cells.kernels import compiled, gru, lstm, rnn
x, h = torch.randn(2, 5, 3), torch.zeros(2, 4)
weights = lambda gates: [torch.randn(gates * 4, 3), torch.randn(gates * 4, 4), torch.randn(gates * 4), torch.randn(gates * 4)]
lstm(x, h, h, *weights(4)), gru(x, h, *weights(3)), rnn(x, h, *weights(1))
print(compiled.compiled_in_effect(), *(compiled.build(n)._name for n in compiled.STEP_SOURCES))
"""

UNTRUSTED = {  # folder mode, folder owner, library mode, library owner
    "folder open to all": (0o777, None, 0o755, None),
    "group-writable library": (0o700, None, 0o775, None),
    "another user's folder": (0o700, NOBODY, 0o755, None),
    "another user's library": (0o700, None, 0o755, NOBODY),
}
NEEDS_ROOT = ("another user's folder", "another user's library")


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=as_root) if c in NEEDS_ROOT else c for c in UNTRUSTED]
)
def test_a_library_this_user_did_not_build_is_never_loaded(tmp_path, case):
    """Libraries planted where the step loops are expected, in a folder that is not private
    or as files others could have written: none is loaded (its marker never appears); the
    loops are built and run from a private folder: elsewhere, with one warning, if the folder
    is not private, else in the planted files' place."""
    folder_mode, folder_owner, library_mode, library_owner = UNTRUSTED[case]
    folder, marker = tmp_path / "cache" / "bpttlab", tmp_path / "loaded-the-planted-library"
    folder.mkdir(parents=True)
    planted = plant(folder, marker, library_mode, library_owner)
    folder.chmod(folder_mode)
    if folder_owner is not None:
        os.chown(folder, folder_owner, folder_owner)
    out, err = run_python(TRAIN_AND_SAY_WHERE, tmp_path)
    assert not marker.exists()
    ran, *loaded = out.split()
    assert ran == "True" and "bpttlab cannot run" not in err, err
    if folder_mode != 0o700 or folder_owner is not None:
        assert err.count(f"does not build its step loops in {folder}") == 1, err
        assert all(Path(p).parent == tmp_path / "tmp" / f"bpttlab-{os.getuid()}" for p in loaded)
    else:
        assert loaded == [str(p) for p in planted]  # built again in their place
        assert all(library_cache.trusted(p) for p in planted)


def test_a_library_that_passes_the_checks_is_loaded_so_the_marker_shows_loading(tmp_path):
    """The control: a planted library that is this user's, not writable by others, in a
    private folder is loaded (the marker appears), then refused by the layout handshake."""
    folder, marker = tmp_path / "cache" / "bpttlab", tmp_path / "loaded-the-planted-library"
    folder.mkdir(parents=True, mode=0o700)
    plant(folder, marker, 0o755, None)
    out, err = run_python(TRAIN_AND_SAY_WHERE, tmp_path)
    assert marker.exists()
    assert out.split()[0] == "False" and err.count("answers no layout") + err.count("differ") == 1


def test_a_library_built_under_a_permissive_umask_is_trusted_and_reused(tmp_path):
    """With umask 002 (group-writable new files) the build still writes a library only this
    user can write, so the next process loads it instead of building it again."""
    code = (
        "import os\n"
        "os.umask(0o002)\n"
        "from bpttlab.cells.kernels import compiled\n"
        "print(compiled.build('rnn_step')._name)\n"
    )
    first, _ = run_python(code, tmp_path)
    library = Path(first.strip())
    assert library.stat().st_mode & 0o022 == 0
    made = library.stat().st_mtime_ns
    second, _ = run_python(code, tmp_path)
    assert second == first and library.stat().st_mtime_ns == made
