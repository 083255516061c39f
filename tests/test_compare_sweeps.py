"""``bpttlab-report --compare`` on a real sweep (``bpttlab-train -m cell=rnn,gru
task=copy,adding bptt.truncation=null,3``), written as the sweep was written: a config group
(``cell=rnn,gru``, ``task=copy,adding``) or a key (``bptt.truncation=null,3``,
``cell.kind=rnn,gru``). Keys that follow from a group's option (a GRU has no nonlinearity, a
copy task a recall_loss_only) do not break pairing; when nothing pairs, the message names the
keys that differ."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bpttlab.analysis.compare import compare
from bpttlab.analysis.sweep import read_runs

BIN = Path(sys.executable).parent
SWEEP = ["-m", "cell=rnn,gru", "task=copy,adding", "bptt.truncation=null,3", "seed=0"]
SMALL = ["task.gap=5", "cell.hidden_size=4", "module.batch_size=4", "module.val_batches=1"]
SMALL += ["trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.checkpoint=null"]
SMALL += ["callbacks.progress_bar=null", "callbacks.grad_flow.figures_every_n_steps=1000"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    sweep_dir = root / "sweep"
    done = subprocess.run(
        [str(BIN / "bpttlab-train"), *SWEEP, *SMALL, f"hydra.sweep.dir={sweep_dir}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 8
    return sweep_dir


def report(sweep: Path, spec: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "bpttlab-report"), str(sweep), "--compare", spec],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("spec", "contexts"),
    [
        ("cell=rnn,gru", [("task=copy", "truncation=full"), ("task=copy", "truncation=3")]),
        ("task=copy,adding", [("cell=rnn", "truncation=full"), ("cell=rnn", "truncation=3")]),
    ],
)
def test_compare_a_group_as_the_sweep_wrote_it(sweep, spec, contexts):
    done = report(sweep, spec)
    assert done.returncode == 0, done.stderr[-3000:]
    key = spec.split("=")[0]
    text = (sweep / "report" / f"compare_{key}.md").read_text()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert len(headings) == 4, headings
    for heading, shown in zip(headings, contexts, strict=False):
        assert all(setting in heading.split(", ") for setting in shown), headings
    assert text in done.stdout


def test_a_key_pairs_the_same_runs_as_its_group(sweep):
    runs = read_runs(sweep)
    by_group = compare(runs, "cell", "rnn", "gru")
    by_key = compare(runs, "cell.kind", "rnn", "gru")
    assert [c.loss.a + c.loss.b for c in by_group] == [c.loss.a + c.loss.b for c in by_key]
    truncation = compare(runs, "bptt.truncation", "null", "3")
    assert len(truncation) == 4 and all(c.seeds == [0] for c in truncation)
    done = report(sweep, "bptt.truncation=null,3")
    assert done.returncode == 0, done.stderr[-3000:]


def test_when_nothing_pairs_the_message_names_the_keys_that_differ(sweep):
    runs = read_runs(sweep)
    rnn_copy = [r for r in runs if r.choices["cell"] == "rnn" and r.choices["task"] == "copy"]
    gru_adding = [r for r in runs if r.choices["cell"] == "gru" and r.choices["task"] == "adding"]
    with pytest.raises(ValueError) as error:
        compare(rnn_copy + gru_adding, "cell", "rnn", "gru")
    message = str(error.value)
    assert "no run with cell=rnn pairs with a run with cell=gru" in message
    assert "task (group): copy vs adding" in message
    assert "task._target_" in message and "bptt." not in message.split("differ in")[1]
    unknown = report(sweep, "cel=rnn,gru")
    assert unknown.returncode == 2 and "config groups: bptt, callbacks, cell" in unknown.stderr
