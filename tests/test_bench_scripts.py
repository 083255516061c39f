"""The bench scripts stay small and write their tables into the benchmarks page: each section
between its markers, nothing else on the page touched, a second run replacing its block."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from bench_report import Section, environment, write_docs  # noqa: E402

PAGE = """# Benchmarks

Text before | the blocks, kept as it is.

<!-- bench:training -->
old training figures
<!-- /bench:training -->

Text between the blocks.

<!-- bench:kernels -->
old kernel figures
<!-- /bench:kernels -->

Text after the blocks.
"""
HEADERS = {  # each section's table: its column headers and the one holding its ratios
    "training": (["setting", "plain s", "bpttlab s", "ratio", "target"], "ratio"),
    "gradflow": (["run", "median s", "seq-steps/s", "ratio", "target"], "ratio"),
    "kernels": (["variant", "median ms", "time ratio", "kernel (autograd node)"], "time ratio"),
    "sweep": (["grid", "runs", "serial s", "joblib s", "speedup", "target"], "speedup"),
}


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True
    )


def block(page: str, name: str) -> str:
    """The content between the section's markers; there must be exactly one such block."""
    found = re.findall(rf"<!-- bench:{name} -->\n(.*?)\n<!-- /bench:{name} -->", page, re.DOTALL)
    assert len(found) == 1, f"{len(found)} blocks {name}"
    assert page.count(f"<!-- bench:{name} -->") == 1
    return found[0]


def outside(page: str) -> str:
    """The page without its blocks: what the bench scripts must leave as it is."""
    return re.sub(
        r"<!-- bench:([\w-]+) -->.*?<!-- /bench:\1 -->", "", page, flags=re.DOTALL
    ).rstrip()


def table(content: str) -> list[dict[str, str]]:
    """The rows of the Markdown table in a block, as {header: cell}."""
    lines = [line for line in content.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    assert all(set(c) <= set("-:") for c in cells[1]), "no header rule under the header"
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_no_script_is_over_350_lines(script):
    assert len(script.read_text().splitlines()) <= 350


def test_write_docs_replaces_each_block_appends_a_missing_one_and_leaves_the_rest(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE)
    env = environment()

    def sections(ratio: str) -> list[Section]:
        return [
            Section(name, f"{name} title", ["variant", "ratio"], [["a | b", ratio]], ["a note"])
            for name in ("kernels", "sweep")
        ]

    argv = ["--write-docs", str(page), "--json", str(tmp_path / "raw.json")]
    write_docs(page, sections("1.25"), argv, env)
    first = page.read_text()
    assert outside(first) == outside(PAGE)
    assert block(first, "training") == "old training figures"
    for name in ("kernels", "sweep"):
        content = block(first, name)
        assert table(content) == [{"variant": "a \\| b", "ratio": "1.25"}]
        assert content.startswith(f"**{name} title**") and "a note" in content
        assert f"`python scripts/{Path(sys.argv[0]).name} --write-docs " in content
        assert "--json" not in content and "raw.json" not in content
    assert first.index("<!-- bench:sweep -->") > first.index("Text after the blocks.")

    write_docs(page, sections("0.50"), [], env)
    second = page.read_text()
    assert outside(second) == outside(PAGE)
    assert block(second, "training") == "old training figures"
    for name in ("kernels", "sweep"):
        assert table(block(second, name)) == [{"variant": "a \\| b", "ratio": "0.50"}]


@pytest.mark.slow
def test_bench_quick_writes_each_section_once_into_the_page_and_replaces_it_on_a_rerun(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE)
    args = ["--quick", "--repeats", "1", "--threads", "1", "--sweep-grids", "1"]
    args += ["--write-docs", str(page)]
    done = bench("bench.py", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    first = page.read_text()
    assert outside(first) == outside(PAGE)
    assert "old training figures" not in first and "old kernel figures" not in first
    for name, (headers, ratio) in HEADERS.items():
        content = block(first, name)
        rows = table(content)
        assert rows and set(headers) <= rows[0].keys(), content
        ratios = [float(row[ratio]) for row in rows if row[ratio]]
        assert ratios and all(math.isfinite(r) and r >= 0 for r in ratios), content
        assert "`python scripts/bench.py --quick --repeats 1 --threads 1" in content
        assert re.search(
            r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC: .+ cores .+ torch threads: 1\.", content
        )
        assert re.search(r"Medians of \d+ (runs|rounds)|One sweep per launcher", content)

    again = bench(
        "bench_training.py",
        "--quick",
        "--repeats",
        "1",
        "--sections",
        "gradflow",
        "--write-docs",
        str(page),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    second = page.read_text()
    assert outside(second) == outside(PAGE)
    assert "python scripts/bench_training.py --quick" in block(second, "gradflow")
    for name in ("training", "kernels", "sweep"):
        assert block(second, name) == block(first, name)


@pytest.mark.parametrize(
    "content",
    [None, "<!-- bench:kernels -->\nno end\n", "<!-- /bench:kernels -->\n<!-- bench:kernels -->\n"],
    ids=["missing page", "block not closed", "block closed before it opens"],
)
def test_a_page_that_cannot_take_the_blocks_is_refused_in_one_line_before_anything_runs(
    tmp_path, content
):
    page = tmp_path / "benchmarks.md"
    if content is not None:
        page.write_text(content)
    done = bench("bench_kernel_choice.py", "--quick", "--write-docs", str(page))
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--write-docs" in done.stderr
    assert (page.read_text() if content is not None else None) == content


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "headers"),
    [
        (
            ["bench_cells.py", "--quick", "--cells", "rnn", "--sections", "cell-kernels"],
            {"cell-kernels": ["cell", "native ms", "bpttlab ms", "fastest torch / bpttlab"]},
        ),
        (
            ["bench_lru_scan.py", "--quick"],
            {"lru-scan": ["scan", "best ms", "speed-up over step loop"]},
        ),
        (
            ["bench_scalars.py", "--quick"],
            {"scalars": ["reporting path", "µs per batch", "batch µs", "share of a batch"]},
        ),
        (
            ["bench_runs.py", "--quick", "--sections", "startup"],
            {"startup": ["launch", "median s", "ratio", "target"]},
        ),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else None,
)
def test_the_other_bench_scripts_write_their_blocks_too(tmp_path, command, headers):
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE)
    done = bench(*command, "--threads", "1", "--write-docs", str(page))
    assert done.returncode == 0, done.stderr[-3000:]
    written = page.read_text()
    assert outside(written) == outside(PAGE)
    for name, columns in headers.items():
        content = block(written, name)
        assert set(columns) <= table(content)[0].keys(), content
        assert f"`python scripts/{command[0]} --quick" in content
