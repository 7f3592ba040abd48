"""`moa check` and `moa graph`: output and exit codes, never a traceback."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moa_dsl.cli import main

from conftest import EXAMPLES, FIXTURES

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.moa"))


def test_every_example_passes_check(capsys: pytest.CaptureFixture) -> None:
    assert len(EXAMPLE_FILES) >= 6
    assert main(["check", *map(str, EXAMPLE_FILES)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("ok in ")


def test_the_operator_examples_are_there_and_two_need_no_key() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {"rank-fuse.moa", "vote-local.moa", "synthesis-local.moa", "quorum-local.moa", "agree-exit.moa",
            "self-moa-seq.moa", "budgeted.moa"} <= names
    for name in ("vote-local.moa", "quorum-local.moa", "synthesis-local.moa"):
        text = (EXAMPLES / name).read_text()
        models = re.findall(r'\b([a-z]+):"', text)
        assert models and set(models) == {"local"}, (name, models)


def test_errors_exit_1_with_rendered_diagnostics(capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.chdir(FIXTURES)
    assert main(["check", "invalid/e201_unknown_names.moa"]) == 1
    out, err = capsys.readouterr()
    assert out == (FIXTURES / "invalid" / "e201_unknown_names.expected").read_text()
    assert "5 errors in 1 file" in err


def test_warnings_alone_exit_0(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", str(FIXTURES / "valid" / "w301_dead.moa")]) == 0
    assert "warning[W301]" in capsys.readouterr().out


def test_json_format_lists_every_diagnostic_of_every_file(capsys: pytest.CaptureFixture) -> None:
    files = [str(FIXTURES / "invalid" / "e204_roles.moa"), str(FIXTURES / "valid" / "w301_dead.moa")]
    assert main(["check", "--format", "json", *files]) == 1
    items = json.loads(capsys.readouterr().out)
    assert [(i["code"], i["line"], i["column"]) for i in items] == [
        ("E204", 3, 20), ("E204", 4, 10), ("W301", 5, 1), ("W301", 6, 1)]
    assert set(items[0]) == {"severity", "code", "message", "file", "line", "column", "end_line",
                             "end_column", "hint"}


def test_missing_file_is_a_usage_error(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["check", str(tmp_path / "nope.moa"), str(EXAMPLE_FILES[0])]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["graph", str(tmp_path / "nope.moa")]) == 2


@pytest.mark.parametrize("fmt, start", [("mermaid", "flowchart LR"), ("dot", "digraph moa {"), ("json", "{"),
                                        ("svg", "<svg")])
def test_graph_formats(capsys: pytest.CaptureFixture, fmt: str, start: str) -> None:
    assert main(["graph", str(EXAMPLES / "moa-lite.moa"), "--format", fmt]) == 0
    assert capsys.readouterr().out.startswith(start)


def test_graph_json_and_output_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "g.json"
    assert main(["graph", str(EXAMPLES / "moa-paper.moa"), "--format", "json", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    data = json.loads(out.read_text())
    assert data["output"] == "final" and len(data["nodes"]) == 13 and len(data["edges"]) == 42
    assert main(["graph", str(EXAMPLES / "moa-paper.moa"), "-o", str(tmp_path / "no" / "dir.txt")]) == 2


def test_graph_of_an_invalid_file_exits_1(capsys: pytest.CaptureFixture) -> None:
    assert main(["graph", str(FIXTURES / "invalid" / "e203_cycle.moa")]) == 1
    assert "error[E203]: cycle: a -> b -> c -> a" in capsys.readouterr().err


def test_bad_flags_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--format", "yaml", "x.moa"])
    assert info.value.code == 2


def test_garbage_input_never_shows_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.moa"
    bad.write_bytes(b'node \x00 = [[[{"\\u12" ' + "é".encode() + b"\n\"\"\"")
    proc = subprocess.run([sys.executable, "-m", "moa_dsl", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "error[E101]" in proc.stdout
