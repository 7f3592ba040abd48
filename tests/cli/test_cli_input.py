"""`moa run --input`: the shipped datasets by name, and every kind of bad input refused with exit 2,
`file:line` and no traceback, before any call."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moa_dsl.cli import main
from moa_dsl.testing import FakeLLMServer

KEY = "sk-input-test-0000"


@pytest.fixture
def server():
    with FakeLLMServer(api_key=KEY) as s:
        yield s


@pytest.fixture
def moa_file(server, tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("FAKE_KEY", KEY)
    monkeypatch.setenv("MOA_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.moa"
    path.write_text(f"""
provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY") }}
node a = propose fake:"a"
node final = aggregate fake:"agg" <- a
""")
    return str(path)


def _moa(*args, stdin=None):
    """`python -m moa_dsl ...` for real (stdin from a file, such as /dev/zero)."""
    return subprocess.run([sys.executable, "-m", "moa_dsl", *map(str, args)], stdin=stdin, capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())


def test_run_takes_mt_bench_by_name(moa_file, server, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["run", moa_file, "--input", "mt-bench", "--limit", "2", "--output", str(out), "--quiet"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [81, 82] and rows[0]["category"] == "writing"
    assert all(len(r["outputs"]) == 2 and r["status"] == "ok" for r in rows)
    assert len(server.requests) == 2 * 2 * 2    # 2 items, 2 turns, 2 nodes


def test_run_takes_alpaca_eval_by_name_but_a_file_of_that_name_wins(moa_file, server, tmp_path, capsys):
    assert main(["run", moa_file, "--input", "alpaca-eval", "--limit", "1", "--quiet"]) == 0
    [row] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["dataset"] == "helpful_base" and "Broadway" in row["instruction"]
    (tmp_path / "alpaca-eval").write_text('{"instruction": "mine"}\n')
    assert main(["run", moa_file, "--input", "alpaca-eval", "--quiet"]) == 0
    [row] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["instruction"] == "mine"


def test_run_help_says_when_a_name_is_a_dataset(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split()).replace("- ", "-")   # argparse wraps at hyphens
    assert "alpaca-eval" in out and "mt-bench" in out and "only when no file of that name exists" in out


@pytest.mark.parametrize("source, message", [
    ("/dev/zero", "/dev/zero: not a regular file"),
    (".", ".: is a directory"),
    ("nope.jsonl", "no such file: nope.jsonl"),
])
def test_what_is_not_a_jsonl_file_is_refused(moa_file, server, capsys, source, message):
    assert main(["run", moa_file, "--input", source]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and server.requests == []


def test_a_fifo_is_refused_without_waiting_for_a_writer(moa_file, server, tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo")
    assert main(["run", moa_file, "--input", str(tmp_path / "fifo")]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_stdin_of_endless_zeros_stops_at_the_line_limit(moa_file, server):
    """`--input -` from /dev/zero: one endless line, refused after 1 MiB, not read to exhaustion."""
    with open("/dev/zero", "rb") as zero:
        done = _moa("run", moa_file, "--input", "-", stdin=zero)
    assert done.returncode == 2, done.stderr
    assert "<stdin>:1: line longer than 1 MiB" in done.stderr and "Traceback" not in done.stderr
    assert server.requests == []


def test_stdin_lines_run(moa_file, server, tmp_path, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"instruction": "from stdin"}\n')))
    assert main(["run", moa_file, "--input", "-", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["instruction"] == "from stdin"


@pytest.mark.parametrize("line, message", [
    (b'{"instruction": "x", "n": NaN}', "in.jsonl:2: NaN is not a JSON number"),
    (b'{"instruction": "x", "n": -Infinity}', "in.jsonl:2: -Infinity is not a JSON number"),
    (b"[" * 100_000 + b"]" * 100_000, "in.jsonl:2: nested too deeply"),
    (b'{"instruction": "caf\xe9"}', "in.jsonl:2: not UTF-8"),
    (b'{"instruction": "' + b"x" * (1024 * 1024) + b'"}', "in.jsonl:2: line longer than 1 MiB"),
])
def test_bad_lines_exit_2_with_file_and_line(moa_file, server, tmp_path, capsys, line, message):
    (tmp_path / "in.jsonl").write_bytes(b'{"instruction": "ok"}\n' + line + b"\n")
    assert main(["run", moa_file, "--input", "in.jsonl"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and server.requests == []


def test_separators_inside_strings_and_a_bom_are_text_and_the_output_is_json(moa_file, server, tmp_path, capsys):
    text = "a\u2028b\u2029c\u0085d\u001ce"
    (tmp_path / "in.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"instruction": "' + text.encode() + b'"}\r\n')
    assert main(["run", moa_file, "--input", "in.jsonl", "--output", "out.jsonl", "--quiet"]) == 0
    [line] = (tmp_path / "out.jsonl").read_bytes().split(b"\n")[:-1]
    row = json.loads(line)
    assert row["instruction"] == text and row["status"] == "ok"
    assert server.requests_for("a")[0].body["messages"][-1]["content"] == text


@pytest.mark.parametrize("how", ["argv", "stdin", "-q", "--no-cache"])
def test_a_query_that_is_not_utf8_is_exit_2_before_any_call(moa_file, server, how):
    raw = b"caf\xe9"
    if how == "stdin":
        done = subprocess.run([sys.executable, "-m", "moa_dsl", "run", moa_file, "-"], input=raw,
                              capture_output=True, timeout=120, env=os.environ.copy())
    else:
        argv = {"argv": [raw], "-q": [b"-q", raw], "--no-cache": [raw, b"--no-cache"]}[how]
        done = subprocess.run([sys.executable.encode(), b"-m", b"moa_dsl", b"run", moa_file.encode(), *argv],
                              capture_output=True, timeout=120, env=os.environ.copy())
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, err
    assert "the query is not valid UTF-8" in err and "Traceback" not in err
    assert server.requests == []


def test_a_stdin_query_with_a_bom_is_the_text_after_it(moa_file, server):
    done = subprocess.run([sys.executable, "-m", "moa_dsl", "run", moa_file, "-", "--quiet"],
                          input="\ufeffcafé".encode(), capture_output=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0 and server.requests_for("a")[0].body["messages"][-1]["content"] == "café"
