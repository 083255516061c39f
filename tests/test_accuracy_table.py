"""scripts/accuracy_table.py on run dirs written by hand: the solve rate's Wilson interval and the
accuracy's t interval against the formulas written out here, and the figure's points read back
from the drawn axes."""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from test_report import solved, unsolved, write_run

ROOT = Path(__file__).resolve().parents[1]
T_975_DF2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def run_script(*args: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["accuracy_table.py", *args])
    runpy.run_path(str(ROOT / "scripts/accuracy_table.py"), run_name="__main__")


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two learning rates of an LSTM, three seeds each: 2 of 3 solved at lr 1e-3, none at 1e-2."""
    root = tmp_path / "sweep"
    accuracies = {1e-3: [0.995, 0.991, 0.62], 1e-2: [0.30, 0.25, 0.20]}
    for lr, values in accuracies.items():
        for seed, acc in enumerate(values):
            metrics = (solved(300 + 100 * seed, 0.01) if acc > 0.99 else unsolved(0.5)) | {
                "val_accuracy": acc
            }
            run = write_run(root, f"lr{lr}_s{seed}", metrics, seed)
            config = (run / "config.yaml").read_text()
            (run / "config.yaml").write_text(config + f"optim:\n  lr: {lr}\n")
    return root


def test_table_numbers_against_the_formulas(sweep, monkeypatch, capsys):
    run_script(str(sweep), monkeypatch=monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| lr | solved [Wilson 95 %] | median step | accuracy")
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    low, high = wilson_by_hand(2, 3)
    assert f"2/3 [{low:.2f}, {high:.2f}]" in rows["0.001"]
    assert " 350 " in rows["0.001"]  # the median of 300 and 400
    values = [0.995, 0.991, 0.62]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert f"{mean:.3f} ± {T_975_DF2 * sd / math.sqrt(3):.3f}" in rows["0.001"]
    low, high = wilson_by_hand(0, 3)
    assert f"0/3 [{max(low, 0):.2f}, {high:.2f}]" in rows["0.01"]
    assert f"{0.25:.3f} ± {T_975_DF2 * 0.05 / math.sqrt(3):.3f}" in rows["0.01"]


def test_figure_draws_each_rate_at_its_learning_rate(sweep, tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path: drawn.update(fig=fig))
    run_script(
        str(sweep), "--x", "lr", "--figure", str(tmp_path / "f.png"), monkeypatch=monkeypatch
    )
    rate_ax, accuracy_ax = drawn["fig"].axes
    xs, rates = rate_ax.lines[0].get_data()
    assert list(xs) == pytest.approx([1e-3, 1e-2])
    assert list(rates) == pytest.approx([2 / 3, 0.0])
    assert list(accuracy_ax.lines[0].get_ydata()) == pytest.approx(
        [(0.995 + 0.991 + 0.62) / 3, 0.25]
    )


def test_an_x_that_does_not_vary_is_refused(sweep, monkeypatch):
    with pytest.raises(SystemExit, match="--x cell does not vary here"):
        run_script(str(sweep), "--x", "cell", "--figure", "f.png", monkeypatch=monkeypatch)


def test_a_setting_that_follows_from_another_is_not_a_column(sweep, monkeypatch, capsys):
    """A GRU beside the LSTM, its init written as a GRU's: init follows from the cell."""
    for seed in range(3):
        run = write_run(sweep, f"gru_s{seed}", unsolved(0.9) | {"val_accuracy": 0.2}, seed)
        config = (run / "config.yaml").read_text().replace("kind: lstm", "kind: gru")
        (run / "config.yaml").write_text(
            config.replace("init: default", "init: chrono") + "optim:\n  lr: 0.01\n"
        )
    run_script(str(sweep), monkeypatch=monkeypatch)
    assert capsys.readouterr().out.startswith("| cell | lr | solved")
