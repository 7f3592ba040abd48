"""The wheel carries the grammar and the datasets: build it, install it in a fresh venv, run `moa check` there."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, ROOT


def _run(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # Without PYTHONPATH: a source tree on it would answer instead of the installed wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=540, env=env)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.timeout(600)
def test_wheel_installs_and_checks_an_example(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT)
    [wheel] = wheels.glob("moa_dsl-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    # Away from the source tree, so only the installed package (and its bundled grammar) can answer.
    work = tmp_path / "elsewhere"
    work.mkdir()
    found = _run(python, "-c", "import moa_dsl.language.parser as p; print(p._grammar_path())", cwd=work).stdout.strip()
    assert Path(found).parent.parent.name == "moa_dsl" and str(ROOT) not in found
    # The shipped datasets, by name, from the installed wheel (importlib.resources, not the source tree).
    counts = _run(python, "-c", "from moa_dsl.evaluation.data import read_items; "
                  "print(len(read_items('alpaca-eval')), len(read_items('mt-bench')), len(read_items('arithmetic')))",
                  cwd=work).stdout.split()
    assert counts == ["805", "80", "30"]
    proc = _run(venv / "bin" / "moa", "check", EXAMPLES / "moa-paper.moa", EXAMPLES / "critic-branch.moa", cwd=work)
    assert proc.stderr.startswith("ok in 2 files")
