"""The compiled step loops' build (``bpttlab.cells.kernels.compiled``), each in a fresh Python
process with a cache folder of its own: built only when a kernel needs them, once, and reused;
loaded without touching the process's floating-point settings; replaced by torch operations
with one warning per process where no compiler runs, the compiler writes no library, torch has
no BLAS to hand them or the library's layout handshake differs from the Python side's; their
GEMMs are torch's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpttlab.cells.kernels import compiled

pytestmark = pytest.mark.skipif(
    shutil.which(compiled.c_compiler()) is None, reason="no C compiler here: nothing is compiled"
)

TRAIN = """
import torch
from bpttlab.cells.kernels import compiled, gru, lstm, rnn
torch.manual_seed(0)
x, h, c = torch.randn(2, 5, 3, requires_grad=True), torch.zeros(2, 4), torch.zeros(2, 4)
kernels = (4, lambda *w: lstm(x, h, c, *w)), (3, lambda *w: gru(x, h, *w)), (1, lambda *w: rnn(x, h, *w))
for gates, run in kernels:
    weights = [torch.randn(gates * 4, 3), torch.randn(gates * 4, 4)]
    weights += [torch.randn(gates * 4), torch.randn(gates * 4)]
    for _ in range(2):
        run(*weights)[0].sum().backward()
print(compiled.compiled_in_effect(), float(x.grad.abs().sum()))
"""


def run_python(code: str, cache, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), **env}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def libraries(cache: Path) -> list[Path]:
    return sorted((cache / "bpttlab").glob("*.so")) if (cache / "bpttlab").exists() else []


def test_the_libraries_are_built_once_and_reused(tmp_path):
    first = run_python(TRAIN, tmp_path)
    assert first.returncode == 0, first.stderr
    built = libraries(tmp_path)
    assert [p.name.split("-")[0] for p in built] == sorted(compiled.STEP_SOURCES)
    made = [p.stat().st_mtime_ns for p in built]
    second = run_python(TRAIN, tmp_path)
    assert second.returncode == 0, second.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("True ")
    assert libraries(tmp_path) == built
    assert [p.stat().st_mtime_ns for p in built] == made
    assert not list((tmp_path / "bpttlab").glob("*.partial"))


def test_nothing_is_built_until_a_float32_cpu_kernel_runs(tmp_path):
    """Importing the kernels, choosing compiled loops, running a float64 kernel or a cell on
    torch's kernel builds nothing and reports nothing compiled; the first float32 GRU call
    builds the GRU's library only."""
    code = f"""
import pathlib, torch
from bpttlab.cells.kernels import compiled, gru
from bpttlab.model import RecurrentNet
compiled.use_compiled(True)
net = RecurrentNet(3, 2, token_input=False, kind="lstm", hidden_size=4, kernel="torch")
net(torch.randn(2, 5, 3))[0].sum().backward()
x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
h = torch.zeros(2, 4, dtype=torch.float64)
w = [torch.randn(12, 3), torch.randn(12, 4), torch.randn(12), torch.randn(12)]
gru(x, h, *[v.double() for v in w])[0].sum().backward()
print(compiled.compiled_in_effect(), list(pathlib.Path({str(tmp_path)!r}).rglob("*.so")))
gru(x.float(), h.float(), *w)
print(compiled.compiled_in_effect())
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "[]", "True"]
    assert [p.name.split("-")[0] for p in libraries(tmp_path)] == ["gru_step"]


def test_a_cached_library_that_does_not_load_is_built_again(tmp_path):
    """A damaged file where the library is cached (an interrupted copy, another machine's
    build) is replaced by a fresh build, without a warning."""
    code = (
        "import warnings\n"
        "from bpttlab.cells.kernels import compiled, library_cache\n"
        "warnings.simplefilter('error')\n"
        "for name in compiled.STEP_SOURCES:\n"
        "    path = library_cache.library_path(compiled.SOURCES / f'{name}.c')\n"
        "    path.write_bytes(b'not a library')\n"
        "print(all(compiled.build(name) for name in compiled.STEP_SOURCES))\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]
    assert all(p.read_bytes()[:4] == b"\x7fELF" for p in libraries(tmp_path))


NO_BLAS = (
    "from bpttlab.cells.kernels import compiled\n"
    "compiled.blas_gemm = lambda: None  # as with a torch whose libraries export no sgemm_\n"
)


def fake_compiler(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def compiled_training(tmp_path_factory) -> str:
    """TRAIN's output with the compiled loops (shared by the tests that compare with it)."""
    result = run_python(TRAIN, tmp_path_factory.mktemp("compiled"))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("cause", ["no compiler", "failing compiler", "garbage", "no BLAS"])
def test_where_nothing_can_run_compiled_the_loops_run_as_torch_operations_with_one_warning(
    tmp_path, cause, compiled_training
):
    """CC names no program, a compiler that fails (CC=/bin/false), one that writes garbage as
    its library, or torch's libraries export no BLAS: one warning for the process, no library
    or partial file left, the same gradients to float32 rounding as the compiled loops."""
    code, cc = TRAIN, None
    if cause == "no compiler":
        cc = str(tmp_path / "no-such-cc")
    elif cause == "failing compiler":
        cc = shutil.which("false")
    elif cause == "garbage":  # writes its arguments where the library should be
        cc = fake_compiler(tmp_path / "cc", 'while [ "$1" != -o ]; do shift; done; echo "$@" >"$2"')
    else:
        code = NO_BLAS + TRAIN
    fallback = run_python(code, tmp_path / "none", **({"CC": cc} if cc else {}))
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stderr.count("bpttlab cannot run") == 1, fallback.stderr
    folder = tmp_path / "none" / "bpttlab"
    assert not folder.exists() or [p.name for p in folder.iterdir()] in ([], ["build.lock"])
    (in_effect, grad), (compiled_in_effect, compiled_grad) = (
        out.split() for out in (fallback.stdout, compiled_training)
    )
    assert (in_effect, compiled_in_effect) == ("False", "True")
    assert float(grad) == pytest.approx(float(compiled_grad), rel=1e-5)


def test_the_compiled_loops_multiply_with_torchs_own_blas():
    """``blas_gemm`` is the sgemm_ torch's matrix products run on: a relu RNN's forward (its
    GEMMs, then an exact max(x, 0)) is bitwise the same compiled and as torch operations."""
    from bpttlab.cells.kernels import rnn

    g = torch.Generator().manual_seed(0)
    x, h0 = torch.randn(16, 50, 24, generator=g), torch.randn(16, 64, generator=g)
    weights = [torch.randn(*shape, generator=g) / 8 for shape in ((64, 24), (64, 64), (64,), (64,))]
    outputs = {}
    for wanted in (True, False):
        compiled.use_compiled(wanted)
        outputs[wanted] = rnn(x, h0, *weights, "relu")[0]
    compiled.use_compiled(True)
    assert compiled.compiled_in_effect()
    assert outputs[True].abs().max() > 1
    assert torch.equal(outputs[True], outputs[False])


def test_loading_the_library_keeps_subnormals(tmp_path):
    """A library built with -ffast-math would switch on flush-to-zero for the whole process
    when it is loaded; with subnormals kept, they must survive the load."""
    code = (
        "import torch\n"
        "from bpttlab.cells.kernels import compiled\n"
        "torch.set_flush_denormal(False)\n"
        "before = 1e-310 * 1.0 != 0\n"
        "assert compiled.build('lstm_step') is not None\n"
        "print(before, 1e-310 * 1.0 != 0)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


RNN_BOTH_WAYS = """
import ctypes, pathlib, torch
from bpttlab.cells.kernels import compiled, library_cache, rnn
{patch}
g = torch.Generator().manual_seed(0)
x, h0 = torch.randn(4, 9, 3, generator=g), torch.randn(4, 5, generator=g)
weights = [torch.randn(*s, generator=g) / 2 for s in ((5, 3), (5, 5), (5,), (5,))]
def run():
    inputs = x.clone().requires_grad_()
    y, h = rnn(inputs, h0, *weights)
    (y.sum() + h.sum()).backward()
    return y, h, inputs.grad
first = run()
ran = compiled.compiled_in_effect()
compiled.use_compiled(False)
print(ran, all(torch.equal(a, b) for a, b in zip(first, run())))
"""

DRIFTS = {  # rnn_step.c's struct: long batch, hidden, steps, relu; then sgemm_fn *gemm
    "C fields reordered": ("rnn_step.c", "long batch, hidden, steps", "long hidden, batch, steps"),
    "C struct grown": ("rnn_step.c", "    sgemm_fn *gemm;", "    long spare;\n    sgemm_fn *gemm;"),
    "version": ("step_loops.h", "#define STEP_LOOPS_VERSION 1", "#define STEP_LOOPS_VERSION 2"),
}
NARROWED = """
import importlib
kernel = importlib.import_module("bpttlab.cells.kernels.rnn")  # the module, not the function
class Narrowed(ctypes.Structure):  # relu a C int here, a long in rnn_step.c: the same offsets
    _fields_ = [*kernel.CompiledBuffers._fields_[:-2], ("relu", ctypes.c_int), ("gemm", ctypes.c_void_p)]
kernel.CompiledBuffers = Narrowed
"""


@pytest.mark.parametrize("drift", [*DRIFTS, "Python field narrowed"])
def test_a_library_whose_layout_differs_is_refused_and_torch_operations_run(tmp_path, drift):
    """The library's handshake (version, struct size, each field's offset and size) differs
    from the ctypes Structure the kernel fills: one warning, no compiled call, the results
    bitwise those of torch operations."""
    if drift in DRIFTS:
        name, old, new = DRIFTS[drift]
        sources = tmp_path / "sources"
        shutil.copytree(compiled.SOURCES, sources, ignore=shutil.ignore_patterns("*.py*"))
        text = (sources / name).read_text()
        assert old in text
        (sources / name).write_text(text.replace(old, new))
        patch = f"library_cache.SOURCES = pathlib.Path({str(sources)!r})"
    else:
        patch = NARROWED
    result = run_python(RNN_BOTH_WAYS.format(patch=patch), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
    assert result.stderr.count("bpttlab cannot run rnn_step.c") == 1, result.stderr
    assert "differ from CompiledBuffers" in result.stderr or "Narrowed" in result.stderr
    assert len(libraries(tmp_path)) == 1  # built, loaded, refused


@pytest.mark.slow
def test_a_run_that_never_calls_a_compiled_loop_builds_none_and_says_so(tmp_path):
    """A real run of the default LSTM (torch's kernel, no gradient-flow probes) builds no
    library and records compiled_kernels false in metrics.json (a gru run records true:
    tests/test_train.py)."""
    command = [str(Path(sys.executable).parent / "bpttlab-train"), "cell.hidden_size=8"]
    command += ["module.batch_size=8", "module.val_batches=1", "task.gap=10"]
    command += ["trainer.max_steps=2", "~callbacks.grad_flow", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["compiled_kernels"] is False
    assert libraries(tmp_path / "cache") == []
