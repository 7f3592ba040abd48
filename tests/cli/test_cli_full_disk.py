"""`moa run` writing to a full disk (the real /dev/full): stdout, --output, --trace. A clear message
naming what could not be written and why, exit 3 (the run did not deliver), no traceback, and the
run's completed calls cached. A destination that cannot even be opened is exit 2, before any call
(test_cli_run.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moa_dsl.testing import FakeLLMServer

KEY = "sk-full-disk-0000"
FULL = "No space left on device"

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@pytest.fixture
def server():
    with FakeLLMServer(api_key=KEY) as s:
        yield s


@pytest.fixture
def moa_file(server, tmp_path):
    path = tmp_path / "t.moa"
    path.write_text(f"""
provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY") }}
layer first = propose [fake:"a", fake:"b"]
node final = aggregate fake:"agg" <- first
""")
    return str(path)


def _moa(tmp_path, *args, stdout=None):
    env = {**os.environ, "FAKE_KEY": KEY, "MOA_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "moa_dsl", *map(str, args)], stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120, env=env)


def _rerun_is_all_cached(tmp_path, moa_file, server, *args):
    sent = len(server.requests)
    done = _moa(tmp_path, "run", moa_file, *args)
    assert done.returncode == 0, done.stderr
    assert len(server.requests) == sent           # every call of the failed-to-write run was cached
    return done


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_stdout_on_a_full_disk(moa_file, server, tmp_path, json_flag):
    with open("/dev/full", "w") as full:
        done = _moa(tmp_path, "run", moa_file, "q", *json_flag, stdout=full)
    assert done.returncode == 3, done.stderr
    assert f"moa run: cannot write stdout: {FULL}" in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert "failed" not in done.stderr              # the run itself went fine
    assert len(server.requests) == 3
    out = _rerun_is_all_cached(tmp_path, moa_file, server, "q").stdout
    assert out.startswith("agg on 'q'")


def test_trace_on_a_full_disk(moa_file, server, tmp_path):
    done = _moa(tmp_path, "run", moa_file, "q", "--trace", "/dev/full")
    assert done.returncode == 3, done.stderr
    assert f"moa run: cannot write --trace /dev/full: {FULL}" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.startswith("agg on 'q'")       # the answer was delivered; the trace was not
    assert done.stderr.count("cannot write") == 1
    _rerun_is_all_cached(tmp_path, moa_file, server, "q")


def test_batch_output_and_trace_on_a_full_disk(moa_file, server, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"instruction": f"question {i}"}) + "\n" for i in range(3)))
    done = _moa(tmp_path, "run", moa_file, "--input", inp, "--output", "/dev/full", "--trace", "/dev/full")
    assert done.returncode == 3, done.stderr
    assert f"moa run: cannot write --output /dev/full: {FULL}" in done.stderr
    assert f"moa run: cannot write --trace /dev/full: {FULL}" in done.stderr
    assert "Traceback" not in done.stderr and len(server.requests) == 9
    _rerun_is_all_cached(tmp_path, moa_file, server, "--input", inp, "--output", tmp_path / "out.jsonl")
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3


def test_batch_rows_to_a_full_stdout(moa_file, server, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"instruction": "one"}\n')
    with open("/dev/full", "w") as full:
        done = _moa(tmp_path, "run", moa_file, "--input", inp, stdout=full)
    assert done.returncode == 3 and f"cannot write stdout: {FULL}" in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
