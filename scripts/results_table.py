"""The results table of docs/results.md from a report.csv of ``bpttlab-report``: one row per cell and
init, one column per task and gap, each entry the group's ``summary`` (solve rate and median
solve step, or the final normalised loss with its interval), with the seed count.

    bpttlab-report outputs/multirun/<date>/<time>_<id>
    python scripts/results_table.py outputs/multirun/<date>/<time>_<id>/report/report.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

CELL_NAMES = {
    ("rnn", "tanh"): "tanh RNN",
    ("rnn", "relu"): "ReLU RNN",
    ("lstm", ""): "LSTM",
    ("gru", ""): "GRU",
    ("orthogonal", ""): "orthogonal RNN (expRNN)",
    ("lru", ""): "LRU",
    ("mingru", ""): "minGRU",
    ("minlstm", ""): "minLSTM",
}


def row_name(group: dict[str, str]) -> str:
    cell, init = group["cell"], group.get("init", "")
    nonlinearity = group.get("nonlinearity", "") or ("tanh" if cell == "rnn" else "")
    if (cell, nonlinearity, init) == ("rnn", "relu", "identity"):
        return "IRNN (ReLU, identity)"
    name = CELL_NAMES.get((cell, nonlinearity), cell)
    return f"{name}, {init}" if init and cell in ("rnn", "lstm", "gru") else name


def row_order(name: str) -> tuple[int, bool, str]:
    """Classic cells first, each init after the default, then the others by name."""
    known = list(CELL_NAMES.values())
    known.insert(2, "IRNN (ReLU, identity)")
    position = next(
        (i for i, k in enumerate(known) if name.startswith(k.split(" (")[0])), len(known)
    )
    return position, not name.endswith("default"), name


def entry(group: dict[str, str]) -> str:
    summary = group["summary"]
    solved, runs = group["solved"].split("/")
    return f"**{summary}**" if int(solved) * 2 > int(runs) else summary


def column_of(group: dict[str, str]) -> tuple[str, int]:
    """(task, gap) of a group; report.csv leaves out a key that no group differs in (0: absent)."""
    return group.get("task", ""), int(group.get("gap") or 0)


def table(rows: list[dict[str, str]]) -> str:
    columns = sorted({column_of(r) for r in rows}, key=lambda c: (c[0] != "copy", c))
    cells: dict[str, dict[tuple[str, int], str]] = {}
    for r in rows:
        entries = cells.setdefault(row_name(r), {})
        column = column_of(r)
        if column in entries:
            raise SystemExit(
                f"results_table: two groups for {row_name(r)} at {column[0]} {column[1]}: their "
                "configs differ in more than cell, init, task and gap (see report.csv)"
            )
        entries[column] = entry(r)
    header = ["cell, init", *(f"{task} {gap or ''}".strip() for task, gap in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entries in sorted(cells.items(), key=lambda item: row_order(item[0])):
        lines.append("| " + " | ".join([name, *(entries.get(c, "") for c in columns)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report_csv", type=Path)
    args = parser.parse_args(argv)
    with args.report_csv.open() as f:
        print(table(list(csv.DictReader(f))))


if __name__ == "__main__":
    main()
