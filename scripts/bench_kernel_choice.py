"""Benchmark the LSTM kernel choice on CPU: oneDNN's against PyTorch's native kernel, and
RecurrentNet's fused path against its unrolled one.

    python scripts/bench_kernel_choice.py [--quick] [--repeats N] [--threads N] [--json PATH]
        [--write-docs PATH]

Forward + backward of ``nn.LSTM`` (input (64, 200, 32), hidden 128; the input requires grad,
as the encoder's output does in RecurrentNet) with oneDNN enabled and disabled
(``torch.backends.mkldnn.enabled``), and RecurrentNet's unrolled path against its fused path
(oneDNN, the LSTM config's default) on adding-task inputs; the four timed in alternation
(A B C D A B C D ...), medians after warm-up rounds. The autograd node of each nn.LSTM output
names the kernel that ran. The per-cell kernel table against bpttlab's own kernels is in
scripts/bench_cells.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial

import torch
from bench_frame import run
from bench_paths import Config, config_from, make_model
from bench_protocol import SEED, alternate, median, progress
from bench_report import Section
from torch import nn

from bpttlab import AddingTask
from bpttlab.cells.torch_recurrence import onednn
from bpttlab.tasks import TRAIN, batch_generator

SECTIONS = ("kernels",)


def timed(step: Callable[[], None], parameters: list[torch.Tensor]) -> Callable[[], float]:
    """A run that clears the gradients, then times one ``step`` (forward + backward)."""

    def run_step() -> float:
        for p in parameters:
            p.grad = None
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    return run_step


def kernel_choice(cfg: Config) -> dict:
    """nn.LSTM with oneDNN on and off; RecurrentNet unrolled and fused: forward + backward."""
    torch.manual_seed(SEED)
    lstm = nn.LSTM(cfg.embedding, cfg.hidden, batch_first=True)
    x = torch.randn(cfg.batch, cfg.seq_len, cfg.embedding, requires_grad=True)
    task = AddingTask(gap=cfg.seq_len)
    net = make_model(task, cfg)
    inputs = task.generate(cfg.batch, batch_generator(SEED, TRAIN, 0, "cpu")).inputs

    def lstm_step(enabled: bool) -> None:
        with onednn(enabled):
            lstm(x)[0].sum().backward()

    def net_step(unrolled: bool) -> None:
        net(inputs, unrolled=unrolled)[0].sum().backward()

    def lstm_node(enabled: bool) -> str:
        """The autograd node nn.LSTM's output comes from: which kernel ran."""
        with onednn(enabled):
            node = lstm(x)[0].grad_fn
        while type(node).__name__ == "TransposeBackward0":
            node = node.next_functions[0][0]
        return type(node).__name__

    lstm_params = [x, *lstm.parameters()]
    runs = {
        "nn.LSTM, oneDNN enabled": timed(partial(lstm_step, True), lstm_params),
        "nn.LSTM, oneDNN disabled": timed(partial(lstm_step, False), lstm_params),
        "RecurrentNet, unrolled": timed(partial(net_step, True), list(net.parameters())),
        "RecurrentNet, fused": timed(partial(net_step, False), list(net.parameters())),
    }
    progress(f"kernel choice: {cfg.kernel_warmup} warm-up + {cfg.repeats} rounds")
    alternate(runs, cfg.kernel_warmup)
    times = alternate(runs, cfg.repeats)
    medians = {name: median(ts) for name, ts in times.items()}
    return {
        "shape": [cfg.batch, cfg.seq_len, cfg.embedding],
        "hidden": cfg.hidden,
        "times_s": times,
        "median_ms": {name: 1000 * m for name, m in medians.items()},
        "autograd_node": {"oneDNN enabled": lstm_node(True), "oneDNN disabled": lstm_node(False)},
        "onednn_over_native": medians["nn.LSTM, oneDNN enabled"]
        / medians["nn.LSTM, oneDNN disabled"],
        "unrolled_over_fused": medians["RecurrentNet, unrolled"] / medians["RecurrentNet, fused"],
    }


def kernels_section(r: dict, cfg: Config) -> Section:
    batch, seq_len, embedding = r["shape"]
    nodes, m = r["autograd_node"], r["median_ms"]
    kernels = {
        "nn.LSTM, oneDNN enabled": nodes["oneDNN enabled"],
        "nn.LSTM, oneDNN disabled": nodes["oneDNN disabled"],
        "RecurrentNet, unrolled": "Python step loop",
        "RecurrentNet, fused": "nn.LSTM, oneDNN enabled",
    }
    baseline = {
        "nn.LSTM, oneDNN enabled": m["nn.LSTM, oneDNN disabled"],
        "nn.LSTM, oneDNN disabled": m["nn.LSTM, oneDNN disabled"],
        "RecurrentNet, unrolled": m["RecurrentNet, fused"],
        "RecurrentNet, fused": m["RecurrentNet, fused"],
    }
    rows = [
        [name, f"{m[name]:.1f}", f"{m[name] / baseline[name]:.2f}", kernel]
        for name, kernel in kernels.items()
    ]
    faster = "native" if r["onednn_over_native"] > 1 else "oneDNN"
    return Section(
        "kernels",
        f"Kernel choice: forward + backward, input ({batch}, {seq_len}, {embedding}), "
        f"hidden {r['hidden']}",
        ["variant", "median ms", "time ratio", "kernel (autograd node)"],
        rows,
        notes=[
            "time ratio = median time over that of nn.LSTM's native kernel (the nn.LSTM rows) "
            f"or of the fused path (the RecurrentNet rows); {faster} is the faster nn.LSTM kernel "
            f"here (oneDNN / native = {r['onednn_over_native']:.2f}, unrolled / fused = "
            f"{r['unrolled_over_fused']:.2f}).",
        ],
        counts=(
            f"Medians of {cfg.repeats} rounds of the four, alternating, after warm-up rounds "
            f"({cfg.kernel_warmup})"
        ),
    )


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    cfg = config_from(args)
    results = {"config": asdict(cfg), "kernels": kernel_choice(cfg)}
    table = kernels_section(results["kernels"], cfg)
    print(table.text())
    return results, [table]


def main(argv: list[str] | None = None) -> None:
    run(__doc__, SECTIONS, measure, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
