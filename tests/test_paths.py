"""Which path each layer runs: the table of every combination of device, dtype, cell, kernel
setting, clip mode and probing, against what the layer was seen to run in a training step
(``bptt.run_windows``, as SequenceModule runs it) and what ``RecurrentNet.paths`` records."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import fit
from omegaconf import OmegaConf
from torch.overrides import TorchFunctionMode

from bpttlab import BPTT, AddingTask, Clipping, CopyTask, GradientFlow, RecurrentNet, SequenceModule
from bpttlab.bptt import run_windows
from bpttlab.cells import CELLS
from bpttlab.cells.kernels import compiled
from bpttlab.cli.train import CONFIG_DIR
from bpttlab.tasks import BatchSource

TASK = AddingTask(gap=8)
T, B, LAYERS = TASK.seq_len, 2, 2
KERNEL_CELLS = ("rnn", "gru", "lstm")
FUSED_CALLS = {"rnn_tanh", "rnn_relu", "gru", "lstm"}  # torch's fused RNN functions
SETTINGS = {  # a kernel setting: the cell's options, and whether the C step loops are wanted
    "bpttlab": ({"kernel": "bpttlab", "onednn": False}, True),
    "bpttlab, steps as torch ops": ({"kernel": "bpttlab", "onednn": False}, False),
    "torch native": ({"kernel": "torch", "onednn": False}, True),
    "torch oneDNN": ({"kernel": "torch", "onednn": True}, True),
}
CLIP_MODES = ("none", "norm", "value", "timestep")


def expected_path(device, dtype, cell, setting, clip, probed) -> str:
    """The path a layer must run: the rules users are told, one case at a time."""
    if clip == "timestep":  # its hooks change the gradients: only a step loop has them
        return "step-loop"
    if cell not in KERNEL_CELLS:
        return "step-loop" if probed else "fast"
    if device == "cuda":
        return "step-loop" if probed else "torch"
    single = dtype == torch.float32
    kernel = "kernel" if single and setting == "bpttlab" else "kernel-torch-steps"
    if setting.startswith("bpttlab"):
        return kernel
    if setting == "torch native" or not single or cell != "lstm":  # oneDNN: float32 LSTMs
        return "step-loop" if probed else "torch"
    return "kernel" if probed else "onednn"


class Calls(TorchFunctionMode):
    """Counts the torch functions called and keeps the autograd nodes of the tensors given to
    them (``nodes``: the kinds of every node of their graphs)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.seen: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[getattr(func, "__name__", str(func))] += 1
        for arg in args:
            for tensor in arg if isinstance(arg, list | tuple) else (arg,):
                if isinstance(tensor, torch.Tensor) and tensor.grad_fn is not None:
                    self.seen.add(tensor.grad_fn)
        return func(*args, **(kwargs or {}))

    @property
    def nodes(self) -> set[str]:
        done, stack = set(), list(self.seen)
        while stack:
            node = stack.pop()
            if node is not None and node not in done:
                done.add(node)
                stack += [n for n, _ in node.next_functions]
        return {type(node).__name__ for node in done}


def seen_path(cell: str, mode: Calls, traces: list) -> str:
    """The path the training step was seen to run, from independent evidence: torch's fused
    functions called, the kernels' autograd nodes, matrix products per step, kept states."""
    fused, nodes = FUSED_CALLS.intersection(mode.calls), mode.nodes
    kernel = any(node.endswith("RecurrenceBackward") for node in nodes)
    products = mode.calls["addmm"] + mode.calls["addmm_"]
    kept = [
        len(steps) for trace in traces for per_layer in trace.steps.values() for steps in per_layer
    ]
    sinks = [sink.shape[0] for trace in traces for sink in trace.sinks.values()]
    if kept and all(n == T for n in kept) and not (fused or kernel or sinks):
        return "step-loop"
    if kernel and not fused:
        assert all(n == T for n in sinks) and not any(kept)
        return "kernel" if products < T else "kernel-torch-steps"  # the C loops call no torch
    if fused:
        return "onednn" if "MkldnnRnnLayerBackward0" in nodes else "torch"
    return "fast" if cell not in KERNEL_CELLS and not traces else "unknown"


def combinations():
    for cell in sorted(CELLS):
        for setting in SETTINGS if cell in KERNEL_CELLS else (None,):
            for dtype in (torch.float32, torch.float64):
                for clip in CLIP_MODES:
                    for probed in (False, True):
                        words = [cell, setting or "own", str(dtype)[6:], clip]
                        words.append("probed" if probed else "unprobed")
                        name = "-".join(words).replace(", ", "-").replace(" ", "-")
                        yield pytest.param(cell, setting, dtype, clip, probed, id=name)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    return request.param


@pytest.mark.parametrize(("cell", "setting", "dtype", "clip", "probed"), combinations())
def test_each_layer_runs_the_chosen_path_and_records_it(device, cell, setting, dtype, clip, probed):
    options, compiled_wanted = SETTINGS[setting] if setting else ({}, True)
    if device == "cuda" and dtype == torch.float64 and cell == "lru":
        pytest.skip("complex float64 scans are not what a GPU run uses")
    if compiled_wanted and setting and shutil.which(compiled.c_compiler()) is None:
        pytest.skip("no C compiler here: no compiled step loops")
    torch.manual_seed(0)
    model = RecurrentNet(
        TASK.input_size, TASK.output_size, TASK.token_input, kind=cell, hidden_size=4,
        num_layers=LAYERS, embedding_dim=3, t_max=T, **options,
    ).to(device, dtype)  # fmt: skip
    batch = BatchSource(TASK, 0, B, 1).train(0, device)
    batch = dataclasses.replace(
        batch, inputs=batch.inputs.to(dtype), targets=batch.targets.to(dtype)
    )
    traces = []

    def recorder(trace, offset):  # reads nothing: only keeps the Trace it is shown
        traces.append(trace)

    clipping = Clipping(clip, threshold=1e-3)
    hooks = clipping.trace_hooks(B)  # per-timestep clipping only
    probes = [recorder] if probed else []
    hooks += [recorder] if hooks and not probed else []  # sees the trace, as a hook
    compiled.use_compiled(compiled_wanted)
    try:
        with Calls() as mode:
            for _ in run_windows(
                model, batch, BPTT().windows(T), TASK.position_losses, probes, hooks
            ):
                clipping.clip_parameters(model.parameters())
    finally:
        compiled.use_compiled(True)
    expected = expected_path(device, dtype, cell, setting, clip, probed)
    tracing = "hooked" if clip == "timestep" else "probed" if probed else "untraced"
    assert model.paths == {f"layer{layer}": {tracing: expected} for layer in range(LAYERS)}
    assert seen_path(cell, mode, traces) == expected
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def adam_module(cell: str, options: dict, truncation: int | None) -> SequenceModule:
    """Copy task, two layers, Adam, norm clipping: the run of issue 24, seeded."""
    task = CopyTask(gap=10)
    torch.manual_seed(0)
    model = RecurrentNet(
        task.input_size, task.output_size, kind=cell, hidden_size=16, num_layers=2,
        embedding_dim=8, t_max=task.seq_len, **options,
    )  # fmt: skip
    return SequenceModule(
        model,
        task,
        functools.partial(torch.optim.Adam, lr=1e-2),
        bptt=BPTT(truncation=truncation),
        clipping=Clipping("norm", 1.0),
        batch_size=8,
        val_batches=1,
        stop_when_solved=False,
    )


PROBED_RUNS = [  # (cell, options, truncation, how close the probed run's parameters are)
    *((cell, {"kernel": "bpttlab"}, 7, 0.0) for cell in KERNEL_CELLS),
    *((cell, {"kernel": "torch", "onednn": False}, 7, 0.0) for cell in KERNEL_CELLS),
    ("lstm", {"kernel": "torch", "onednn": True}, 7, 1e-5),  # probes run bpttlab's kernel
]


@pytest.mark.slow
@pytest.mark.parametrize(("cell", "options", "truncation", "tolerance"), PROBED_RUNS)
def test_a_probed_run_ends_with_the_parameters_of_an_unprobed_one(
    tmp_path, cell, options, truncation, tolerance
):
    """Two runs from one seed, 10 optimiser steps (Adam, copy, two layers, truncation 7 or full
    BPTT), one probed at steps 0 and 5 by GradientFlow: with bpttlab's kernels or torch's native
    kernel they end with bitwise the same parameters; with oneDNN's LSTM, to float32 rounding."""
    probed, plain = adam_module(cell, options, truncation), adam_module(cell, options, truncation)
    flow = GradientFlow(every_n_steps=5, save_dir=str(tmp_path / "grad_flow"))
    fit(probed, tmp_path / "probed", steps=10, callbacks=[flow])
    fit(plain, tmp_path / "plain", steps=10)
    assert len(list((tmp_path / "grad_flow").glob("*.npz"))) == 2
    assert "probed" in probed.model.paths["layer1"] and "probed" not in plain.model.paths["layer1"]
    for (name, a), b in zip(probed.state_dict().items(), plain.state_dict().values(), strict=True):
        if tolerance == 0.0:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, atol=tolerance, rtol=0, msg=name)
            assert not all(
                torch.equal(x, y)
                for x, y in zip(probed.parameters(), plain.parameters(), strict=True)
            )


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_the_command_line_runs_the_classes_defaults(cell):
    """One set of defaults: every option conf/cell/<cell>.yaml sets (those of RecurrentNet and
    those of the cell) has the value the Python class takes by default."""
    yaml = OmegaConf.load(Path(CONFIG_DIR) / "cell" / f"{cell}.yaml")
    base = OmegaConf.load(Path(CONFIG_DIR) / "cell" / "base.yaml")
    options = {**OmegaConf.to_container(base), **OmegaConf.to_container(yaml)}
    signatures = [inspect.signature(RecurrentNet), inspect.signature(CELLS[cell])]
    defaults = {
        name: p.default
        for signature in signatures
        for name, p in signature.parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for key, value in options.items():
        if key not in ("_target_", "defaults", "kind"):
            assert key in defaults and value == defaults[key], (cell, key, value)


@pytest.mark.slow
def test_metrics_json_records_the_path_each_layer_ran(tmp_path):
    """`bpttlab-train cell=gru` (probed at step 0) runs what RecurrentNet(kind="gru") runs in
    Python, bpttlab's GRU kernel, and its metrics.json says so for each layer."""
    if shutil.which(compiled.c_compiler()) is None:
        pytest.skip("no C compiler here: no compiled step loops")
    args = ["cell=gru", "cell.hidden_size=8", "cell.num_layers=2", "task=copy", "task.gap=4"]
    args += ["module.batch_size=4", "module.val_batches=1", "trainer.max_steps=2"]
    args += [f"hydra.run.dir={tmp_path / 'run'}"]
    cli = str(Path(sys.executable).parent / "bpttlab-train")
    result = subprocess.run([cli, *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    paths = json.loads((tmp_path / "run" / "metrics.json").read_text())["paths"]
    python = RecurrentNet(5, 3, kind="gru", num_layers=2)
    python(torch.zeros(2, 3, dtype=torch.long))
    assert python.paths["layer0"] == {"untraced": "kernel"}
    assert paths == {f"layer{i}": {"untraced": "kernel", "probed": "kernel"} for i in (0, 1)}
