"""The documentation is tested: every fenced block of README.md and docs/*.md runs, scaled down
(docs/configuration.md against conf/: test_configuration_reference.py).

A ``python`` block runs as a script (``__main__``) in a tmp dir, in one subprocess for all
blocks. Every line of a ``bash`` block runs, in one subprocess for all blocks (``bpttlab-train`` and ``bpttlab-report`` called as their console scripts
are, one after another), ``bpttlab-train`` with ``SMALL`` settings, one seed, each other swept
list cut to its first two values, and joblib's one job in-process (no workers to start); a
``<placeholder>`` path becomes the newest run or sweep dir. A
``console`` block's ``$`` lines run and must print the lines below them. A block that cannot
run carries ``<!-- not run: reason -->`` on the line above it; ``text`` blocks are not run.
"""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "bash", "console", "text")
NOT_RUN = re.compile(r"^<!-- not run: (\S.*) -->$")
PROGRAMS = ("bpttlab-train", "bpttlab-report", "python")
SMALL = {
    "trainer.max_steps": "2",
    "trainer.val_check_interval": "1",
    "cell.hidden_size": "8",
    "module.batch_size": "4",
    "module.val_batches": "1",
    "task.gap": "10",
}
"""Settings appended to (or replacing those of) every documented bpttlab-train command."""
SMALL_IF_PRESENT = {"hydra.sweeper.n_trials": "2"}
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: no use for more


@dataclass
class Block:
    path: Path
    line: int
    language: str
    text: str
    not_run: str | None

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    lines, blocks = path.read_text().splitlines(), []
    opened = None
    for number, line in enumerate(lines, 1):
        if not line.startswith("```"):
            continue
        if opened is None:
            opened = number
            continue
        before = lines[opened - 2] if opened >= 2 else ""
        reason = NOT_RUN.match(before)
        text = "\n".join(lines[opened : number - 1]) + "\n"
        language = lines[opened - 1][3:].strip()
        blocks.append(Block(path, opened, language, text, reason and reason.group(1)))
        opened = None
    assert opened is None, f"{path.name}:{opened}: a fenced block is never closed"
    return blocks


BLOCKS = [block for path in DOCS for block in fenced_blocks(path)]


def runnable(language: str) -> list[Block]:
    return [b for b in BLOCKS if b.language == language and b.not_run is None]


def test_every_block_says_what_it_is():
    assert len(BLOCKS) >= 8
    for block in BLOCKS:
        assert block.language in LANGUAGES, f"{block}: tag the block as one of {LANGUAGES}"
        if block.not_run is not None:
            assert block.language in ("python", "bash"), f"{block}: only code can be not run"


def anchors(path: Path) -> set[str]:
    """The anchors of ``path``'s headings, as GitHub makes them."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_leads_somewhere():
    for path in DOCS:
        for target, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", path.read_text()):
            linked = path.parent / target if target else path
            assert linked.exists(), f"{path.name}: no {target}"
            if anchor:
                assert anchor in anchors(linked), f"{path.name}: no #{anchor} in {linked.name}"


def scaled(argv: list[str]) -> list[str]:
    """A documented bpttlab-train command with SMALL settings and short sweeps."""
    out, seen = [], set()
    for token in argv:
        key, equals, value = token.partition("=")
        if token.startswith("-") or not equals:
            out.append(token)
            continue
        seen.add(key)
        if key in SMALL or key in SMALL_IF_PRESENT:
            value = SMALL.get(key) or SMALL_IF_PRESENT[key]
        elif key == "seed" and ("," in value or value.startswith("range(")):
            value = "0"  # one seed of a seed sweep
        elif "," in value and not value.startswith(("'", '"', "[")):
            value = ",".join(value.split(",")[:2])
        out.append(f"{key}={value}")
    if joblib(out):  # its code path, in this process: no workers to start
        out = [t for t in out if not t.startswith("hydra.launcher.n_jobs=")]
        out.append("hydra.launcher.n_jobs=1")
    return out + [f"{k}={v}" for k, v in SMALL.items() if k not in seen]


def joblib(argv: list[str]) -> bool:
    """Whether ``argv`` runs on the joblib launcher, by its own choice or its experiment's."""
    if "hydra/launcher=joblib" in argv:
        return True
    for token in argv:
        if token.startswith("experiment="):
            config = yaml.safe_load((ROOT / f"conf/experiment/{token[11:]}.yaml").read_text())
            if {"override /hydra/launcher": "joblib"} in config.get("defaults", []):
                return True
    return False


def commands(block: Block) -> list[list[str]]:
    lines = [shlex.split(line, comments=True) for line in block.text.splitlines()]
    argvs = [argv for argv in lines if argv]
    for argv in argvs:
        assert argv[0] in PROGRAMS, f"{block}: cannot run {argv[0]}: mark the block not run"
        if argv[0] == "python":
            assert argv[1].startswith("scripts/"), f"{block}: python runs the repo's scripts"
    return [scaled(a) if a[0] == "bpttlab-train" else a for a in argvs]


def newest(pattern: str) -> str:
    found = sorted(Path.cwd().glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"no {pattern} for a placeholder to stand for"
    return str(found[-1])


def resolved(token: str) -> str:
    """A documented ``<placeholder>`` replaced by the newest dir the commands before made."""
    if "<" not in token:
        return token
    key, equals, value = token.rpartition("=")
    run = "run dir" in value and "sweep" not in value
    value = newest("outputs/runs/*/*") if run else newest("outputs/multirun/*/*")
    return f"{key}{equals}{value}"


def call(argv: list[str]) -> int:
    """``argv`` run as its console script would run it, in this process."""
    from hydra.core.global_hydra import GlobalHydra

    program, *args = [resolved(token) for token in argv]
    sys.argv = [program, *args]
    try:
        if program == "bpttlab-train":
            from bpttlab.cli.train import main

            main()
        elif program == "bpttlab-report":
            from bpttlab.analysis.report import main

            main()
        else:  # as ``python script``: the script's folder first on the import path
            script = ROOT / args[0]
            sys.argv, sys.path[:0] = args, [str(script.parent)]
            try:
                runpy.run_path(str(script), run_name="__main__")
            finally:
                sys.path.remove(str(script.parent))
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except Exception:  # as the interpreter does: the traceback on stderr, exit status 1
        traceback.print_exc()
        return 1
    finally:
        GlobalHydra.instance().clear()
    return 0


def run_commands(jobs: list[dict]) -> list[list[dict]]:
    """Each job's ``argvs`` in its ``cwd``, stopping at the first failure unless ``keep_going``."""
    done = []
    for job in jobs:
        os.chdir(job["cwd"])
        results = done.append([]) or done[-1]
        for argv in job["argvs"]:
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = call(argv)
            results.append(
                {"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()}
            )
            if code != 0 and not job["keep_going"]:
                break
    return done


def drive(jobs: list[dict]) -> list[list[dict]]:
    """run_commands in a fresh interpreter: one start-up for every job."""
    done = subprocess.run(
        [sys.executable, __file__, json.dumps(jobs)], env=ONE_THREAD, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def bash_results(tmp_path_factory) -> dict[str, list[dict]]:
    """What every runnable bash block's commands did, each block in a tmp dir of its own."""
    blocks = runnable("bash")
    jobs = [
        {"cwd": str(tmp_path_factory.mktemp("block")), "argvs": commands(b), "keep_going": False}
        for b in blocks
    ]
    return {str(b): results for b, results in zip(blocks, drive(jobs), strict=True)}


@pytest.fixture(scope="module")
def python_results(tmp_path_factory) -> dict[str, dict]:
    """What every runnable python block did as a script, each in a tmp dir of its own."""
    blocks, jobs = runnable("python"), []
    for block in blocks:
        script = tmp_path_factory.mktemp("block") / "block.py"
        script.write_text(block.text)
        jobs.append(
            {"cwd": str(script.parent), "argvs": [["python", str(script)]], "keep_going": False}
        )
    return {str(b): results for b, (results,) in zip(blocks, drive(jobs), strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("block", runnable("python"), ids=str)
def test_python_block_runs(block: Block, python_results: dict[str, dict]):
    done = python_results[str(block)]
    assert done["code"] == 0, f"{block}:\n{done['err'][-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("block", runnable("bash"), ids=str)
def test_bash_block_runs(block: Block, bash_results: dict[str, list[dict]]):
    results = bash_results[str(block)]
    for result in results:
        command = shlex.join(result["argv"])
        assert result["code"] == 0, f"{block}: {command}:\n{result['err'][-3000:]}"
    assert len(results) == len(commands(block))


@pytest.mark.parametrize("block", runnable("console"), ids=str)
def test_console_block_prints_what_it_shows(block: Block, tmp_path: Path):
    shown: list[tuple[list[str], list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            shown.append((shlex.split(line[2:]), []))
        else:
            shown[-1][1].append(line)
    job = {"cwd": str(tmp_path), "argvs": [argv for argv, _ in shown], "keep_going": True}
    (results,) = drive([job])
    for (argv, expected), result in zip(shown, results, strict=True):
        printed = (result["out"] + result["err"]).splitlines()
        assert printed == expected, f"{block}: {shlex.join(argv)}"
        assert result["code"] == 2
    assert not (tmp_path / "outputs").exists()


if __name__ == "__main__":  # drive(): run the commands in argv[1], print what they did
    print(json.dumps(run_commands(json.loads(sys.argv[1]))))
