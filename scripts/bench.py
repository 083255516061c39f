"""Benchmark bpttlab on CPU: framework overhead, GradientFlow overhead and the LSTM kernel choice.

    python scripts/bench.py [--quick] [--repeats N] [--json PATH]
                            [--threads N] [--clip-threshold T]

Everything runs in one process, side by side. Implementations are timed in alternation
(A B A B ...) so that drift in machine load hits all of them alike; every comparison reports
the median of its repeats, with warm-up runs excluded, and the ratio of the medians.

1. Framework overhead. bpttlab's real training path (a ``lightning.Trainer`` fitting a
   ``SequenceModule``; manual optimisation, batches drawn on the device from the global step)
   against a hand-written PyTorch loop doing the same work: the same RecurrentNet weights
   (state_dict copied), the same batches (``batch_generator(seed, TRAIN, step, "cpu")`` and
   ``task.generate``), the same BPTT windows, the same loss (sum of masked position losses over
   the batch's total mask count), the same clipping (global norm, threshold 1.0), the same optimiser
   (Adam, lr 3e-3) and PyTorch's fastest LSTM kernel on this CPU, oneDNN's (the LSTM config's
   default, ``onednn=True``; enabled around the plain loop's ``nn.LSTM`` call). LSTM
   hidden 128, batch 64, adding task T = 200, full BPTT and truncation 20. Before timing, both
   paths train 3 batches from the same weights and must agree (``torch.allclose``, atol 1e-6).
   Throughput is sequence-steps per second, batch_size * seq_len * batches / seconds, where
   the seconds of a Lightning run are those of its training loop (``on_train_start`` to
   ``on_train_end``: every per-batch hook, logging and optimiser wrapper, but not the one-off
   setup and teardown of ``Trainer.fit``, reported apart as "fit() fixed cost").
   Target: bpttlab / plain >= 0.95.

2. GradientFlow overhead. The same bpttlab run (full BPTT) with the GradientFlow callback
   probing every 10 steps against the run without it, over 150 batches per run, i.e. 15
   probes. Target: with / without >= 0.95; with ``--probe-every 1`` (every step probed) the
   stretch, a cost of at most 1.3x. Also the cost of one probe, from the per-batch times
   (median probed batch minus median unprobed batch, of the same runs or, when every step is
   probed, of the runs without GradientFlow; whole-run times are too noisy to resolve it),
   and the throughput ratio those per-batch times imply in steady state.

3. Kernel choice. Forward + backward of ``nn.LSTM`` (input (64, 200, 32), hidden 128; the input
   requires grad, as the encoder's output does in RecurrentNet) with oneDNN enabled and
   disabled (``torch.backends.mkldnn.enabled``), and RecurrentNet's unrolled path against its
   fused path (oneDNN, the LSTM config's default) on adding-task inputs; the per-cell kernel
   table against bpttlab's own kernels is in scripts/bench_cells.py.

4. Parallel sweeps. Seed sweeps of LSTM runs (12 short runs of the results grid, 4 long ones,
   4 of the README LSTM) through the real command line, one run after
   another (basic launcher, torch on every core) against hydra/launcher=joblib with 2 jobs
   (one torch thread each). Target: >= 1.6x.

Every Lightning run logs to a real TensorBoardLogger in a temporary directory, with
``log_every_n_steps=10`` as in conf/trainer/default.yaml; no validation, no checkpoints, no
progress bar. Like bpttlab-train by default, the process flushes subnormals and keeps freed
memory (``bpttlab.cli.allocator``), for every path alike. ``--cell gru`` runs section 2 with
bpttlab's GRU kernel (the GRU default) instead of the LSTM. ``--quick`` shrinks every size for
a smoke run of under a minute. ``--threads`` sets torch's intra-op threads (on a machine whose
cores are busy with other work, 1 thread avoids oversubscription stalls). ``--clip-threshold``
changes the clipping threshold of the training runs (a threshold no gradient reaches makes
clipping an exact no-op on both paths).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from bpttlab import BPTT, AddingTask, Clipping, GradientFlow, RecurrentNet, SequenceModule, Window
from bpttlab.cells.kernels.compiled import compiled_in_effect
from bpttlab.cells.torch_recurrence import onednn
from bpttlab.cli.allocator import keep_freed_memory
from bpttlab.cli.subnormals import flush_subnormals
from bpttlab.tasks import TRAIN, batch_generator

SEED = 0
LR = 3e-3
TARGET = 0.95  # framework overhead
PROBE_TARGET = 0.95  # GradientFlow every 10 steps
PROBE_EVERY_STEP_TARGET = 1 / 1.3  # the stretch: every step probed costs at most 1.3x
LOG_EVERY = 10  # conf/trainer/default.yaml

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Config:
    """What the benchmark runs; FULL is the reported configuration."""

    cell: str = "lstm"  # section 2 may take gru (the others are written for the LSTM)
    clip: float = 1.0  # gradient-norm clipping threshold
    seq_len: int = 200  # adding task gap T
    hidden: int = 128
    embedding: int = 32
    batch: int = 64
    truncation: int = 20
    check_batches: int = 3  # equivalence check before timing
    warmup_batches: int = 3
    batches_full: int = 10  # per timed run, full BPTT
    batches_truncated: int = 60  # per timed run, truncation (1.2 s: shorter runs were noisy)
    repeats: int = 5  # timed runs per implementation, sections 1 and 3
    gradflow_batches: int = 150
    gradflow_every: int = 10
    gradflow_repeats: int = 5  # whole runs of 7-8 s moved by +-0.3 s: 3 gave 0.93-1.00
    kernel_warmup: int = 2


FULL = Config()
QUICK = Config(
    seq_len=40,
    hidden=32,
    embedding=8,
    batch=16,
    truncation=10,
    batches_full=3,
    batches_truncated=3,
    warmup_batches=1,
    repeats=2,
    gradflow_batches=10,
    gradflow_every=5,
    gradflow_repeats=3,
    kernel_warmup=1,
)


# -- shared pieces --------------------------------------------------------------------------
CELL_DEFAULTS = {
    "lstm": {"onednn": True},  # conf/cell/lstm.yaml: PyTorch's fastest LSTM kernel on CPU
    "gru": {"kernel": "bpttlab"},  # conf/cell/gru.yaml: bpttlab's GRU kernel
}


def make_model(task: AddingTask, cfg: Config) -> RecurrentNet:
    return RecurrentNet(
        input_size=task.input_size,
        output_size=task.output_size,
        token_input=task.token_input,
        kind=cfg.cell,
        hidden_size=cfg.hidden,
        embedding_dim=cfg.embedding,
        **CELL_DEFAULTS[cfg.cell],
    )


def initial_weights(cfg: Config) -> Weights:
    torch.manual_seed(SEED)
    return make_model(AddingTask(gap=cfg.seq_len), cfg).state_dict()


def median(values: list[float]) -> float:
    return statistics.median(values)


def alternate(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list]:
    """Call the runs in turn, ``repeats`` rounds (A B A B ...); collect what each returns."""
    results: dict[str, list] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return results


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- bpttlab's training path ----------------------------------------------------------------
@dataclass
class Timing:
    loop: float  # seconds of the training loop, on_train_start to on_train_end
    fit: float  # seconds of the whole Trainer.fit call
    batches: list[float]  # seconds of each batch, on_train_batch_start to on_train_batch_end
    probed: list[bool]  # whether GradientFlow probed each batch
    probes: list[int] = field(default_factory=list)  # steps GradientFlow probed


class LoopTimer(L.Callback):
    """Time the training loop (on_train_start to on_train_end) and each batch in it.

    Listed after the other callbacks, so a batch's time includes their on_train_batch_end.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: SequenceModule) -> None:
        self.batches: list[float] = []
        self.steps: list[int] = []
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module: SequenceModule, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(time.perf_counter() - self.batch_start)

    def on_train_end(self, trainer: L.Trainer, pl_module: SequenceModule) -> None:
        self.seconds = time.perf_counter() - self.start


def make_module(cfg: Config, truncation: int | None, weights: Weights) -> SequenceModule:
    task = AddingTask(gap=cfg.seq_len)
    model = make_model(task, cfg)
    model.load_state_dict(weights)
    return SequenceModule(
        model,
        task,
        optimizer=partial(torch.optim.Adam, lr=LR),
        bptt=BPTT(truncation=truncation),
        clipping=Clipping(mode="norm", threshold=cfg.clip),
        batch_size=cfg.batch,
        seed=SEED,
        stop_when_solved=False,
    )


def fit_bpttlab(
    module: SequenceModule, batches: int, root: str, callbacks: tuple[L.Callback, ...] = ()
) -> Timing:
    """Fit ``module`` for ``batches`` batches with a real Trainer logging to TensorBoard."""
    timer = LoopTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=batches * module.updates_per_batch(),
        max_epochs=-1,
        logger=TensorBoardLogger(root, name="tensorboard", version="", default_hp_metric=False),
        callbacks=[*callbacks, timer],
        log_every_n_steps=LOG_EVERY,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    start = time.perf_counter()
    trainer.fit(module)
    fit = time.perf_counter() - start
    if module.batches != batches:
        raise RuntimeError(f"bpttlab trained {module.batches} batches, not {batches}")
    probed = {step for c in callbacks if isinstance(c, GradientFlow) for step in c.history_steps}
    return Timing(timer.seconds, fit, timer.batches, [s in probed for s in timer.steps])


def run_bpttlab(
    cfg: Config, truncation: int | None, weights: Weights, batches: int, gradflow: bool = False
) -> Timing:
    """A fresh module from ``weights``, fitted for ``batches`` batches (GradientFlow or not)."""
    module = make_module(cfg, truncation, weights)
    with tempfile.TemporaryDirectory() as root:
        if not gradflow:
            return fit_bpttlab(module, batches, root)
        flow = GradientFlow(every_n_steps=cfg.gradflow_every, save_dir=f"{root}/grad_flow")
        timing = fit_bpttlab(module, batches, root, (flow,))
        timing.probes = list(flow.history_steps)
        return timing


# -- the same work in plain PyTorch ---------------------------------------------------------
def train_plain(
    model: RecurrentNet,
    task: AddingTask,
    windows: list[Window],
    batches: int,
    batch_size: int,
    clip: float,
) -> float:
    """Train ``model`` by hand for ``batches`` batches; return the loop's seconds.

    Calls the model's encoder, nn.LSTM and readout directly (no SequenceModule code). One
    optimiser step per window that holds targets, and the step count seeds the next batch, as
    Lightning's global step does; windows without targets only carry the state forward, in one
    call up to the next window with targets.
    """
    if any(w.carry != w.end for w in windows):
        raise ValueError("the plain loop handles disjoint windows (update_every = truncation)")
    parameters = list(model.parameters())
    optimizer = torch.optim.Adam(parameters, lr=LR)
    step = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = task.generate(batch_size, batch_generator(SEED, TRAIN, step, "cpu"))
        total = batch.mask.sum()
        state, carry_from = None, None
        for w in windows:
            mask = batch.mask[:, w.loss_start : w.end]
            if not mask.any():  # as bpttlab does (run_windows): run at the next window's start
                carry_from = w.start if carry_from is None else carry_from
                continue
            if carry_from is not None:  # the windows without targets, as one, no readout
                with torch.no_grad():
                    x = model.encoder(batch.inputs[:, carry_from : w.start])
                    with onednn(True):
                        state = model.layers[0].rnn(x, state)[1]
                carry_from = None
            x = model.encoder(batch.inputs[:, w.start : w.end])
            with onednn(True):
                hidden, carried = model.layers[0].rnn(x, state)
            outputs = model.readout(hidden)[:, w.loss_start - w.start :, 0]
            targets = batch.targets[:, w.loss_start : w.end]
            loss = ((outputs - targets).square() * mask).sum() / total
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state = tuple(s.detach() for s in carried)
    return time.perf_counter() - start


def run_plain(cfg: Config, truncation: int | None, weights: Weights, batches: int) -> float:
    """A fresh model from ``weights``, trained by hand for ``batches`` batches: seconds."""
    task = AddingTask(gap=cfg.seq_len)
    model = make_model(task, cfg)
    model.load_state_dict(weights)
    windows = BPTT(truncation).windows(task.seq_len)
    return train_plain(model, task, windows, batches, cfg.batch, cfg.clip)


# -- 1. framework overhead ------------------------------------------------------------------
def setting_name(truncation: int | None) -> str:
    return "full BPTT" if truncation is None else f"truncation {truncation}"


def check_same_training(cfg: Config, truncation: int | None, weights: Weights) -> float:
    """Train a few batches both ways from the same weights; abort unless the parameters agree.

    Returns the largest absolute parameter difference.
    """
    module = make_module(cfg, truncation, weights)
    with tempfile.TemporaryDirectory() as root:
        fit_bpttlab(module, cfg.check_batches, root)
    task = AddingTask(gap=cfg.seq_len)
    plain = make_model(task, cfg)
    plain.load_state_dict(weights)
    train_plain(plain, task, module.windows, cfg.check_batches, cfg.batch, cfg.clip)
    pairs = list(zip(module.model.named_parameters(), plain.parameters(), strict=True))
    differ = {name: (a - b).abs().max().item() for (name, a), b in pairs}
    if not all(torch.allclose(a, b, rtol=0, atol=1e-6) for (_, a), b in pairs):
        raise SystemExit(
            f"bench: after {cfg.check_batches} batches ({setting_name(truncation)}) bpttlab and "
            "the plain loop hold different parameters (max |difference| "
            + ", ".join(f"{name} {d:.2g}" for name, d in differ.items())
            + "): they do not do the same work, so their timings cannot be compared"
        )
    return max(differ.values())


def framework_overhead(cfg: Config, truncation: int | None, batches: int, weights: Weights) -> dict:
    """bpttlab's Lightning path against the plain loop, alternating; medians and their ratio."""
    name = setting_name(truncation)
    progress(f"framework overhead, {name}: equivalence check")
    difference = check_same_training(cfg, truncation, weights)
    progress(f"framework overhead, {name}: warm-up, then {cfg.repeats} x 2 runs")
    warmup = cfg.warmup_batches
    alternate(
        {
            "bpttlab": lambda: run_bpttlab(cfg, truncation, weights, warmup),
            "plain": lambda: run_plain(cfg, truncation, weights, warmup),
        },
        repeats=1,
    )
    results = alternate(
        {
            "bpttlab": lambda: run_bpttlab(cfg, truncation, weights, batches),
            "plain": lambda: run_plain(cfg, truncation, weights, batches),
        },
        cfg.repeats,
    )
    plain = results["plain"]
    loop = [t.loop for t in results["bpttlab"]]
    fit = [t.fit for t in results["bpttlab"]]
    steps = cfg.batch * cfg.seq_len * batches
    ratio = median(plain) / median(loop)
    return {
        "setting": name,
        "batches_per_run": batches,
        "check_max_abs_param_diff": difference,
        "plain_s": plain,
        "bpttlab_loop_s": loop,
        "bpttlab_fit_s": fit,
        "plain_median_s": median(plain),
        "bpttlab_median_s": median(loop),
        "plain_seq_steps_per_s": steps / median(plain),
        "bpttlab_seq_steps_per_s": steps / median(loop),
        "fit_fixed_cost_ms": 1000 * median([f - lp for f, lp in zip(fit, loop, strict=True)]),
        "ratio": ratio,
        "ratio_of_fastest": min(plain) / min(loop),
        "fit_ratio": median(plain) / median(fit),
        "target": TARGET,
        "met": ratio >= TARGET,
    }


# -- 2. GradientFlow overhead ---------------------------------------------------------------
def gradflow_overhead(cfg: Config, weights: Weights) -> dict:
    """The full-BPTT bpttlab run with and without GradientFlow, alternating."""
    batches = cfg.gradflow_batches
    progress(f"GradientFlow overhead: warm-up, then {cfg.gradflow_repeats} x 2 runs")
    warmup = cfg.warmup_batches
    alternate(
        {
            "with": lambda: run_bpttlab(cfg, None, weights, warmup, gradflow=True),
            "without": lambda: run_bpttlab(cfg, None, weights, warmup),
        },
        repeats=1,
    )
    results = alternate(
        {
            "with": lambda: run_bpttlab(cfg, None, weights, batches, gradflow=True),
            "without": lambda: run_bpttlab(cfg, None, weights, batches),
        },
        cfg.gradflow_repeats,
    )
    probes = results["with"][0].probes
    with_flow = [t.loop for t in results["with"]]
    without = [t.loop for t in results["without"]]
    # Per batch, within the runs with GradientFlow: probed batches against the others.
    pairs = [(b, p) for t in results["with"] for b, p in zip(t.batches, t.probed, strict=True)]
    probed = median([b for b, p in pairs if p])
    others = [b for b, p in pairs if not p]
    if not others:  # every step probed: the batches of the runs without GradientFlow
        others = [b for t in results["without"] for b in t.batches]
    unprobed = median(others)
    every = cfg.gradflow_every
    target = PROBE_TARGET if every > 1 else PROBE_EVERY_STEP_TARGET
    steps = cfg.batch * cfg.seq_len * batches
    ratio = median(without) / median(with_flow)
    return {
        "batches_per_run": batches,
        "every_n_steps": every,
        "cell": cfg.cell,
        "probe_steps": probes,
        "without_s": without,
        "with_s": with_flow,
        "without_median_s": median(without),
        "with_median_s": median(with_flow),
        "without_seq_steps_per_s": steps / median(without),
        "with_seq_steps_per_s": steps / median(with_flow),
        "probed_batch_ms": 1000 * probed,
        "unprobed_batch_ms": 1000 * unprobed,
        "per_probe_ms": 1000 * (probed - unprobed),
        "per_probe_ms_from_runs": 1000 * (median(with_flow) - median(without)) / len(probes),
        "implied_steady_ratio": every * unprobed / (every * unprobed + probed - unprobed),
        "ratio": ratio,
        "target": target,
        "met": ratio >= target,
    }


# -- 3. kernel choice -----------------------------------------------------------------------
def timed(step: Callable[[], None], parameters: list[torch.Tensor]) -> Callable[[], float]:
    """A run that clears the gradients, then times one ``step`` (forward + backward)."""

    def run() -> float:
        for p in parameters:
            p.grad = None
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    return run


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


# -- report ---------------------------------------------------------------------------------
SWEEP_GRIDS = {
    # name: (overrides of each run, steps per run in the full benchmark, seeds)
    # a seed sweep of experiment=results' runs, the common sweep: many short, small runs
    "12-seed sweep, results grid (LSTM 64, batch 32, copy T=70)": (
        ["cell.hidden_size=64", "module.batch_size=32", "task=copy", "task.gap=50"],
        300,
        12,
    ),
    # the same runs at the results grid's full length: start-up amortised
    "results-grid LSTM (hidden 64, batch 32, copy T=70)": (
        ["cell.hidden_size=64", "module.batch_size=32", "task=copy", "task.gap=50"],
        1500,
        4,
    ),
    # short runs of a model whose matmuls already use both cores in one process
    "README LSTM (hidden 128, batch 64, adding T=50)": (["task=adding", "task.gap=50"], 150, 4),
}


def sweep_speedup(quick: bool, grids: int = len(SWEEP_GRIDS)) -> list[dict]:
    """Wall time of seed sweeps through the real command line: the basic launcher (one run
    after another, torch on every core) against hydra/launcher=joblib with 2 jobs (torch
    threads per job = cores / 2, as bpttlab sets them; loky keeps each worker, and its imports,
    for every job it runs). Target: serial / parallel >= 1.6."""
    cli = str(Path(sys.executable).parent / "bpttlab-train")
    results = []
    for grid_name, (overrides, full_steps, seeds) in list(SWEEP_GRIDS.items())[:grids]:
        steps = 20 if quick else full_steps
        grid = ["-m", "cell=lstm", *overrides, f"seed=range({seeds})", f"trainer.max_steps={steps}"]
        grid += ["~callbacks.grad_flow", "module.stop_when_solved=false"]
        grid += ["trainer.val_check_interval=100000", "trainer.enable_progress_bar=false"]
        times = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, extra in (
                ("serial", []),
                ("joblib, 2 jobs", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
            ):
                progress(f"sweep {grid_name}: {name}")
                start = time.perf_counter()
                command = [cli, *grid, *extra, f"hydra.sweep.dir={tmp}/{len(times)}"]
                subprocess.run(command, check=True, capture_output=True)
                times[name] = time.perf_counter() - start
        speedup = times["serial"] / times["joblib, 2 jobs"]
        results.append(
            {
                "grid": grid_name,
                "runs": seeds,
                "steps_per_run": steps,
                "seconds": times,
                "speedup": speedup,
            }
        )
    return results


def print_sweep(results: list[dict]) -> None:
    print("\n4. Parallel sweeps: seed sweeps of LSTM runs from the command line, serial vs joblib")
    rows = [
        [
            r["grid"],
            r["runs"],
            r["steps_per_run"],
            f"{r['seconds']['serial']:.1f}",
            f"{r['seconds']['joblib, 2 jobs']:.1f}",
            f"{r['speedup']:.2f}",
            "met (>= 1.6)" if r["speedup"] >= 1.6 else "MISSED (>= 1.6)",
        ]
        for r in results
    ]
    print(table(["grid", "runs", "steps/run", "serial s", "joblib s", "speedup", "target"], rows))


def table(headers: list[str], rows: list[list[object]]) -> str:
    """Columns: the first left-aligned, the others right-aligned."""
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        return "  ".join([row[0].ljust(widths[0]), *padded[1:]])

    rule = "-" * len(line(headers))
    return "\n".join([line(headers), rule, *(line(row) for row in cells[1:])])


def verdict(ratio: float, target: float = TARGET) -> str:
    return f"{'met' if ratio >= target else 'MISSED'} (>= {target:.2f})"


def environment() -> dict:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "compiled_steps": compiled_in_effect(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def print_header(env: dict, cfg: Config, quick: bool) -> None:
    print(f"bpttlab benchmark{' (--quick)' if quick else ''}")
    print(
        f"torch {env['torch']}, lightning {env['lightning']}, python {env['python']}, "
        f"{env['platform']}"
    )
    print(
        f"CPUs: {env['cpu_count']} (usable {env['cpus_usable']}), "
        f"torch.get_num_threads() = {env['torch_threads']}, "
        f"load average at start {env['load_average_at_start']}, "
        f"compiled kernel steps: {env['compiled_steps']}"
    )
    print(
        f"LSTM hidden {cfg.hidden}, embedding {cfg.embedding}, batch {cfg.batch}, "
        f"adding T={cfg.seq_len}, clip norm {cfg.clip:g}, Adam lr {LR}; medians of "
        f"{cfg.repeats} runs ({cfg.gradflow_repeats} for GradientFlow), warm-up excluded"
    )
    print(f"Lightning logger: TensorBoardLogger in a temp dir, log_every_n_steps={LOG_EVERY}\n")


def print_training(results: list[dict]) -> None:
    print("1. Framework overhead: bpttlab (Lightning Trainer + SequenceModule) vs plain PyTorch")
    rows = [
        [
            r["setting"],
            r["batches_per_run"],
            f"{r['check_max_abs_param_diff']:.1e}",
            f"{r['plain_median_s']:.3f}",
            f"{r['bpttlab_median_s']:.3f}",
            f"{r['plain_seq_steps_per_s']:,.0f}",
            f"{r['bpttlab_seq_steps_per_s']:,.0f}",
            f"{r['fit_fixed_cost_ms']:.0f}",
            f"{r['ratio']:.3f}",
            verdict(r["ratio"]),
        ]
        for r in results
    ]
    headers = [
        "setting",
        "batches",
        "check |diff|",
        "plain s",
        "bpttlab s",
        "plain seq-steps/s",
        "bpttlab seq-steps/s",
        "fit() fixed ms",
        "ratio",
        "target",
    ]
    print(table(headers, rows))
    fastest = ", ".join(f"{r['setting']} {r['ratio_of_fastest']:.3f}" for r in results)
    print(
        "   ratio = bpttlab / plain throughput, ratio of the medians (of the fastest runs: "
        f"{fastest});\n   bpttlab seconds are its training loop; fit() fixed ms = "
        "Trainer.fit setup + teardown outside the loop, paid once per run\n"
    )


def probe_list(steps: list[int]) -> str:
    if len(steps) <= 16:
        return f"probes at steps {steps}"
    return f"{len(steps)} probes at steps {steps[0]}, {steps[1]}, ..., {steps[-1]}"


def print_gradflow(r: dict) -> None:
    print(
        f"2. GradientFlow overhead: every {r['every_n_steps']} steps, {r['batches_per_run']} "
        f"batches per run, {probe_list(r['probe_steps'])} ({r['cell'].upper()}, full BPTT)"
    )
    rows = [
        [
            "without GradientFlow",
            f"{r['without_median_s']:.3f}",
            f"{r['without_seq_steps_per_s']:,.0f}",
            "",
            "",
        ],
        [
            "with GradientFlow",
            f"{r['with_median_s']:.3f}",
            f"{r['with_seq_steps_per_s']:,.0f}",
            f"{r['ratio']:.3f}",
            verdict(r["ratio"], r["target"]),
        ],
    ]
    print(table(["run", "median s", "seq-steps/s", "ratio", "target"], rows))
    print(
        f"   per-probe cost: {r['per_probe_ms']:.0f} ms = median probed batch "
        f"{r['probed_batch_ms']:.0f} ms - median unprobed batch {r['unprobed_batch_ms']:.0f} ms "
        f"(from whole runs, (with - without) / probes: {r['per_probe_ms_from_runs']:.0f} ms)\n"
        f"   steady-state ratio implied by the per-batch times at every {r['every_n_steps']} "
        f"steps: {r['implied_steady_ratio']:.3f}\n"
    )


def print_kernels(r: dict) -> None:
    batch, seq_len, embedding = r["shape"]
    print(
        f"3. Kernel choice: forward + backward, input ({batch}, {seq_len}, {embedding}), "
        f"hidden {r['hidden']}"
    )
    nodes = r["autograd_node"]
    m = r["median_ms"]
    rows = [
        ["nn.LSTM, oneDNN enabled", f"{m['nn.LSTM, oneDNN enabled']:.1f}", nodes["oneDNN enabled"]],
        [
            "nn.LSTM, oneDNN disabled",
            f"{m['nn.LSTM, oneDNN disabled']:.1f}",
            nodes["oneDNN disabled"],
        ],
        ["RecurrentNet, unrolled", f"{m['RecurrentNet, unrolled']:.1f}", "Python step loop"],
        ["RecurrentNet, fused", f"{m['RecurrentNet, fused']:.1f}", "nn.LSTM, oneDNN enabled"],
    ]
    print(table(["variant", "median ms", "kernel (autograd node)"], rows))
    print(
        f"   oneDNN / native time: {r['onednn_over_native']:.2f}   "
        f"unrolled / fused time: {r['unrolled_over_fused']:.2f}\n"
    )


def print_summary(training: list[dict], flow: dict, kernels: dict) -> None:
    print("Targets")
    for r in training:
        print(f"  bpttlab / plain, {r['setting']}: {r['ratio']:.3f} {verdict(r['ratio'])}")
    ratio = flow["ratio"]
    print(f"  with / without GradientFlow: {ratio:.3f} {verdict(ratio, flow['target'])}")
    faster = "native" if kernels["onednn_over_native"] > 1 else "oneDNN"
    print(f"  kernel: {faster} is faster (oneDNN / native = {kernels['onednn_over_native']:.2f})")


# -- main -----------------------------------------------------------------------------------
def quiet() -> None:
    """Silence Lightning's info logs and its warnings about loader workers and log intervals."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (< 60 s)")
    parser.add_argument("--repeats", type=int, help="timed runs per implementation, every section")
    parser.add_argument(
        "--clip-threshold", type=float, help="gradient-norm clipping threshold (default 1.0)"
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--probe-every", type=int, help="GradientFlow's every_n_steps in section 2 (default 10)"
    )
    parser.add_argument("--sweep-grids", type=int, help="section 4: only the first N grids")
    parser.add_argument(
        "--cell", choices=sorted(CELL_DEFAULTS), help="section 2's cell (default lstm)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--sections",
        default="training,gradflow,kernels,sweep",
        help="comma-separated subset of training,gradflow,kernels,sweep (default: all)",
    )
    args = parser.parse_args(argv)
    args.sections = set(args.sections.split(","))
    if args.sections - {"training", "gradflow", "kernels", "sweep"}:
        parser.error(f"unknown --sections {args.sections}")
    for name in ("repeats", "threads", "probe_every", "sweep_grids"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.cell not in (None, "lstm") and args.sections != {"gradflow"}:
        parser.error("--cell gru takes --sections gradflow (the plain loop is an LSTM's)")
    if args.clip_threshold is not None and not args.clip_threshold > 0:
        parser.error("--clip-threshold must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each table as soon as it is measured
    quiet()
    flush_subnormals(True)  # as bpttlab-train does by default, for every path measured here
    keep_freed_memory(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    if args.repeats:
        cfg = replace(cfg, repeats=args.repeats, gradflow_repeats=args.repeats)
    if args.clip_threshold:
        cfg = replace(cfg, clip=args.clip_threshold)
    if args.probe_every:
        cfg = replace(cfg, gradflow_every=args.probe_every)
    if args.cell:
        cfg = replace(cfg, cell=args.cell)
    env = environment()
    print_header(env, cfg, args.quick)
    start = time.perf_counter()

    weights = initial_weights(cfg)
    training, flow, kernels, sweep = [], {}, {}, {}
    if "training" in args.sections:
        training = [
            framework_overhead(cfg, None, cfg.batches_full, weights),
            framework_overhead(cfg, cfg.truncation, cfg.batches_truncated, weights),
        ]
        print_training(training)
    if "gradflow" in args.sections:
        flow = gradflow_overhead(cfg, weights)
        print_gradflow(flow)
    if "kernels" in args.sections:
        kernels = kernel_choice(cfg)
        print_kernels(kernels)
    if training and flow and kernels:
        print_summary(training, flow, kernels)
    if "sweep" in args.sections:
        sweep = sweep_speedup(args.quick, args.sweep_grids or len(SWEEP_GRIDS))
        print_sweep(sweep)

    elapsed = time.perf_counter() - start
    print(f"\ntotal {elapsed:.0f} s; load average at end {[round(v, 2) for v in os.getloadavg()]}")
    if args.json:
        report = {
            "environment": env | {"load_average_at_end": list(os.getloadavg())},
            "quick": args.quick,
            "config": asdict(cfg),
            "training": training,
            "gradient_flow": flow,
            "kernels": kernels,
            "sweep": sweep,
            "seconds": elapsed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
