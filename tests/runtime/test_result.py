"""RunResult / NodeResult / Usage: the README's --json shape and the token accounting."""
from __future__ import annotations

import json

import pytest

from moa_dsl.errors import RunFailed
from moa_dsl.runtime.events import Event, TraceWriter
from moa_dsl.runtime.result import NodeResult, RunResult, Usage


def _result(status="ok"):
    nodes = {
        "a": NodeResult("cached", "m1", "p", "A", 3, 4, 0.0, 0, None, 0.01, 0.01),
        "b": NodeResult("failed", "m2", "p", None, 0, 0, 0.5, 4, "HTTP 500", 0.0, 0.5),
        "final": NodeResult(status, "m3", "p", "F" if status == "ok" else None, 10, 20, 1.25, 1,
                            None if status == "ok" else "skipped: 0 of 2", 0.5, 1.75),
    }
    usage = Usage(prompt_tokens=10, completion_tokens=20, calls=2, cache_hits=1, saved_prompt_tokens=3,
                  saved_completion_tokens=4)
    return RunResult("F" if status == "ok" else None, "final", "ok" if status == "ok" else "failed", 1.8,
                     usage, nodes)


def test_to_json_is_exactly_the_interface_shape():
    data = _result().to_json()
    assert data == json.loads(json.dumps(data))
    assert list(data) == ["output", "output_node", "status", "elapsed_s", "usage", "nodes"]
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "calls": 2, "cache_hits": 1,
                             "cost_usd": 0.0}
    assert data["nodes"]["a"] == {
        "status": "cached", "model": "m1", "provider": "p", "text": "A",
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}, "latency_s": 0.0, "attempts": 0,
        "error": None, "started_s": 0.01, "finished_s": 0.01, "reason": None, "cost_usd": None}
    assert data["nodes"]["b"]["error"] == "HTTP 500" and data["nodes"]["b"]["text"] is None


def test_summary_mentions_saved_tokens_and_markdown():
    r = _result()
    assert r.summary() == "ok: 2 calls, 1 cache hits, 10 prompt + 20 completion tokens (7 saved by the cache), 1.80s"
    assert r._repr_markdown_().endswith("\n\nF")


def test_raise_for_status():
    assert _result().raise_for_status().ok
    failed = _result("skipped")
    with pytest.raises(RunFailed, match="'final' did not answer: skipped") as info:
        failed.raise_for_status()
    assert info.value.result is failed


def test_trace_writer_appends_lines_with_ts_and_extra(tmp_path):
    path = tmp_path / "t.jsonl"
    for i in range(2):
        w = TraceWriter(path)
        w.write(Event("node_started", 0.5, "a", {"model": "m"}), item=i)
        w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["item"] for x in lines] == [0, 1]
    assert lines[0]["t"] == 0.5 and lines[0]["ts"] > 1e9 and lines[0]["data"] == {"model": "m"}
