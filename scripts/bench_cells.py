"""Benchmark every registered cell's two paths: forward + backward of RecurrentNet's fast path
(fused kernel or parallel scan) against its unrolled path (the step loop that probes use).

    python scripts/bench_cells.py [--device cpu|cuda] [--seq-len T] [--repeats N] [--cells a,b]
        [--threads N] [--kernels-only] [--quick] [--json PATH] [--write-docs PATH]
        [--sections cell-kernels,cell-paths]

One process; the paths of a cell are timed in alternation (A B A B ...), medians of the
repeats after a warm-up. On CPU a second table times the training kernels of rnn, gru and lstm
(one layer, forward + backward from a given state): torch's native kernel, torch's oneDNN
kernel and bpttlab's own (``cell.kernel=bpttlab``), its steps compiled (the default) and as
torch operations (``compiled_kernels=false``), in alternation (A B C D A B C D ...), with the
ratio of the fastest torch kernel's time to bpttlab's (> 1: bpttlab is faster) and the
compiled steps' speed-up. Subnormals are flushed and freed memory kept
(``bpttlab.cli.allocator``), as in training runs. On a machine shared with other jobs,
OMP_WAIT_POLICY=passive keeps idle OpenMP threads from spinning against them (else timings can
jump a hundredfold). Also a GEMM ceiling measured in the same run (a large float32 matrix
product), and for the torch-backed cells their GFLOP/s (forward + backward of the recurrence:
about 3 x 2 x T x B x gates x H x (E + H) flops). On CPU the LSTM is shown with oneDNN's kernel
and with the native one; on CUDA the fast path of rnn/lstm/gru is cuDNN's. The kernel table is
section ``cell-kernels`` (``--kernels-only`` runs it alone), the paths table ``cell-paths``;
``--quick`` shrinks the sizes for a smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from bench_frame import run
from bench_report import Section

from bpttlab.cells import CELLS
from bpttlab.cells.kernels.compiled import use_compiled
from bpttlab.model import RecurrentNet

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SECTIONS = ("cell-kernels", "cell-paths")
SIZES = {"batch": 64, "seq_len": 200, "embedding": 32, "hidden": 128, "repeats": 5}
QUICK_SIZES = {"batch": 8, "seq_len": 20, "embedding": 8, "hidden": 16, "repeats": 2}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    a @ b
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        a @ b
        synchronise(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def time_paths(net: RecurrentNet, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward for the fast and the unrolled path, alternating."""
    times: dict[str, list[float]] = {"fast": [], "unrolled": []}
    for round_ in range(repeats + 1):
        for name in times:
            net.zero_grad(set_to_none=True)
            synchronise(x.device)
            start = time.perf_counter()
            net(x, unrolled=name == "unrolled").outputs.sum().backward()
            synchronise(x.device)
            if round_ > 0:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def time_kernels(kind: str, B: int, T: int, E: int, H: int, repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward of one cell under each training kernel,
    alternating; every output and the final state get an upstream gradient."""
    torch.manual_seed(0)
    cell = CELLS[kind](E, H)
    x = torch.randn(B, T, E, requires_grad=True)
    state = cell.default_state(x)
    kernels = {
        "torch native": {"kernel": "torch", "onednn": False, "compiled": True},
        "torch oneDNN": {"kernel": "torch", "onednn": True, "compiled": True},
        "bpttlab": {"kernel": "bpttlab", "onednn": False, "compiled": True},
        "bpttlab, torch ops": {"kernel": "bpttlab", "onednn": False, "compiled": False},
    }
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for round_ in range(repeats + 1):
        for name, settings in kernels.items():
            cell.kernel, cell.onednn = settings["kernel"], settings["onednn"]
            use_compiled(settings["compiled"])
            cell.zero_grad(set_to_none=True)
            x.grad = None
            start = time.perf_counter()
            y, final = cell(x, state)
            (y.sum() + sum(s.sum() for s in final)).backward()
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
    use_compiled(True)
    return {name: statistics.median(values) for name, values in times.items()}


def flops(kind: str, B: int, T: int, E: int, H: int) -> int | None:
    """Forward + backward of the recurrence: about 3 x 2 x T x B x gates x H x (E + H)."""
    return 3 * 2 * T * B * GATES[kind] * H * (E + H) if kind in GATES else None


def kernel_section(args: argparse.Namespace, ceiling: float) -> Section:
    B, T, E, H = args.batch, args.seq_len, args.embedding, args.hidden
    rows = []
    for kind in [k for k in args.cells.split(",") if k in GATES]:
        times = time_kernels(kind, B, T, E, H, args.repeats)
        fastest = min(times["torch native"], times["torch oneDNN"])
        rate = flops(kind, B, T, E, H) / times["bpttlab"] / 1e9
        rows.append(
            [
                kind,
                *(f"{1000 * times[k]:.1f}" for k in ("torch native", "torch oneDNN", "bpttlab")),
                f"{fastest / times['bpttlab']:.2f}",
                f"{rate:.1f}",
                f"{rate / ceiling:.0%}",
                f"{1000 * times['bpttlab, torch ops']:.1f}",
                f"{times['bpttlab, torch ops'] / times['bpttlab']:.2f}",
            ]
        )
    headers = ["cell", "native ms", "oneDNN ms", "bpttlab ms", "fastest torch / bpttlab"]
    headers += ["GFLOP/s", "of GEMM", "torch-ops steps ms", "compiled speed-up"]
    return Section(
        "cell-kernels",
        f"Training kernels, one layer, forward + backward, B={B} T={T} E={E} H={H}",
        headers,
        rows,
        notes=[
            "fastest torch / bpttlab > 1: bpttlab's kernel is faster; GFLOP/s and its share of "
            f"the GEMM ceiling measured in the same run ({ceiling:.0f} GFLOP/s, float32 2048^3) "
            "are bpttlab's; compiled speed-up = torch-ops steps / compiled steps."
        ],
        counts=f"Medians of {args.repeats} rounds of the four kernels, alternating, after one warm-up round",
    )


def paths_section(args: argparse.Namespace, device: torch.device) -> Section:
    B, T, E, H = args.batch, args.seq_len, args.embedding, args.hidden
    variants = []
    for kind in args.cells.split(","):
        variants.append((kind, {}))
        if kind == "lstm" and device.type == "cpu":
            variants[-1] = ("lstm", {"onednn": True})
            variants.append(("lstm", {"onednn": False}))
    rows = []
    for kind, options in variants:
        torch.manual_seed(0)
        net = RecurrentNet(
            E, 1, token_input=False, kind=kind, hidden_size=H, embedding_dim=E, **options
        ).to(device)
        x = torch.randn(B, T, E, device=device)
        times = time_paths(net, x, args.repeats)
        label = kind + (f" (onednn={options['onednn']})" if options else "")
        count = flops(kind, B, T, E, H)
        rate = f"{count / times['fast'] / 1e9:.1f}" if count else ""
        ratio = times["unrolled"] / times["fast"]
        rows.append(
            [label, f"{1000 * times['fast']:.1f}", f"{1000 * times['unrolled']:.1f}"]
            + [f"{ratio:.2f}", rate]
        )
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    return Section(
        "cell-paths",
        f"Each cell's fast path against its unrolled path on {name}, forward + backward, "
        f"B={B} T={T} E={E} H={H}",
        ["cell", "fast ms", "unrolled ms", "unrolled / fast", "GFLOP/s"],
        rows,
        counts=f"Medians of {args.repeats} rounds of the two paths, alternating, after one warm-up round",
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for name in ("batch", "seq-len", "embedding", "hidden"):
        parser.add_argument(f"--{name}", type=int, help=f"default {SIZES[name.replace('-', '_')]}")
    parser.add_argument("--cells", default=",".join(sorted(CELLS)))
    parser.add_argument("--kernels-only", action="store_true", help="only the kernel table")


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    for name, value in (QUICK_SIZES if args.quick else SIZES).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    device = torch.device(args.device)
    ceiling = gemm_gflops(device)
    print(f"GEMM ceiling on {device} (float32 2048^3): {ceiling:.0f} GFLOP/s\n")
    tables = []
    if "cell-kernels" in sections and device.type == "cpu":
        tables.append(kernel_section(args, ceiling))
        print(tables[-1].text())
    if "cell-paths" in sections and not args.kernels_only:
        tables.append(paths_section(args, device))
        print(tables[-1].text())
    results = {"gemm_gflops": ceiling}
    results |= {t.name: {"headers": t.headers, "rows": t.rows} for t in tables}
    return results, tables


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run(__doc__, SECTIONS, measure, argv, add_options)


if __name__ == "__main__":
    main()
