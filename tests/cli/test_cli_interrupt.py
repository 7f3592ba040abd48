"""Ctrl-C in a terminal: `moa run` stops cleanly (exit 130, no traceback) and the cache keeps the
calls that completed. A real SIGINT to a real `python -m moa_dsl run`, sent once the trace shows
both proposers finished while the slow output node is still being answered."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from moa_dsl.testing import FakeLLMServer

from conftest import sigint_default

KEY = "sk-interrupt-0000"


@pytest.fixture
def server():
    with FakeLLMServer(api_key=KEY, latency={"agg": 600.0}) as s:   # the output node never answers in time
        yield s


def _finished(trace) -> set[str]:
    if not trace.exists():
        return set()
    done = set()
    for line in trace.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:   # a line being written
            continue
        if event["kind"] == "node_finished":
            done.add(event["node"])
    return done


def test_ctrl_c_exits_130_cleanly_and_the_cache_keeps_the_proposers(server, tmp_path):
    path = tmp_path / "t.moa"
    path.write_text(f"""
provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY") }}
layer first = propose [fake:"a", fake:"b"]
node final = aggregate fake:"agg" <- first
""")
    env = {**os.environ, "FAKE_KEY": KEY, "MOA_CACHE_DIR": str(tmp_path / "cache")}
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "moa_dsl", "run", str(path), "q", "--trace", str(trace)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=env, preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 120   # a bound on waiting for a hung child, not an assertion on speed
        while not ({"first.a", "first.b"} <= _finished(trace) and server.requests_for("agg")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the proposers never finished"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "moa: interrupted; completed calls are kept in the cache" in err
    assert "final" not in _finished(trace)
    assert [len(server.requests_for(m)) for m in ("a", "b", "agg")] == [1, 1, 1]

    server.latency["agg"] = 0.0
    rerun = subprocess.run([sys.executable, "-m", "moa_dsl", "run", str(path), "q"], capture_output=True,
                           text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith("agg on 'q'")
    assert "cached   first.a" in rerun.stderr and "cached   first.b" in rerun.stderr
    assert [len(server.requests_for(m)) for m in ("a", "b", "agg")] == [1, 1, 2]   # only the output node again
