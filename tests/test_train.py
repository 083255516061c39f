"""The Hydra entry point: every config composes and builds, bad input fails in one line before
training, and a real run writes its config, metrics, events and checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bpttlab import checks
from bpttlab.cli import command_line
from bpttlab.cli.build import build_module, build_trainer, check_config
from bpttlab.cli.run import train
from bpttlab.cli.train import CONFIG_DIR

GROUPS = ("cell", "task", "bptt", "clip", "optim", "trainer", "logger", "callbacks")
GROUPS += ("experiment", "hparams_search")
OPTIONS = [
    (g, p.stem)
    for g in GROUPS
    for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))
    if p.stem != "base"  # what a group's options share, not an option
]
SMALL = ["cell.hidden_size=8", "module.batch_size=8", "module.val_batches=1", "task.gap=10"]
CLI = [str(Path(sys.executable).parent / "bpttlab-train")]


def config(*overrides: str, run_dir: Path | None = None):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        extra = [f"run_dir={run_dir}"] if run_dir else []
        return compose(config_name="train", overrides=[*overrides, *extra])


def test_config_groups_are_all_listed():
    """Every config group in conf/ is exercised by the composition test below."""
    groups = {
        p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and not p.name.startswith("_")
    }
    assert groups - {"hydra"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_option_composes_and_builds(tmp_path, group, option):
    """Each option of each group composes with the rest and instantiates into real objects."""
    extra = ["task.gap=12"] if group == "task" else []
    cfg = config(f"{group}={option}", *extra, run_dir=tmp_path)
    check_config(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    assert module.task.seq_len > 0 and trainer.max_steps == cfg.trainer.max_steps


def test_the_issue_command_builds_what_it_says():
    """`cell=gru task=adding task.gap=200 bptt.truncation=20 clip=norm clip.threshold=1.0
    optim.lr=3e-3 seed=1 trainer.max_steps=500` configures exactly that."""
    cfg = config(
        *[
            "cell=gru",
            "task=adding",
            "task.gap=200",
            "bptt.truncation=20",
            "clip=norm",
            "clip.threshold=1.0",
        ],
        *["optim.lr=3e-3", "seed=1", "trainer.max_steps=500"],
    )
    module = build_module(cfg)
    assert module.model.kind == "gru" and module.task.seq_len == 200
    assert module.bptt.truncation == 20 and len(module.windows) == 10
    assert (module.clipping.mode, module.clipping.threshold) == ("norm", 1.0)
    assert module.configure_optimizers().defaults["lr"] == 3e-3
    assert module.data.seed == 1 and cfg.trainer.max_steps == 500


BAD = [
    ("cell=transformer", "cell"),
    ("task=sorting", "task"),
    ("clip=hard", "clip"),
    ("optim=lbfgs", "optim"),
    ("task.gap=0", "task.gap"),
    ("task=copy task.gap=-3", "task.gap"),
    ("task.gap=abc", "task.gap"),
    ("bptt.truncation=0", "bptt.truncation"),
    ("bptt.truncation=20 bptt.update_every=30", "bptt.update_every"),
    ("bptt.update_every=5", "bptt.update_every"),
    ("clip.threshold=0", "clip.threshold"),
    ("clip.threshold=-1", "clip.threshold"),
    ("clip.mode=sometimes", "clip.mode"),
    ("cell.hidden_size=0", "cell.hidden_size"),
    ("cell.num_layers=0", "cell.num_layers"),
    ("cell.kind=transformer", "cell.kind"),
    ("cell.nonlinearity=sigmoid", "cell.nonlinearity"),
    ("cell=lstm cell.nonlinearity=relu", "cell.nonlinearity"),
    ("cell.init=xavier", "cell.init"),
    ("cell=lstm cell.init=identity", "cell.init"),
    ("cell.hiden_size=64", "cell.hiden_size"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-1e-3", "optim.lr"),
    ("seed=-1", "seed"),
    ("module.batch_size=0", "module.batch_size"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("callbacks.grad_flow.every_n_steps=0", "callbacks.grad_flow.every_n_steps"),
    ("~logger", "logger"),
    ("logger=null", "logger"),
    ("task.gap=50,0", "task.gap"),
    ("cell=rnn,lstm,gur", "cell"),
]


@pytest.mark.parametrize(("line", "key"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_the_key(line, key):
    """Each typo-class mistake raises a one-line ConfigError that names the key."""
    with pytest.raises(checks.ConfigError) as error:
        command_line.check_command_line(line.split(), CONFIG_DIR, "train", check_config)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{key}=")
    assert "accepts" in message


@pytest.mark.parametrize(
    "line", ["cell=foo", "task.gap=100 bptt.truncation=10 bptt.update_every=20"]
)
def test_bad_command_line_exits_2_before_any_run(tmp_path, line):
    """The real console script prints one line to stderr, exits 2, and creates no run dir."""
    result = subprocess.run([*CLI, *line.split()], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpttlab-train: error: ")
    assert not (tmp_path / "outputs").exists()


def test_same_config_and_seed_give_the_same_numbers(tmp_path):
    """Two runs of one config and seed on CPU end with identical metrics and parameters."""
    overrides = [
        *SMALL,
        "task=copy",
        "trainer.max_steps=12",
        "trainer.val_check_interval=6",
        "callbacks.grad_flow.every_n_steps=5",
    ]
    runs = []
    for name in ("a", "b"):
        metrics = train(config(*overrides, run_dir=tmp_path / name))
        state = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)[
            "state_dict"
        ]
        runs.append((metrics, state))
    (m1, s1), (m2, s2) = runs
    assert {k: v for k, v in m1.items() if k != "wall_seconds"} == {
        k: v for k, v in m2.items() if k != "wall_seconds"
    }
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_divergence_is_recorded_not_raised(tmp_path):
    """A ReLU RNN with a huge SGD step blows up: the run ends cleanly with diverged: true, the
    step, null losses, and event files that TensorBoard can read."""
    overrides = [
        *SMALL,
        "cell=rnn",
        "cell.nonlinearity=relu",
        "optim=sgd",
        "optim.lr=1e6",
        "clip=none",
    ]
    metrics = train(config(*overrides, "trainer.max_steps=50", run_dir=tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    assert metrics["diverged"] is True and metrics["diverged_at_step"] is not None
    assert metrics["final_val_loss"] is None and metrics["steps"] < 50
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "train/diverged" in events.Tags()["scalars"]


def test_training_stops_once_solved(tmp_path):
    """An easy task (delayed recall over 2 steps) is solved, recorded, and ends the run early."""
    overrides = [
        *SMALL,
        "task=delayed_recall",
        "task.gap=2",
        "trainer.max_steps=400",
        "trainer.val_check_interval=10",
    ]
    metrics = train(config(*overrides, run_dir=tmp_path))
    assert metrics["solved"] is True and metrics["val_accuracy"] >= 0.99
    assert metrics["solved_at_step"] == metrics["steps"] < 400


@pytest.mark.slow
def test_end_to_end_console_script(tmp_path):
    """`bpttlab-train` in a fresh directory: a run dir under outputs/ with the resolved config,
    metrics.json, TensorBoard events, gradient profiles and the last checkpoint; it prints the
    run dir and the tensorboard command."""
    args = [
        *SMALL,
        "task=copy",
        "bptt.truncation=5",
        "trainer.max_steps=20",
        "trainer.val_check_interval=3",
    ]
    result = subprocess.run(
        [*CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").glob("*/*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = {"final_val_loss", "baseline_loss", "normalized_loss", "val_accuracy", "solved"}
    expected |= {"solved_at_step", "diverged", "steps", "wall_seconds"}
    assert expected <= set(metrics)
    assert metrics["steps"] == 24  # 6 windows of 5 steps per batch; a batch is never cut short
    assert metrics["baseline_loss"] == pytest.approx(10 * 2.0794415416798357 / 30)
    assert OmegaConf.load(run_dir / "config.yaml").task.gap == 10
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [18, 24]  # x-axis: optimiser steps
    assert list((run_dir / "grad_flow").glob("step_*.npz"))
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert f"run dir: {run_dir}" in result.stdout
    assert f"tensorboard --logdir {run_dir}" in result.stdout


def test_python_dash_m_is_the_console_script(tmp_path):
    """`python -m bpttlab.cli.train` is the same entry (checked on its one-line error path)."""
    result = subprocess.run(
        [sys.executable, "-m", "bpttlab.cli.train", "cell=foo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "cell='foo' is invalid" in result.stderr


def test_progress_bar_can_be_switched_off(tmp_path):
    """trainer.enable_progress_bar=false drops the progress-bar callback instead of failing."""
    trainer = build_trainer(config("trainer.enable_progress_bar=false", run_dir=tmp_path))
    assert trainer.progress_bar_callback is None


@pytest.mark.slow
def test_an_installed_wheel_finds_every_config(tmp_path):
    """A wheel built from this checkout carries every yaml of conf/ and the C steps, and an
    install of it (not the checkout) composes the configs (its one-line error lists the cells)
    and builds its compiled steps."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "wheel"),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("bpttlab-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    shipped = {
        p.relative_to(site / "bpttlab" / "conf")
        for p in (site / "bpttlab" / "conf").rglob("*.yaml")
    }
    assert shipped == {p.relative_to(root / "conf") for p in (root / "conf").rglob("*.yaml")}
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "bpttlab.cli.train", "cell=foo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    cells = sorted(p.stem for p in (root / "conf" / "cell").glob("*.yaml") if p.stem != "base")
    assert result.returncode == 2 and f"cell accepts one of {', '.join(cells)}" in result.stderr
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "from bpttlab.cells.kernels import compiled as c; print(c.build('lstm_step'))",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert str(tmp_path / "cache" / "bpttlab" / "lstm_step-") in built.stdout, built.stderr
    assert (
        str(site)
        in subprocess.run(
            [sys.executable, "-c", "import bpttlab; print(bpttlab.__file__)"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )


@pytest.mark.slow
@pytest.mark.parametrize(("flush", "keep", "compiled"), [(True, False, True), (False, True, False)])
def test_process_settings_take_effect_in_the_training_process(tmp_path, flush, keep, compiled):
    """A real run applies flush_subnormals, keep_freed_memory and compiled_kernels, each on its
    own, and observes them (subnormals on its kernel threads, freed memory in glibc's
    allocator, the compiled library loaded)."""
    overrides = [*SMALL, "trainer.max_steps=2", "~callbacks.grad_flow"]
    overrides += [f"flush_subnormals={flush}", f"keep_freed_memory={keep}"]
    overrides += [f"compiled_kernels={compiled}", "cell=gru"]  # gru: bpttlab's kernel
    result = subprocess.run(
        [*CLI, *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["subnormals_flushed"] is flush
    assert metrics["freed_memory_kept"] is keep
    assert metrics["compiled_kernels"] is compiled
