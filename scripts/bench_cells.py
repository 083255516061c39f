"""Benchmark every registered cell's two paths: forward + backward of RecurrentNet's fast path
(fused kernel or parallel scan) against its unrolled path (the step loop that probes use).

    python scripts/bench_cells.py [--device cpu|cuda] [--seq-len T] [--repeats N] [--cells a,b]
        [--threads N] [--kernels-only]

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
and with the native one; on CUDA the fast path of rnn/lstm/gru is cuDNN's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bpttlab.cells import CELLS
from bpttlab.cells.kernels.compiled import compiled_in_effect, use_compiled
from bpttlab.cli.allocator import keep_freed_memory
from bpttlab.cli.subnormals import flush_subnormals
from bpttlab.model import RecurrentNet

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


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


def kernel_table(args: argparse.Namespace, ceiling: float) -> None:
    B, T, E, H = args.batch, args.seq_len, args.embedding, args.hidden
    print(f"\ntraining kernels, one layer, forward + backward, median of {args.repeats}")
    header = f"{'cell':<6}{'native ms':>11}{'oneDNN ms':>11}{'bpttlab ms':>12}"
    header += f"{'fastest torch/bpttlab':>23}{'GFLOP/s':>9}{'of GEMM':>9}"
    print(f"{header}{'torch-ops steps ms':>20}{'compiled speed-up':>19}")
    for kind in [k for k in args.cells.split(",") if k in GATES]:
        times = time_kernels(kind, B, T, E, H, args.repeats)
        fastest = min(times["torch native"], times["torch oneDNN"])
        rate = 3 * 2 * T * B * GATES[kind] * H * (E + H) / times["bpttlab"] / 1e9
        print(
            f"{kind:<6}{1000 * times['torch native']:11.1f}{1000 * times['torch oneDNN']:11.1f}"
            f"{1000 * times['bpttlab']:12.1f}{fastest / times['bpttlab']:23.2f}{rate:9.1f}"
            f"{rate / ceiling:9.0%}{1000 * times['bpttlab, torch ops']:20.1f}"
            f"{times['bpttlab, torch ops'] / times['bpttlab']:19.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=200)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cells", default=",".join(sorted(CELLS)))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--kernels-only", action="store_true", help="only the kernel table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flush_subnormals(True)
    keep_freed_memory(True)
    device = torch.device(args.device)
    B, T, E, H = args.batch, args.seq_len, args.embedding, args.hidden
    ceiling = gemm_gflops(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"B={B} T={T} E={E} H={H}, forward + backward, median of {args.repeats}")
    print(f"GEMM ceiling (float32 2048^3): {ceiling:.0f} GFLOP/s")
    if device.type == "cpu":
        kernel_table(args, ceiling)
        print(f"compiled kernel steps ran: {compiled_in_effect()}")  # built at their first call
    if args.kernels_only:
        return
    print()
    print(f"{'cell':<18}{'fast ms':>9}{'unrolled ms':>13}{'unrolled/fast':>15}{'GFLOP/s':>9}")
    variants = []
    for kind in args.cells.split(","):
        variants.append((kind, {}))
        if kind == "lstm" and device.type == "cpu":
            variants[-1] = ("lstm", {"onednn": True})
            variants.append(("lstm", {"onednn": False}))
    for kind, options in variants:
        torch.manual_seed(0)
        net = RecurrentNet(
            E, 1, token_input=False, kind=kind, hidden_size=H, embedding_dim=E, **options
        ).to(device)
        x = torch.randn(B, T, E, device=device)
        times = time_paths(net, x, args.repeats)
        label = kind + (f" (onednn={options['onednn']})" if options else "")
        flops = 3 * 2 * T * B * GATES[kind] * H * (E + H) if kind in GATES else None
        rate = f"{flops / times['fast'] / 1e9:9.1f}" if flops else f"{'':>9}"
        ratio = times["unrolled"] / times["fast"]
        print(
            f"{label:<18}{1000 * times['fast']:9.1f}{1000 * times['unrolled']:13.1f}"
            f"{ratio:15.2f}{rate}"
        )


if __name__ == "__main__":
    main()
