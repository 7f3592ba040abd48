"""What breaks in the field: a full or unusable cache disk, a server that answers 200 with nothing,
an aggregator over thousands of inputs, a run cancelled in the middle. Each must degrade with a
clear message, never a traceback or a hang. Real loopback servers only."""
from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import subprocess
import sys

import diskcache
import pytest

from moa_dsl import loads
from moa_dsl.runtime.cache import CacheWarning
from moa_dsl.cli import main as moa
from moa_dsl.runtime.scheduler import arun
from moa_dsl.testing import FakeLLMServer

from conftest import KEY
ENV = {"K": KEY}


def source(url: str, body: str = "") -> str:
    return (f'provider fake = openai {{ base_url = "{url}", api_key = env("K"), retries = 1 }}\n'
            + (body or 'layer l = propose [fake:"a", fake:"b"]\nnode final = aggregate fake:"agg" <- l\n'))


# --- the cache directory fails -----------------------------------------------------------------

def full_disk(exc: BaseException):
    def fail(self, *args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 sqlite3.OperationalError("database or disk is full")])
def test_full_disk_runs_without_the_cache_python_api(monkeypatch, tmp_path, exc):
    monkeypatch.setattr(diskcache.Cache, "set", full_disk(exc))
    with FakeLLMServer() as server:
        pipe = loads(source(server.url))
        with pytest.warns(CacheWarning, match="continuing without it") as caught:
            result = asyncio.run(arun(pipe, "Why is the sky blue?", cache_dir=tmp_path / "c", environ=ENV))
        calls = len(server.requests)
    assert result.status == "ok" and result.output
    assert calls == 3 and result.usage.calls == 3
    assert len([w for w in caught if w.category is CacheWarning]) == 1   # once, not per node


def test_full_disk_runs_without_the_cache_cli(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(diskcache.Cache, "set", full_disk(OSError(errno.ENOSPC, "No space left on device")))
    monkeypatch.setenv("K", KEY)
    with FakeLLMServer() as server:
        path = tmp_path / "t.moa"
        path.write_text(source(server.url))
        code = moa(["run", str(path), "Why is the sky blue?", "--cache-dir", str(tmp_path / "c")])
    out = capsys.readouterr()
    # The CLI prints the runtime's warning as one line of its own, not in Python's warnings format.
    assert (f"moa: warning: response cache at {tmp_path / 'c'} unusable (No space left on device); "
            "continuing without it\n") in out.err
    assert code == 0
    assert out.out.startswith("agg on ")
    assert "Traceback" not in out.err


def _can_mount_tmpfs() -> bool:
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and mount namespaces (unshare -m)")
def test_a_really_full_disk_turns_the_cache_off_and_the_run_goes_on(tmp_path):
    """Not simulated: the cache lives on a 1 MiB tmpfs (in a private mount namespace, gone when the
    command exits) that is created, then filled to the last byte, before `moa run` writes to it."""
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    with FakeLLMServer() as server:
        path = tmp_path / "t.moa"
        path.write_text(source(server.url))
        moa_cmd = f'"{sys.executable}" -m moa_dsl'
        script = (f'mount -t tmpfs -o size=1m tmpfs "{cache_dir}" && '
                  f'{moa_cmd} cache stats --cache-dir "{cache_dir}" >/dev/null && '      # the database exists
                  f'(dd if=/dev/zero of="{cache_dir}/filler" bs=4k 2>/dev/null; true) && '  # ... and the disk is full
                  f'{moa_cmd} run "{path}" "Why is the sky blue?" --cache-dir "{cache_dir}"')
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                              env={**os.environ, "K": KEY}, timeout=100)
        calls = len(server.requests)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("agg on ")
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("moa: warning: response cache")]
    assert len(warnings) == 1 and warnings[0].endswith("; continuing without it"), proc.stderr
    assert "full" in warnings[0] or "space" in warnings[0], warnings[0]   # sqlite: "database or disk is full"
    assert "Traceback" not in proc.stderr
    assert calls == 3


def _unusable(tmp_path, how: str):
    if how == "under a regular file":
        (tmp_path / "file").write_text("not a directory")
        return tmp_path / "file" / "cache"
    if how == "cache.db is a directory":
        (tmp_path / "c" / "cache.db").mkdir(parents=True)
        return tmp_path / "c"
    raise AssertionError(how)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["under a regular file", "cache.db is a directory"])
def test_unusable_cache_dir_through_moa_run_subprocess(tmp_path, how):
    cache_dir = _unusable(tmp_path, how)
    with FakeLLMServer() as server:
        path = tmp_path / "t.moa"
        path.write_text(source(server.url))
        env = {**os.environ, "K": KEY}
        proc = subprocess.run([sys.executable, "-m", "moa_dsl", "run", str(path), "Why is the sky blue?",
                               "--cache-dir", str(cache_dir)], capture_output=True, text=True, env=env,
                              timeout=100)
        calls = len(server.requests)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("agg on ")
    [line] = [x for x in proc.stderr.splitlines() if "cache" in x and "hits" not in x]
    assert line.startswith(f"moa: warning: response cache at {cache_dir} unusable (")
    assert line.endswith("); continuing without it")
    assert "Traceback" not in proc.stderr and "warnings.warn" not in proc.stderr and "CacheWarning" not in proc.stderr
    assert calls == 3


def test_unusable_cache_dir_python_api(tmp_path):
    cache_dir = _unusable(tmp_path, "cache.db is a directory")
    with FakeLLMServer() as server:
        pipe = loads(source(server.url))
        with pytest.warns(CacheWarning):
            result = asyncio.run(arun(pipe, "q", cache_dir=cache_dir, environ=ENV))
    assert result.status == "ok" and result.usage.cache_hits == 0


# --- a server that answers 200 with an empty body ----------------------------------------------

class EmptyServer:
    """Answers every request `200 OK` with `Content-Length: 0`."""

    async def __aenter__(self):
        async def handle(reader, writer):
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    await reader.readexactly(length)
                    self.requests += 1
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        self.requests = 0
        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


def test_200_with_an_empty_body_fails_the_node_with_a_message(tmp_path):
    async def go():
        async with EmptyServer() as server:
            pipe = loads(source(server.url))
            result = await asyncio.wait_for(arun(pipe, "q", cache_dir=tmp_path / "c", environ=ENV), 30)
            return result, server.requests

    result, requests = asyncio.run(go())
    assert result.status == "failed"
    for name in ("l.a", "l.b"):
        error = result.nodes[name].error
        assert error.startswith(f"{name}: provider fake, model ") and "not JSON (HTTP 200" in error, error
    assert result.nodes["final"].status == "skipped"
    assert requests == 2        # a malformed 200 is not retried


def test_empty_answer_text_is_a_valid_answer(tmp_path):
    with FakeLLMServer(responder={"a": lambda m, b: "", "*": lambda m, b: "fine"}) as server:
        pipe = loads(source(server.url))
        result = asyncio.run(arun(pipe, "q", cache_dir=tmp_path / "c", environ=ENV))
        agg = server.requests_for("agg")[0].body["messages"][0]["content"]
    assert result.status == "ok" and result.nodes["l.a"].text == "" and result.output == "fine"
    assert "1. " in agg and "2. fine" in agg


# --- an aggregator over thousands of inputs ----------------------------------------------------

@pytest.mark.timeout(180)
def test_aggregator_with_thousands_of_inputs(tmp_path):
    n = 1500
    with FakeLLMServer() as server:
        pipe = loads(source(server.url, f'layer l = propose [fake:"a" * 1000, fake:"b" * {n - 1000}]\nnode final = aggregate fake:"agg" <- l\n'))
        result = asyncio.run(arun(pipe, "Why?", concurrency=64, cache=False, environ=ENV))
        body = server.requests_for("agg")[0].body
    assert result.status == "ok" and result.usage.calls == n + 1
    system = body["messages"][0]["content"]
    assert f"\n{n}. " in system and f"\n{n + 1}. " not in system
    assert server.max_in_flight <= 64


# --- a cancelled run ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_cancelled_run_leaves_nothing_running_and_caches_what_finished(tmp_path):
    """Cancel while the slow proposer is still in flight: no task stays pending, the fast one's
    answer is already in the cache, and a rerun calls only what did not finish."""
    async def go(server):
        pipe = loads(source(server.url))
        started = asyncio.Event()
        task = asyncio.ensure_future(arun(pipe, "q", cache_dir=tmp_path / "c", environ=ENV,
                                          on_event=lambda e: e.kind == "node_finished" and started.set()))
        await asyncio.wait_for(started.wait(), 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=5)
        return [t for t in others if not t.done()]

    with FakeLLMServer(latency={"a": 0.0, "b": 30.0}) as server:
        assert asyncio.run(go(server)) == []
        server.latency["b"] = 0.0
        pipe = loads(source(server.url))
        again = asyncio.run(arun(pipe, "q", cache_dir=tmp_path / "c", environ=ENV))
    assert again.status == "ok"
    assert again.nodes["l.a"].status == "cached" and again.nodes["l.b"].status == "ok"


def test_trace_of_a_failing_run_never_holds_the_key(tmp_path):
    trace = tmp_path / "trace.jsonl"
    with FakeLLMServer() as server:
        server.inject("a", "401", message=f"bad key {KEY}")
        pipe = loads(source(server.url))
        result = asyncio.run(arun(pipe, "q", cache_dir=tmp_path / "c", environ=ENV, trace=str(trace)))
    assert result.nodes["l.a"].status == "failed"
    text = trace.read_text()
    assert KEY not in text and KEY not in json.dumps(result.to_json())
    assert "***" in result.nodes["l.a"].error
