"""The library's core imports nothing of the command line, and the package stays small."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bpttlab

CORE = [
    "bpttlab",
    "bpttlab.tasks",
    "bpttlab.cells",
    "bpttlab.cells.kernels",
    "bpttlab.model",
    "bpttlab.bptt",
    "bpttlab.clipping",
    "bpttlab.module",
    "bpttlab.gradflow",
    "bpttlab.gradflow.callback",
]
PACKAGE = Path(bpttlab.__file__).parent


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_loads_no_hydra_and_nothing_of_the_command_line(module):
    code = (
        f"import sys, {module}; "
        "print(' '.join(m for m in sys.modules "
        "if m.split('.')[0] in ('hydra', 'omegaconf') "
        "or m.split('.')[:2] in (['bpttlab', 'cli'], ['bpttlab', 'runs'], ['bpttlab', 'analysis'])))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []


def test_the_top_of_the_package_holds_at_most_twelve_modules():
    top = [p for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()]
    assert len(top) <= 12, sorted(p.name for p in top)


def test_no_module_is_over_300_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 300
    }
    assert long == {}


def test_no_class_is_over_150_lines():
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 150:
                long[f"{path.relative_to(PACKAGE)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}
