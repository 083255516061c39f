"""Benchmark bpttlab's training path on CPU: framework overhead and GradientFlow overhead.

    python scripts/bench_training.py [--quick] [--repeats N] [--threads N] [--json PATH]
        [--write-docs PATH] [--sections training,gradflow] [--clip-threshold T]
        [--probe-every N] [--cell lstm|gru]

Framework overhead (section ``training``). bpttlab's real training path (a ``lightning.Trainer``
fitting a ``SequenceModule``; manual optimisation, batches drawn on the device from the global
step) against a hand-written PyTorch loop doing the same work (scripts/bench_paths.py): the
same RecurrentNet weights, batches, BPTT windows, loss, clipping (global norm, threshold 1.0),
optimiser (Adam, lr 3e-3) and PyTorch's fastest LSTM kernel on this CPU, oneDNN's. LSTM hidden
128, batch 64, adding task T = 200, full BPTT and truncation 20. Before timing, both paths
train 3 batches from the same weights and must agree (``torch.allclose``, atol 1e-6).
Throughput is sequence-steps per second, batch_size * seq_len * batches / seconds, where the
seconds of a Lightning run are those of its training loop (``on_train_start`` to
``on_train_end``), the one-off setup and teardown of ``Trainer.fit`` reported apart as "fit()
fixed cost". Target: bpttlab / plain >= 0.95.

GradientFlow overhead (section ``gradflow``). The same bpttlab run (full BPTT) with the
GradientFlow callback probing every 10 steps against the run without it, over 150 batches per
run, i.e. 15 probes. Target: with / without >= 0.95; with ``--probe-every 1`` the stretch, a
cost of at most 1.3x. Also the cost of one probe from the per-batch times (median probed batch
minus median unprobed batch, of the same runs or, when every step is probed, of the runs without
GradientFlow) and the throughput ratio those per-batch times imply in steady state.

Runs alternate (A B A B ...), medians of the repeats, warm-up excluded (scripts/bench_protocol.py).
``--cell gru`` runs the GradientFlow section with bpttlab's GRU kernel; ``--clip-threshold``
changes the clipping threshold (one no gradient reaches makes clipping an exact no-op).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from bench_frame import run
from bench_paths import (
    CELL_DEFAULTS,
    LOG_EVERY,
    LR,
    Config,
    Weights,
    check_same_training,
    config_from,
    initial_weights,
    run_bpttlab,
    run_plain,
    setting_name,
)
from bench_protocol import alternate, median, progress, refuse, verdict
from bench_report import Section

TARGET = 0.95  # framework overhead
PROBE_TARGET = 0.95  # GradientFlow every 10 steps
PROBE_EVERY_STEP_TARGET = 1 / 1.3  # the stretch: every step probed costs at most 1.3x
SECTIONS = ("training", "gradflow")


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clip-threshold", type=float, help="gradient-norm clipping threshold (default 1.0)"
    )
    parser.add_argument("--probe-every", type=int, help="GradientFlow's every_n_steps (default 10)")
    parser.add_argument("--cell", choices=sorted(CELL_DEFAULTS), help="gradflow's cell (lstm)")


def check_options(args: argparse.Namespace, sections: set[str]) -> None:
    if args.probe_every is not None and args.probe_every < 1:
        refuse("--probe-every must be at least 1")
    if args.cell not in (None, "lstm") and sections != {"gradflow"}:
        refuse("--cell gru takes --sections gradflow (the plain loop is an LSTM's)")
    if args.clip_threshold is not None and not args.clip_threshold > 0:
        refuse("--clip-threshold must be positive")


def framework_overhead(cfg: Config, truncation: int | None, batches: int, weights: Weights) -> dict:
    """bpttlab's Lightning path against the plain loop, alternating; medians and their ratio."""
    name = setting_name(truncation)
    progress(f"framework overhead, {name}: equivalence check")
    difference = check_same_training(cfg, truncation, weights)
    progress(f"framework overhead, {name}: warm-up, then {cfg.repeats} x 2 runs")

    def runs(count: int) -> dict:
        return {
            "bpttlab": lambda: run_bpttlab(cfg, truncation, weights, count),
            "plain": lambda: run_plain(cfg, truncation, weights, count),
        }

    alternate(runs(cfg.warmup_batches), repeats=1)
    results = alternate(runs(batches), cfg.repeats)
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


def gradflow_overhead(cfg: Config, weights: Weights) -> dict:
    """The full-BPTT bpttlab run with and without GradientFlow, alternating."""
    batches = cfg.gradflow_batches
    progress(f"GradientFlow overhead: warm-up, then {cfg.gradflow_repeats} x 2 runs")

    def runs(count: int) -> dict:
        return {
            "with": lambda: run_bpttlab(cfg, None, weights, count, gradflow=True),
            "without": lambda: run_bpttlab(cfg, None, weights, count),
        }

    alternate(runs(cfg.warmup_batches), repeats=1)
    results = alternate(runs(batches), cfg.gradflow_repeats)
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


def run_setting(cfg: Config) -> str:
    return (
        f"{cfg.cell.upper()} hidden {cfg.hidden}, embedding {cfg.embedding}, batch {cfg.batch}, "
        f"adding T={cfg.seq_len}, clip norm {cfg.clip:g}, Adam lr {LR}, TensorBoard logger "
        f"with log_every_n_steps={LOG_EVERY}"
    )


def training_section(results: list[dict], cfg: Config) -> Section:
    rows = [
        [
            r["setting"],
            str(r["batches_per_run"]),
            f"{r['check_max_abs_param_diff']:.1e}",
            f"{r['plain_median_s']:.3f}",
            f"{r['bpttlab_median_s']:.3f}",
            f"{r['plain_seq_steps_per_s']:,.0f}",
            f"{r['bpttlab_seq_steps_per_s']:,.0f}",
            f"{r['fit_fixed_cost_ms']:.0f}",
            f"{r['ratio']:.3f}",
            verdict(r["ratio"], r["target"]),
        ]
        for r in results
    ]
    headers = ["setting", "batches", "check |diff|", "plain s", "bpttlab s"]
    headers += ["plain seq-steps/s", "bpttlab seq-steps/s", "fit() fixed ms", "ratio", "target"]
    fastest = ", ".join(f"{r['setting']} {r['ratio_of_fastest']:.3f}" for r in results)
    return Section(
        "training",
        "Framework overhead: bpttlab (Lightning Trainer + SequenceModule) vs plain PyTorch",
        headers,
        rows,
        notes=[
            f"ratio = bpttlab / plain throughput, ratio of the medians (of the fastest runs: "
            f"{fastest}); bpttlab seconds are its training loop; fit() fixed ms = Trainer.fit "
            "setup + teardown outside the loop, paid once per run.",
        ],
        counts=(
            f"Medians of {cfg.repeats} runs per path, alternating, after one warm-up run each "
            f"({cfg.warmup_batches} batches); {run_setting(cfg)}"
        ),
    )


def probe_list(steps: list[int]) -> str:
    if len(steps) <= 16:
        return f"probes at steps {steps}"
    return f"{len(steps)} probes at steps {steps[0]}, {steps[1]}, ..., {steps[-1]}"


def gradflow_section(r: dict, cfg: Config) -> Section:
    rows = [
        ["without GradientFlow", f"{r['without_median_s']:.3f}"],
        ["with GradientFlow", f"{r['with_median_s']:.3f}"],
    ]
    rows[0] += [f"{r['without_seq_steps_per_s']:,.0f}", "", ""]
    rows[1] += [f"{r['with_seq_steps_per_s']:,.0f}", f"{r['ratio']:.3f}"]
    rows[1].append(verdict(r["ratio"], r["target"]))
    return Section(
        "gradflow",
        f"GradientFlow overhead: every {r['every_n_steps']} steps, {r['batches_per_run']} "
        f"batches per run, {probe_list(r['probe_steps'])} ({r['cell'].upper()}, full BPTT)",
        ["run", "median s", "seq-steps/s", "ratio", "target"],
        rows,
        notes=[
            f"Per-probe cost: {r['per_probe_ms']:.0f} ms = median probed batch "
            f"{r['probed_batch_ms']:.0f} ms - median unprobed batch "
            f"{r['unprobed_batch_ms']:.0f} ms (from whole runs, (with - without) / probes: "
            f"{r['per_probe_ms_from_runs']:.0f} ms);",
            f"steady-state ratio implied by the per-batch times at every {r['every_n_steps']} "
            f"steps: {r['implied_steady_ratio']:.3f}.",
        ],
        counts=(
            f"Medians of {cfg.gradflow_repeats} runs each, alternating, after one warm-up run each "
            f"({cfg.warmup_batches} batches); {run_setting(cfg)}"
        ),
    )


def measure(args: argparse.Namespace, sections: set[str]) -> tuple[dict, list[Section]]:
    """Run the sections asked for, printing each table as soon as it is measured."""
    cfg = config_from(args)
    weights = initial_weights(cfg)
    results: dict = {"config": asdict(cfg)}
    tables = []
    if "training" in sections:
        results["training"] = [
            framework_overhead(cfg, None, cfg.batches_full, weights),
            framework_overhead(cfg, cfg.truncation, cfg.batches_truncated, weights),
        ]
        tables.append(training_section(results["training"], cfg))
        print(tables[-1].text())
    if "gradflow" in sections:
        results["gradient_flow"] = gradflow_overhead(cfg, weights)
        tables.append(gradflow_section(results["gradient_flow"], cfg))
        print(tables[-1].text())
    return results, tables


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run(__doc__, SECTIONS, measure, argv, add_options, check_options)


if __name__ == "__main__":
    main()
