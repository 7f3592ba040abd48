"""A `moa run` SIGKILLed mid-run keeps every call that completed: the rerun makes only the missing ones.
And no credential lands anywhere under the cache directory or in the trace."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from moa_dsl.testing import FakeLLMServer

from conftest import KEY

pytestmark = pytest.mark.slow
FAST, SLOW = ["f1", "f2", "f3"], ["s1", "s2", "s3"]


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run to progress")
        time.sleep(0.02)


def _sigkill_when(argv: list[str], env: dict[str, str], predicate) -> subprocess.Popen:
    """Start `argv`, SIGKILL it once `predicate()` holds; never leave it running."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(predicate)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def _finished_nodes(trace) -> set[str]:
    if not trace.exists():
        return set()
    done = set()
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "node_finished":
            done.add(event["node"])
    return done


def test_sigkill_then_rerun_makes_only_the_missing_calls(tmp_path):
    cache, trace = tmp_path / "cache", tmp_path / "trace.jsonl"
    env = {**os.environ, "FAKE_KEY": KEY}
    with FakeLLMServer(latency={m: 60.0 for m in SLOW}, default_latency=0.01, api_key=KEY) as server:
        src = tmp_path / "t.moa"
        members = ", ".join(f'fake:"{m}"' for m in FAST + SLOW)
        src.write_text(f"""
provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY") }}
layer first = propose [{members}]
node final = aggregate fake:"agg" <- first
""")
        argv = [sys.executable, "-m", "moa_dsl", "run", str(src), "Why is the sky blue?",
                "--cache-dir", str(cache), "--trace", str(trace)]
        proc = _sigkill_when(argv, env, lambda: _finished_nodes(trace) >= {f"first.{m}" for m in FAST}
                             and len(server.requests) == 6)
        assert proc.returncode == -signal.SIGKILL
        assert not server.requests_for("agg")

        server.latency.clear()
        server.reset_stats()
        done = subprocess.run(argv + ["--json"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert sorted(r.model for r in server.requests) == sorted(SLOW + ["agg"])
        assert result["usage"]["calls"] == 4 and result["usage"]["cache_hits"] == 3
        assert {n for n, r in result["nodes"].items() if r["status"] == "cached"} == {f"first.{m}" for m in FAST}

    for path in [trace, *cache.rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert any(p.is_file() for p in cache.rglob("*"))


def test_a_killed_batch_leaves_its_finished_rows_in_input_order(tmp_path):
    """`moa run --input` writes each row once every row before it is done: SIGKILLed mid-batch, its
    output file holds a valid prefix of the results, not nothing."""
    env = {**os.environ, "FAKE_KEY": KEY}
    out = tmp_path / "out.jsonl"
    with FakeLLMServer(default_latency=0.2, api_key=KEY) as server:
        src = tmp_path / "t.moa"
        src.write_text(f'provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY") }}\n'
                       'node final = propose fake:"m"\n')
        inp = tmp_path / "in.jsonl"
        inp.write_text("".join(json.dumps({"instruction": f"question {i}"}) + "\n" for i in range(20)))
        argv = [sys.executable, "-m", "moa_dsl", "run", str(src), "--input", str(inp), "--output", str(out),
                "--concurrency", "1", "--cache-dir", str(tmp_path / "cache")]
        _sigkill_when(argv, env, lambda: out.exists() and out.read_text().count("\n") >= 2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]   # every line whole
    assert 2 <= len(rows) < 20
    assert [r["instruction"] for r in rows] == [f"question {i}" for i in range(len(rows))]
    assert all(r["status"] == "ok" and r["output"] for r in rows)
