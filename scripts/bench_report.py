"""What a benchmark reports: each section's table, printed on the terminal and, with
``--write-docs PATH``, written as Markdown into its own block of the benchmarks page, between
``<!-- bench:<section> -->`` and ``<!-- /bench:<section> -->``, with the command that produced
it, the date, the machine and the run counts; so each figure lives once, written by its script.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch

NUMBER = re.compile(r"[-+0-9.,%e]*")  # a figure, or an empty cell: right-aligned in Markdown


@dataclass
class Section:
    """One section's results: a table whose first column names the rows."""

    name: str  # its block on the benchmarks page: <!-- bench:name -->
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)  # lines under the table
    counts: str = ""  # the runs and repeats behind the figures

    def text(self) -> str:
        """The title, the table with aligned columns, the notes."""
        cells = [self.headers, *self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

        def line(row: list[str]) -> str:
            padded = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
            return "  ".join([row[0].ljust(widths[0]), *padded[1:]])

        rule = "-" * len(line(self.headers))
        lines = [self.title, line(self.headers), rule, *(line(row) for row in self.rows)]
        return "\n".join([*lines, *(f"   {note}" for note in self.notes)]) + "\n"

    def markdown(self, provenance: str) -> str:
        """The block's content: title, Markdown table, notes, where the figures come from."""

        def line(row: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

        numeric = [
            all(NUMBER.fullmatch(row[i]) for row in self.rows) for i in range(len(self.headers))
        ]
        align = ["---", *("--:" if n else "---" for n in numeric[1:])]
        table = [line(self.headers), line(align), *(line(row) for row in self.rows)]
        notes = [" ".join(self.notes)] if self.notes else []
        counts = f" {self.counts}." if self.counts else ""
        return "\n\n".join([f"**{self.title}**", "\n".join(table), *notes, provenance + counts])


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def environment_lines(env: dict) -> str:
    return (
        f"torch {env['torch']}, lightning {env['lightning']}, python {env['python']}, "
        f"{env['platform']}\n{env['cpu_model']}, CPUs: {env['cpu_count']} "
        f"(usable {env['cpus_usable']}), torch.get_num_threads() = {env['torch_threads']}, "
        f"load average at start {env['load_average_at_start']}"
    )


def command_line(argv: list[str]) -> str:
    """The command as typed from the repository root, less ``--json PATH`` (where one machine
    kept its raw results); paths under the working directory are shown relative to it, so
    that no machine's own paths reach the page."""
    shown, skip = [], False
    for arg in argv:
        if skip or arg == "--json" or arg.startswith("--json="):
            skip = arg == "--json"
            continue
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(Path.cwd()):
            arg = str(path.relative_to(Path.cwd()))
        shown.append(arg)
    return "python " + shlex.join([f"scripts/{Path(sys.argv[0]).name}", *shown])


def provenance(argv: list[str], env: dict) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Measured by `{command_line(argv)}` on {date}: {env['cpu_model']}, "
        f"{env['cpu_count']} cores ({env['cpus_usable']} usable), torch {env['torch']}, "
        f"torch threads: {env['torch_threads']}."
    )


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def docs_problem(path: Path) -> str | None:
    """Why the benchmarks page at ``path`` cannot take blocks, or None: it must exist and
    each of its blocks must open once and close once, after it opens."""
    if not path.is_file():
        return f"--write-docs {path}: no such file (it takes an existing Markdown file)"
    text = path.read_text()
    for name in set(re.findall(r"<!-- /?bench:([\w-]+) -->", text)):
        start, end = markers(name)
        if text.count(start) != 1 or text.count(end) != 1 or text.index(end) < text.index(start):
            return f"--write-docs {path}: block {name} must open once with {start} then close once with {end}"
    return None


def write_docs(path: Path, sections: list[Section], argv: list[str], env: dict) -> None:
    """Replace each section's block in the page at ``path`` (append it where it has none)."""
    text = path.read_text()
    origin = provenance(argv, env)
    for section in sections:
        start, end = markers(section.name)
        block = f"{start}\n{section.markdown(origin)}\n{end}"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
        if found := pattern.search(text):
            text = text[: found.start()] + block + text[found.end() :]
        else:
            text = text.rstrip("\n") + f"\n\n{block}\n"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)  # a benchmark stopped mid-write leaves the page as it was
    print(f"wrote {', '.join(s.name for s in sections)} into {path}")
