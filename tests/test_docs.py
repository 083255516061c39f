"""The documentation is tested: every fenced block of README.md and docs/*.md runs (scaled down),
and docs/configuration.md's tables match conf/ key by key and default by default.

A ``python`` block runs in a subprocess in a tmp dir. Every line of a ``bash`` block runs, in one
subprocess per block (``bpttlab-train`` and ``bpttlab-report`` called as their console scripts
are, one after another), ``bpttlab-train`` with ``SMALL`` settings and each swept list cut to
its first two values; a ``<placeholder>`` path becomes the newest run or sweep dir. A
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
SMALL_IF_PRESENT = {"hydra.sweeper.n_trials": "2", "hydra.launcher.n_jobs": "2"}
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
        elif "," in value and not value.startswith(("'", '"', "[")):
            value = ",".join(value.split(",")[:2])
        elif re.fullmatch(r"range\(\d+\)", value):
            value = "range(2)"
        out.append(f"{key}={value}")
    return out + [f"{k}={v}" for k, v in SMALL.items() if k not in seen]


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
        else:
            sys.argv = args
            runpy.run_path(str(ROOT / args[0]), run_name="__main__")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        GlobalHydra.instance().clear()
    return 0


def run_commands(argvs: list[list[str]]) -> list[dict]:
    results = []
    for argv in argvs:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = call(argv)
        results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
    return results


def drive(argvs: list[list[str]], cwd: Path) -> list[dict]:
    """run_commands in a fresh interpreter in ``cwd``."""
    done = subprocess.run(
        [sys.executable, __file__, json.dumps(argvs)],
        cwd=cwd,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("block", runnable("python"), ids=str)
def test_python_block_runs(block: Block, tmp_path: Path):
    (tmp_path / "block.py").write_text(block.text)
    done = subprocess.run(
        [sys.executable, "block.py"],
        cwd=tmp_path,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{block}:\n{done.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("block", runnable("bash"), ids=str)
def test_bash_block_runs(block: Block, tmp_path: Path):
    argvs = commands(block)
    for result in drive(argvs, tmp_path):
        command = shlex.join(result["argv"])
        assert result["code"] == 0, f"{block}: {command}:\n{result['err'][-3000:]}"


@pytest.mark.parametrize("block", runnable("console"), ids=str)
def test_console_block_prints_what_it_shows(block: Block, tmp_path: Path):
    shown: list[tuple[list[str], list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            shown.append((shlex.split(line[2:]), []))
        else:
            shown[-1][1].append(line)
    results = drive([argv for argv, _ in shown], tmp_path)
    for (argv, expected), result in zip(shown, results, strict=True):
        printed = (result["out"] + result["err"]).splitlines()
        assert printed == expected, f"{block}: {shlex.join(argv)}"
        assert result["code"] == 2
    assert not (tmp_path / "outputs").exists()


# -- the configuration reference -------------------------------------------------------------
GROUPS = ("cell", "task", "bptt", "clip", "optim", "trainer", "logger", "callbacks")
REFERENCE = ROOT / "docs" / "configuration.md"


@dataclass
class Row:
    key: str
    default: object
    scope: tuple[str, str] | None  # (group, option) for a table under "### `group=option`"
    meaning: str


def reference_rows() -> list[Row]:
    rows, scope = [], None
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("#"):
            option = re.search(r"`(\w+)=(\w+)`", line)
            scope = (option.group(1), option.group(2)) if option else None
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not line.startswith("| `") or len(cells) != 3:
            continue
        key, default, meaning = (c.strip("`") if i < 2 else c for i, c in enumerate(cells))
        rows.append(Row(key, yaml.safe_load(default), scope, meaning))
    return rows


def flat(node: object, prefix: str) -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    keys = {}
    for key, value in node.items():
        if not str(key).startswith("_"):
            keys |= flat(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


@pytest.fixture(scope="module")
def composed():
    """Flat configs: ``None`` the default, ``(group, option)`` that group's keys under
    ``group=option``; and the default config's group choices."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from bpttlab.cli.train import CONFIG_DIR

    def container(overrides, hydra=False):
        cfg = compose("train", overrides=overrides, return_hydra_config=hydra)
        return OmegaConf.to_container(cfg, resolve=False)

    configs = {}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        default = container([], hydra=True)
        choices = default.pop("hydra")["runtime"]["choices"]
        configs[None] = flat(default, "")
        for group in GROUPS:
            for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
                if path.stem != "base":  # not an option: each option starts from it
                    option = container([f"{group}={path.stem}"])
                    configs[(group, path.stem)] = flat(option[group], group)
    return configs, choices, Path(CONFIG_DIR)


def test_every_config_key_is_documented_with_its_default(composed):
    configs, choices, _ = composed
    rows = reference_rows()
    for scope, config in configs.items():
        for key, value in config.items():
            group = key.split(".")[0]
            option = scope or (group, choices.get(group))  # the default config: its options'
            here = [r for r in rows if r.key == key and r.scope in (None, option)]
            assert here, f"{key} ({scope or 'default'}): no row in {REFERENCE.name}"
            assert here[-1].default == value, f"{key} ({scope or 'default'}): conf/ says {value!r}"


def test_every_documented_key_is_real(composed):
    configs, choices, config_dir = composed
    for row in reference_rows():
        if "." not in row.key and row.key in choices:  # a group: its default option
            assert row.default == choices[row.key], f"{row.key}: conf/ picks {choices[row.key]}"
            options = [p.stem for p in (config_dir / row.key).glob("*.yaml")]
            for option in set(options) - {"base"}:
                assert f"`{option}`" in row.meaning, f"{row.key}: option {option} not listed"
            continue
        scopes = [row.scope] if row.scope else list(configs)
        assert row.scope is None or row.scope in configs, f"{row.scope}: no such option"
        found = [configs[s][row.key] for s in scopes if row.key in configs[s]]
        assert found, f"{row.key} ({row.scope or 'shared'}): no such key in conf/"
        assert all(v == row.default for v in found), f"{row.key}: conf/ says {found}"


if __name__ == "__main__":  # drive(): run the commands in argv[1], print what they did
    print(json.dumps(run_commands(json.loads(sys.argv[1]))))
