"""Datasets: the shipped ones by name, and JSONL read line by line, bounded and exact."""
from __future__ import annotations

import json
import os

import pytest

from moa_dsl.errors import ConfigError
from moa_dsl.evaluation.data import MAX_LINE_BYTES, read_items, read_jsonl_records


# --- the shipped datasets, by name ---------------------------------------------------------------

def test_the_shipped_datasets_by_name():
    alpaca = read_items("alpaca-eval")
    assert len(alpaca) == 805 and alpaca[0].dataset == "helpful_base" and len(alpaca[0].turns) == 1
    records = read_jsonl_records("mt-bench")
    assert len(records) == 80 and all(len(item.turns) == 2 for _, item in records)
    assert {rec["category"] for rec, _ in records} >= {"writing", "math", "coding"}
    assert len(read_items("mt-bench", limit=3)) == 3


def test_a_file_that_exists_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mt-bench").write_text('{"instruction": "my own"}\n')
    assert [i.turns for i in read_items("mt-bench")] == [("my own",)]


def test_an_unknown_name_is_no_such_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no such file: alpaca_eval .*alpaca-eval, mt-bench"):
        read_items("alpaca_eval")


def test_the_python_api_takes_a_name(tmp_path, monkeypatch):
    """evaluate() reads the data before it looks at the judge: a judge error means the name was read."""
    import moa_dsl

    monkeypatch.chdir(tmp_path)
    pipe = moa_dsl.loads('node a = propose openai:"x"\n')
    with pytest.raises(ConfigError, match="judge"):
        moa_dsl.evaluate([pipe], "mt-bench", limit=2, judge="not a model reference")
    with pytest.raises(ConfigError, match="no such file: mt-benchx"):
        moa_dsl.evaluate([pipe], "mt-benchx", limit=2, judge="not a model reference")


# --- bounded and exact -----------------------------------------------------------------------------

def _read(tmp_path, data: bytes):
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    return read_jsonl_records(path)


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\u001c", "\u000b", "\u000c"])
def test_lines_end_only_at_newline(tmp_path, char):
    """str.splitlines breaks at these; a JSONL line ends only at \\n. Raw, inside a string, they are text."""
    [(record, item)] = _read(tmp_path, b'{"instruction": "caf' + char.encode() + b'e"}\n')
    assert item.turns == (f"caf{char}e",) and record["instruction"] == f"caf{char}e"


def test_crlf_and_a_bom_are_accepted(tmp_path):
    records = _read(tmp_path, b'\xef\xbb\xbf{"instruction": "one"}\r\n\r\n{"instruction": "two"}\r\n')
    assert [item.turns for _, item in records] == [("one",), ("two",)]


@pytest.mark.parametrize("line", ['{"instruction": "x", "n": NaN}', '{"instruction": "x", "n": Infinity}',
                                  '{"instruction": "x", "n": -Infinity}', '{"instruction": "x", "n": 1e999}'])
def test_non_finite_numbers_are_refused_with_file_and_line(tmp_path, line):
    with pytest.raises(ConfigError, match=r"in\.jsonl:2: .*not a JSON number"):
        _read(tmp_path, b'{"instruction": "ok"}\n' + line.encode() + b"\n")


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    with pytest.raises(ConfigError, match=r"in\.jsonl:1: nested too deeply"):
        _read(tmp_path, b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(ConfigError, match=r"in\.jsonl:1: nested too deeply"):   # deep enough to break later
        _read(tmp_path, b'{"instruction": "x", "n": ' + b"[" * 600 + b"]" * 600 + b"}\n")


def test_non_utf8_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"in\.jsonl:2: not UTF-8 text \(byte 0xe9"):
        _read(tmp_path, b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')


def test_a_line_over_1_mib_is_refused(tmp_path):
    fits = b'{"instruction": "' + b"x" * (MAX_LINE_BYTES - 19) + b'"}'
    assert len(fits) == MAX_LINE_BYTES
    assert len(_read(tmp_path, fits + b"\r\n")) == 1
    with pytest.raises(ConfigError, match=r"in\.jsonl:2: line longer than 1 MiB"):
        _read(tmp_path, fits + b"\n" + b'{"instruction": "' + b"x" * MAX_LINE_BYTES + b'"}\n')
    with pytest.raises(ConfigError, match=r"in\.jsonl:1: line longer than 1 MiB"):
        _read(tmp_path, b"x" * (MAX_LINE_BYTES + 1))   # no final newline


def test_dev_zero_is_refused_without_reading_it():
    with pytest.raises(ConfigError, match="/dev/zero: not a regular file"):
        read_items("/dev/zero")


def test_a_directory_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        read_items(tmp_path)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_items(str(fifo))
