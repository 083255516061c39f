"""bpttlab-report on a synthetic sweep (metrics.json and config.yaml files written into a tmp
dir, numbers checked by hand) and on a real 2 x 3 (config x seed) sweep through the CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bpttlab.analysis import figures as report_figures
from bpttlab.analysis import stats
from bpttlab.analysis.compare import compare, parse
from bpttlab.analysis.figures import median_band, seed_matrix
from bpttlab.analysis.report import main, report, summary_table
from bpttlab.analysis.sweep import group_runs, read_runs, varying
from bpttlab.runs.rundir import RunLock

BIN = Path(sys.executable).parent
TINY_RUNS = [
    "module.batch_size=4",
    "module.val_batches=1",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "callbacks.grad_flow.every_n_steps=2",
    "callbacks.grad_flow.figures_every_n_steps=1000",
    "callbacks.progress_bar=null",
    "callbacks.checkpoint=null",
]
"""Runs of 4 steps, probed at steps 0 and 2, validated at 2 and 4, without progress bar or
checkpoints: sweeps small enough for a test."""


def tiny_sweep(sweep: Path, *overrides: str) -> None:
    """``bpttlab-train -m`` with ``overrides`` and ``TINY_RUNS`` into ``sweep``, from its parent."""
    train = [str(BIN / "bpttlab-train"), "-m", *overrides, *TINY_RUNS, f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(train, cwd=sweep.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def write_run(root: Path, name: str, metrics: dict | str, seed: int, **settings) -> Path:
    """A run dir as bpttlab-train leaves it: config.yaml (with its own paths) and metrics.json."""
    run = root / name
    (run / "grad_flow").mkdir(parents=True)
    config = {
        "seed": seed,
        "run_dir": str(run),
        "cell": {"kind": "lstm", "hidden_size": 64, "init": settings.get("init", "default")},
        "task": {"_target_": "bpttlab.tasks.AddingTask", "gap": settings.get("gap", 50)},
        "trainer": {"max_steps": settings.get("max_steps", 1500)},
        "callbacks": {"grad_flow": {"every_n_steps": 500, "save_dir": str(run / "grad_flow")}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    text = metrics if isinstance(metrics, str) else json.dumps(metrics)
    (run / "metrics.json").write_text(text)
    return run


def solved(step: int, loss: float, **extra) -> dict:
    return (
        {"status": "completed", "solved": True, "solved_at_step": step}
        | {
            "normalized_loss": loss,
            "diverged": False,
        }
        | extra
    )


def unsolved(loss: float | None, **extra) -> dict:
    base = {"status": "completed", "solved": False, "solved_at_step": None, "diverged": False}
    return base | {"normalized_loss": loss} | extra


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two groups (init default, chrono) at gap 50, with a diverged run written before metrics
    had a status, a failed and an interrupted run, and a corrupt metrics.json."""
    root = tmp_path / "sweep"
    write_run(root, "0_default_s0", solved(500, 0.01), 0)
    write_run(root, "1_default_s1", solved(800, 0.02), 1)
    write_run(root, "2_default_s2", solved(650, 0.03), 2)
    old = {"solved": False, "solved_at_step": None, "normalized_loss": None, "diverged": True}
    write_run(root, "3_default_s3", old, 3)  # no status: reads "diverged"
    write_run(root, "4_chrono_s0", unsolved(0.92), 0, init="chrono")
    write_run(root, "5_chrono_s1", unsolved(0.94), 1, init="chrono")
    write_run(root, "6_chrono_s2", unsolved(0.96), 2, init="chrono")
    failed = unsolved(None, status="failed", error="RuntimeError: out of\nmemory")
    write_run(root, "7_chrono_s3", failed, 3, init="chrono")
    write_run(root, "8_chrono_s4", unsolved(0.10, status="interrupted"), 4, init="chrono")
    write_run(root, "9_chrono_s5", '{"solved": tru', 5, init="chrono")
    return root


def test_groups_statuses_and_numbers_by_hand(sweep, capsys):
    runs = read_runs(sweep)
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "9_chrono_s5" in warning[0] and "warning" in warning[0]
    assert [r.status for r in runs] == [
        *["completed"] * 3,
        "diverged",
        *["completed"] * 3,
        "failed",
        "interrupted",
        "invalid",  # listed with why, never counted
    ]
    assert "unreadable metrics.json" in runs[-1].problem and runs[-1].metrics == {}
    groups = group_runs(runs)
    assert [len(g.runs) for g in groups] == [4, 6]  # seeds and paths do not split a group
    assert varying(groups) == ["init"]
    default, chrono = (g.summary() for g in groups)
    low, high = stats.wilson(3, 4)
    assert default | {"solve_rate_low": low, "solve_rate_high": high} == default
    assert (default["n"], default["solved"], default["seeds"]) == (4, "3/4", "0 1 2 3")
    assert (default["median_step"], default["min_step"], default["max_step"]) == (650, 500, 800)
    assert default["loss_mean"] == pytest.approx(0.02)  # the diverged run has no loss
    assert default["loss_ci95"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3), abs=1e-6)
    assert default["summary"] == "3/4 solved, median step 650 [500-800], 1 diverged"
    assert (chrono["n"], chrono["failed"], chrono["interrupted"], chrono["diverged"]) == (
        3,
        1,
        1,
        0,
    )
    assert chrono["loss_mean"] == pytest.approx(0.94)  # never the interrupted run's 0.10
    assert chrono["invalid"] == 1
    assert chrono["summary"] == "0/3, 0.94 ± 0.05 (left out: 1 failed, 1 interrupted, 1 invalid)"


def test_report_files_carry_the_group_columns(sweep, tmp_path):
    out = report(sweep, tmp_path / "out")
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["init"] for r in rows] == ["default", "chrono"]
    assert rows[0]["summary"] == "3/4 solved, median step 650 [500-800], 1 diverged"
    assert {"n", "solved", "solve_rate_low", "median_step", "loss_mean", "loss_ci95"} <= set(
        rows[0]
    )
    assert (rows[1]["failed"], rows[1]["interrupted"]) == ("1", "1")
    with open(out / "runs.csv") as f:
        statuses = {r["run"]: r["status"] for r in csv.DictReader(f)}
    assert statuses["3_default_s3"] == "diverged" and statuses["8_chrono_s4"] == "interrupted"
    markdown = (out / "report.md").read_text()
    assert "10 runs in 2 groups" in markdown and "1 invalid" in markdown
    assert f"- {sweep / '9_chrono_s5'}: unreadable metrics.json" in markdown
    assert "7_chrono_s3: RuntimeError: out of memory" in markdown
    for figure in ("results.png", "curves.png", "profiles.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_setting_outside_the_hyperparameters_splits_groups_and_names_itself(tmp_path):
    root = tmp_path / "sweep"
    for seed in range(2):
        write_run(root, f"short_{seed}", unsolved(0.9), seed, max_steps=100)
        write_run(root, f"long_{seed}", unsolved(0.5), seed, max_steps=1500)
    groups = group_runs(read_runs(root))
    assert [len(g.runs) for g in groups] == [2, 2]
    assert varying(groups) == ["trainer.max_steps"]


def test_the_progress_bar_does_not_split_a_group(tmp_path):
    """Runs that differ in seed and in how they show progress are one group of three."""
    root = tmp_path / "sweep"
    bars = ["lightning.pytorch.callbacks.TQDMProgressBar", "bpttlab.cli.progress.ProgressBar", None]
    for seed, bar in enumerate(bars):
        run = write_run(root, f"run_{seed}", unsolved(0.9), seed)
        config = yaml.safe_load((run / "config.yaml").read_text())
        if bar is not None:
            config["callbacks"]["progress_bar"] = {"_target_": bar, "refresh_rate": 10}
        config["trainer"]["enable_progress_bar"] = bar is not None
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    groups = group_runs(read_runs(root))
    assert [len(g.runs) for g in groups] == [3]


def test_how_fast_a_run_went_does_not_split_a_group(tmp_path):
    """Runs that differ in seed, in the process settings that only change their speed, or that
    predate those settings, are one group of three."""
    root = tmp_path / "sweep"
    for seed, setting in enumerate([True, False, None]):
        run = write_run(root, f"run_{seed}", unsolved(0.9), seed)
        config = yaml.safe_load((run / "config.yaml").read_text())
        for key in ("keep_freed_memory", "compiled_kernels"):
            if setting is None:
                config.pop(key, None)
            else:
                config[key] = setting
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    groups = group_runs(read_runs(root))
    assert [len(g.runs) for g in groups] == [3]


def test_compare_pairs_by_seed_and_says_when_seeds_cannot_tell(sweep):
    (comparison,) = compare(read_runs(sweep), "cell.init", "default", "chrono")
    assert comparison.seeds == [0, 1, 2]  # seed 3: diverged against failed, no pair
    assert comparison.loss.deltas == pytest.approx([0.91, 0.92, 0.93])
    assert comparison.steps.deltas == []  # chrono never solved
    sentence = comparison.loss.sentence("default", "chrono")
    assert "sign test p = 0.25" in sentence and "Wilcoxon signed-rank p = 0.25" in sentence
    assert "cannot tell" in sentence and "needs 6" in sentence
    assert (comparison.solved_a, comparison.solved_b) == ("3/3 solved", "0/3 solved")


def test_compare_six_seeds_per_gap(tmp_path):
    """Six seeds, chrono faster on every one by 100..600 steps at each of two gaps: one
    comparison per gap, Wilcoxon p = 2/64, sign test p = 2/64."""
    root = tmp_path / "sweep"
    for gap in (50, 100):
        for seed in range(6):
            write_run(root, f"g{gap:03d}_d{seed}", solved(1000, 0.01), seed, gap=gap)
            step = 1000 - 100 * (seed + 1)
            write_run(root, f"g{gap:03d}_c{seed}", solved(step, 0.01), seed, gap=gap, init="chrono")
    comparisons = compare(read_runs(root), "cell.init", "default", "chrono")
    assert [c.context for c in comparisons] == ["gap=50", "gap=100"]
    steps = comparisons[0].steps
    assert steps.deltas == [-100, -200, -300, -400, -500, -600]
    sentence = steps.sentence("default", "chrono")
    assert "sign test p = 0.0312" in sentence and "Wilcoxon signed-rank p = 0.0312" in sentence
    assert "significant at 0.05" in sentence
    assert "cannot tell" in comparisons[0].loss.sentence("default", "chrono")  # all ties


def test_compare_errors(sweep, capsys):
    with pytest.raises(ValueError, match="KEY=A,B"):
        parse("cell.init=default")
    with pytest.raises(ValueError, match="no run has the config key"):
        compare(read_runs(sweep), "cell.nope", "a", "b")
    with pytest.raises(ValueError, match="no seed has runs with both"):
        compare(read_runs(sweep), "cell.init", "default", "orthogonal")
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--compare", "cell.init=default,orthogonal"])
    assert exit_info.value.code == 2
    assert "no seed has runs with both" in capsys.readouterr().err


def test_seed_curves_hold_a_solved_runs_last_value():
    """Seed 0 stopped solved at step 2 (holds 0.1), seed 1 ran to step 4; seed 2 diverged
    after step 0 (no hold): the median and quartiles at each step over what is there."""
    curves = [
        (np.array([0, 2]), np.array([1.0, 0.1]), True),
        (np.array([0, 2, 4]), np.array([1.0, 0.5, 0.3]), False),
        (np.array([0]), np.array([2.0]), False),
    ]
    steps, matrix = seed_matrix(curves)
    assert list(steps) == [0, 2, 4]
    np.testing.assert_array_equal(matrix[0], [1.0, 0.1, 0.1])
    assert np.isnan(matrix[2, 1:]).all()
    kept, median, low, high = median_band(matrix)
    assert kept.all()
    np.testing.assert_allclose(median, [1.0, 0.3, 0.2])
    np.testing.assert_allclose(low, [1.0, 0.2, 0.15])
    np.testing.assert_allclose(high, [1.5, 0.4, 0.25])


@pytest.mark.slow
def test_real_seed_sweep_through_the_cli(tmp_path):
    """bpttlab-train -m cell.hidden_size=4,6 seed='range(3)': six runs (the entry point's
    pre-check accepts Hydra's range), which bpttlab-report groups into two groups of three
    seeds, with figures of their spread and a paired comparison."""
    sweep = tmp_path / "sweep"
    tiny_sweep(
        sweep, "cell=gru", "cell.hidden_size=4,6", "seed=range(3)", "task=copy", "task.gap=5"
    )
    assert len(list(sweep.glob("*/metrics.json"))) == 6
    result = subprocess.run(
        [str(BIN / "bpttlab-report"), str(sweep), "--compare", "cell.hidden_size=4,6"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cannot tell" in result.stdout  # three pairs never reach p < 0.05
    with open(sweep / "report" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["hidden_size"], r["n"], r["seeds"]) for r in rows] == [
        ("4", "3", "0 1 2"),
        ("6", "3", "0 1 2"),
    ]
    assert all(r["summary"].startswith("0/3, ") for r in rows)  # 4 steps solve nothing
    runs = read_runs(sweep)
    assert {r.status for r in runs} <= {"completed"}
    profiles = report_figures.profiles_figure(group_runs(runs))
    labels = profiles.axes[0].get_legend_handles_labels()[1]
    for size in (4, 6):  # the median over three seeds at init and at the last probe
        assert f"hidden_size={size}, step 0 (n=3)" in labels
        assert f"hidden_size={size}, step 2 (n=3)" in labels
    assert {"symbols", "marker", "recall"} <= set(labels)  # the task's landmarks shaded
    curves = report_figures.curves_figure(group_runs(runs))
    assert len(curves.axes[0].collections) == 2  # a band per group
    for figure in ("results.png", "curves.png", "profiles.png"):
        assert (sweep / "report" / figure).stat().st_size > 10_000


def test_summary_grid_by_task_and_gap(tmp_path):
    """A row per init, a column per gap, each cell the group's summary."""
    root = tmp_path / "sweep"
    for gap in (50, 100):
        for seed in range(2):
            write_run(root, f"g{gap:03d}_d{seed}", unsolved(0.9), seed, gap=gap)
            write_run(
                root,
                f"g{gap:03d}_c{seed}",
                solved(300 + 100 * seed, 0.01),
                seed,
                gap=gap,
                init="chrono",
            )
    header, rows = summary_table(group_runs(read_runs(root)))
    assert header == ["init", "50", "100"]  # in directory order
    assert rows == [
        [
            "init=chrono",
            "2/2 solved, median step 350 [300-400]",
            "2/2 solved, median step 350 [300-400]",
        ],
        ["init=default", "0/2, 0.90 ± 0.00", "0/2, 0.90 ± 0.00"],
    ]
    markdown = (report(root, tmp_path / "out") / "report.md").read_text()
    assert "| init=chrono | 2/2 solved, median step 350 [300-400] |" in markdown


def test_report_imports_without_lightning():
    code = "import sys, bpttlab.analysis.report; assert 'lightning' not in sys.modules, 'lightning loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_compare_reads_numbers_as_numbers_and_orders_seeds(tmp_path):
    """lr 1e-3 on the command line matches 0.001 in the config; seed 10 comes after seed 2."""
    root = tmp_path / "sweep"
    for seed in (2, 10):
        for lr, loss in ((0.001, 0.5), (0.003, 0.4)):
            run = write_run(root, f"lr{lr}_s{seed}", unsolved(loss), seed)
            config = yaml.safe_load((run / "config.yaml").read_text())
            (run / "config.yaml").write_text(yaml.safe_dump(config | {"optim": {"lr": lr}}))
    (comparison,) = compare(read_runs(root), "optim.lr", "1e-3", "3e-3")
    assert comparison.seeds == [2, 10]
    assert comparison.loss.deltas == pytest.approx([-0.1, -0.1])


def test_runs_are_read_in_natural_order_whatever_their_dir_names(tmp_path):
    """Hydra's numbered job dirs (0_..., 10_...) beside hand-named ones (r2, a run dir given
    with hydra.run.dir): run 10 comes after run 2, and no two names fail to compare."""
    names = ["10_lstm", "r2", "2_lstm", "1_lstm", "seed 3", "0"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text('{"status": "completed"}')
    order = [run.path.name for run in read_runs(tmp_path)]
    assert order == ["0", "1_lstm", "2_lstm", "10_lstm", "r2", "seed 3"]


def test_a_resumed_run_stays_in_the_group_of_its_seeds(tmp_path):
    """resume=true in a run's saved config is how it ran, not what it ran: one group of three."""
    root = tmp_path / "sweep"
    for seed in range(3):
        run = write_run(root, f"run_{seed}", unsolved(0.9), seed)
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump(config | {"resume": seed == 1}))
    (group,) = group_runs(read_runs(root))
    assert (group.summary()["n"], group.summary()["seeds"]) == (3, "0 1 2")


def test_a_seed_run_three_times_is_counted_once_and_the_others_named(tmp_path):
    """Three runs of seed 0 (the first failed) and one of seed 1: n = 2, seeds "0 1", the first
    finished run of seed 0 counted, the other two listed with their paths, never counted."""
    root = tmp_path / "sweep"
    write_run(root, "0_a", unsolved(None, status="failed", error="RuntimeError: boom"), 0)
    write_run(root, "1_a", solved(500, 0.01), 0)
    write_run(root, "2_a", solved(900, 0.02), 0)
    write_run(root, "3_a", unsolved(0.5), 1)
    (group,) = group_runs(read_runs(root))
    row = group.summary()
    assert (row["n"], row["seeds"], row["solved"]) == (2, "0 1", "1/2")
    assert (row["failed"], row["duplicates"]) == (0, 2)
    assert (row["median_step"], row["loss_mean"]) == (500, pytest.approx(0.255))
    assert (row["solve_rate_low"], row["solve_rate_high"]) == pytest.approx(stats.wilson(1, 2))
    assert row["summary"] == "1/2 solved, step 500 (left out: 2 duplicates)"
    markdown = (report(root, tmp_path / "out") / "report.md").read_text()
    assert "2 duplicates of a seed" in markdown
    for name in ("0_a", "2_a"):
        assert f"- {root / name}: seed 0 again, counted in {root / '1_a'}" in markdown


def test_hand_edited_nonsense_in_metrics_json_is_invalid_and_named(tmp_path, capsys):
    """Values a run never writes make its record invalid: listed with its path and the key,
    left out of every number."""
    root = tmp_path / "sweep"
    write_run(root, "0_ok", solved(500, 0.01), 0)
    write_run(root, "1_yes", solved(500, 0.01) | {"solved": "yes"}, 1)
    write_run(root, "2_neg", solved(-5, 0.01), 2)
    write_run(root, "3_weird", solved(500, 0.01) | {"status": "weird"}, 3)
    write_run(root, "4_bool", solved(500, 0.01) | {"steps": True, "normalized_loss": -1}, 4)
    runs = read_runs(root)
    assert [r.status for r in runs] == ["completed", *["invalid"] * 4]
    assert len(capsys.readouterr().err.strip().splitlines()) == 4
    (group,) = group_runs(runs)
    assert (group.summary()["n"], group.summary()["invalid"]) == (1, 4)
    markdown = (report(root, tmp_path / "out") / "report.md").read_text()
    assert "5 runs in 1 groups: 1 completed (1 solved)" in markdown and "4 invalid" in markdown
    assert f'- {root / "1_yes"}: invalid metrics.json: solved = "yes"' in markdown
    assert f"- {root / '2_neg'}: invalid metrics.json: solved_at_step = -5" in markdown
    assert f'- {root / "3_weird"}: invalid metrics.json: status = "weird"' in markdown
    assert "steps = true" in markdown and "normalized_loss = -1" in markdown


def test_a_run_that_left_no_outcome_is_failed_unless_it_is_alive(tmp_path):
    """A run dir with config.yaml, or only Hydra's record, and no metrics.json: failed (killed
    or crashed), in the group of its seeds; while a live process holds its lock: running."""
    root = tmp_path / "sweep"
    write_run(root, "0_done", unsolved(0.9), 0)
    (write_run(root, "1_killed", "", 1) / "metrics.json").unlink()
    hydra_only = write_run(root, "2_killed_early", "", 2)
    (hydra_only / "metrics.json").unlink()
    (hydra_only / ".hydra").mkdir()
    config = yaml.safe_load((hydra_only / "config.yaml").read_text())
    config["run_dir"] = "${hydra:runtime.output_dir}"  # as Hydra records it
    config["callbacks"]["grad_flow"]["save_dir"] = "${run_dir}/grad_flow"
    (hydra_only / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra_only / "config.yaml").unlink()
    alive = write_run(root, "3_alive", "", 3)
    (alive / "metrics.json").unlink()
    with RunLock(alive):
        runs = read_runs(root)
        markdown = (report(root, tmp_path / "out") / "report.md").read_text()
    assert [r.status for r in runs] == ["completed", "failed", "failed", "running"]
    assert runs[1].metrics["error"].startswith("no metrics.json: the run ended without")
    (group,) = group_runs(runs)
    assert (group.summary()["failed"], group.summary()["running"]) == (2, 1)
    assert runs[2].config["callbacks.grad_flow.save_dir"] == f"{hydra_only}/grad_flow"
    summary = "4 runs in 1 groups: 1 completed (0 solved), 0 diverged, 0 interrupted, 2 failed, "
    assert summary + "1 running" in markdown
    assert f"- {root / '1_killed'}: no metrics.json" in markdown
