"""`arun` / `run_blocking` / `plan` on real `.moa` text against the FakeLLMServer on 127.0.0.1:
caching, failures, retries, streaming, events and traces."""
from __future__ import annotations

import asyncio
import json

import pytest

from moa_dsl import loads
from moa_dsl.errors import ConfigError
from moa_dsl.runtime import arun, plan, run_blocking

from conftest import KEY

ENV = {"FAKE_KEY": KEY}


def source(url: str, extra: str = "") -> str:
    return f"""
provider fake = openai {{ base_url = "{url}", api_key = env("FAKE_KEY") }}
layer first = propose [fake:"a", fake:"b", fake:"c"]
node final = aggregate fake:"agg" <- first {extra}
"""


def go(pipe, query="Why is the sky blue?", **kw):
    kw.setdefault("environ", ENV)
    return asyncio.run(arun(pipe, query, **kw))


def test_second_identical_run_sends_nothing_and_returns_the_same(server, cache_dir):
    pipe = loads(source(server.url))
    first = go(pipe, cache_dir=cache_dir)
    assert first.status == "ok" and first.usage.calls == 4 and first.usage.cache_hits == 0
    assert len(server.requests) == 4
    tokens: list[str] = []
    second = go(pipe, cache_dir=cache_dir, on_token=tokens.append)
    assert len(server.requests) == 4
    assert second.output == first.output
    assert {n: r.text for n, r in second.nodes.items()} == {n: r.text for n, r in first.nodes.items()}
    assert all(r.status == "cached" for r in second.nodes.values())
    assert second.usage.calls == 0 and second.usage.cache_hits == 4
    # tokens saved are reported per node, and not counted as spent
    assert second.nodes["final"].usage == first.nodes["final"].usage
    assert second.usage.prompt_tokens == 0
    assert second.usage.saved_prompt_tokens == first.usage.prompt_tokens
    # the cached output is streamed as one token event
    assert tokens == [first.output]
    assert [e.kind for e in second.events if e.node == "final"] == ["cache_hit", "token", "node_finished"]


def test_no_cache_neither_reads_nor_writes(server, cache_dir):
    pipe = loads(source(server.url))
    go(pipe, cache=False, cache_dir=cache_dir)
    go(pipe, cache_dir=cache_dir)           # nothing was written: all called again
    assert len(server.requests) == 8
    go(pipe, cache=False, cache_dir=cache_dir)  # the cache is there now, but not read
    assert len(server.requests) == 12


def test_refresh_calls_again_and_overwrites(server, cache_dir):
    pipe = loads(source(server.url))
    go(pipe, cache_dir=cache_dir)
    server.responder = lambda model, body: f"fresh {model}"
    refreshed = go(pipe, cache_dir=cache_dir, refresh=True)
    assert len(server.requests) == 8 and refreshed.usage.calls == 4
    again = go(pipe, cache_dir=cache_dir)
    assert len(server.requests) == 8
    assert again.output == "fresh agg" == refreshed.output


def test_node_cache_false_always_calls(server, cache_dir):
    pipe = loads(source(server.url, "{ cache = false }"))
    go(pipe, cache_dir=cache_dir)
    second = go(pipe, cache_dir=cache_dir)
    assert [r.model for r in server.requests[4:]] == ["agg"]
    assert second.nodes["final"].status == "ok" and second.nodes["first.a"].status == "cached"


def test_failed_proposer_aggregator_runs_on_the_rest_and_errors_are_not_cached(server, cache_dir):
    pipe = loads(source(server.url))
    server.inject("b", "400", message="bad request for b")
    result = go(pipe, cache_dir=cache_dir)
    assert result.status == "ok"
    b = result.nodes["first.b"]
    assert b.status == "failed" and "bad request for b" in b.error and b.attempts == 1
    system = server.requests_for("agg")[0].body["messages"][0]["content"]
    assert system.count("\n1. a on") == 1 and "\n2. c on" in system and "b on" not in system
    again = go(pipe, cache_dir=cache_dir)      # b was not cached: called again, and now succeeds
    assert again.nodes["first.b"].status == "ok"
    assert again.nodes["first.a"].status == "cached"


def test_retry_is_reported_and_attempts_counted(server, cache_dir):
    server.inject("a", "500", retry_after=0.01)
    result = go(loads(source(server.url)), cache_dir=cache_dir)
    assert result.nodes["first.a"].attempts == 2
    retries = [e for e in result.events if e.kind == "retry"]
    assert [e.node for e in retries] == ["first.a"]
    assert result.usage.calls == 4  # one node called, however many attempts


def test_below_min_inputs_and_failed_output(server, cache_dir):
    pipe = loads(source(server.url, "{ min_inputs = 3 }"))
    server.inject("c", "401")
    result = go(pipe, cache_dir=cache_dir)
    assert result.status == "failed" and result.output is None
    assert result.nodes["final"].status == "skipped"
    assert not server.requests_for("agg")
    server.inject("agg", "400", message="nope")
    result = go(loads(source(server.url)), cache_dir=cache_dir)
    assert result.status == "failed" and result.nodes["final"].status == "failed"
    assert result.to_json()["status"] == "failed"


def test_events_order_and_trace_without_credentials(server, cache_dir, tmp_path):
    trace = tmp_path / "trace.jsonl"
    seen = []
    result = go(loads(source(server.url)), cache_dir=cache_dir, trace=trace, on_event=seen.append)
    assert seen == result.events
    kinds = [e.kind for e in seen]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    final = [e.kind for e in seen if e.node == "final"]
    assert final[:2] == ["node_started", "request_sent"] and final[-1] == "node_finished"
    assert "token" in final
    # every final event comes after every proposer finished
    t_final = min(e.t for e in seen if e.node == "final")
    assert t_final >= max(e.t for e in seen if e.kind == "node_finished" and e.node != "final")
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    # the trace is every event but the output's tokens (the spec's list has no token events)
    assert [x["kind"] for x in lines] == [e.kind for e in seen if e.kind != "token"]
    assert all({"ts", "t", "kind", "node", "data"} <= set(x) for x in lines)
    assert lines[-1]["data"]["status"] == "ok"
    assert KEY not in trace.read_text()
    for f in cache_dir.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_to_json_shape(server, cache_dir):
    data = go(loads(source(server.url)), cache_dir=cache_dir).to_json()
    assert set(data) == {"output", "output_node", "status", "elapsed_s", "usage", "nodes"}
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens", "calls", "cache_hits", "cost_usd"}
    node = data["nodes"]["final"]
    # `selected`, `votes` and `agreed` appear only on the nodes they apply to (rank, vote, agree)
    assert set(node) == {"status", "model", "provider", "text", "usage", "latency_s", "attempts", "error",
                         "started_s", "finished_s", "reason", "cost_usd"}
    assert set(node["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert data["nodes"]["first.a"]["finished_s"] <= node["started_s"] <= node["finished_s"]
    json.dumps(data)


def test_missing_key_is_one_config_error_before_any_call(server, cache_dir):
    with pytest.raises(ConfigError, match="FAKE_KEY"):
        go(loads(source(server.url)), environ={}, cache_dir=cache_dir)
    assert server.requests == []


def test_bad_query_is_a_clear_error(server, cache_dir):
    with pytest.raises(ConfigError, match="last message"):
        go(loads(source(server.url)), [{"role": "assistant", "content": "x"}], cache_dir=cache_dir)


def test_run_blocking_in_a_script_and_inside_a_running_loop(server, cache_dir):
    pipe = loads(source(server.url))
    plain = run_blocking(pipe, "q", environ=ENV, cache_dir=cache_dir)

    async def notebook_cell():  # what Jupyter does: a loop is already running in this thread
        return pipe.run("q", environ=ENV, cache_dir=cache_dir)

    inside = asyncio.run(notebook_cell())
    assert plain.status == inside.status == "ok" and inside.output == plain.output
    assert inside.usage.cache_hits == 4


def test_plan_counts_expected_cache_hits(server, cache_dir):
    pipe = loads(source(server.url))
    cold = plan(pipe, "q", cache_dir=cache_dir, environ=ENV)
    assert [(r.node, r.cache) for r in cold] == [
        ("first.a", "miss"), ("first.b", "miss"), ("first.c", "miss"), ("final", "unknown")]
    assert cold[-1].inputs == ("first.a", "first.b", "first.c")
    go(pipe, "q", cache_dir=cache_dir)
    warm = plan(pipe, "q", cache_dir=cache_dir, environ=ENV)
    assert [r.cache for r in warm] == ["hit"] * 4 and sum(r.calls for r in warm) == 0
    go(loads(source(server.url, "{ temperature = 0.1 }")), "q", cache_dir=cache_dir)
    assert len(server.requests) == 5  # proposers cached, new aggregator request
    assert plan(pipe, "other", cache_dir=cache_dir, environ=ENV)[0].cache == "miss"
    assert server.requests and len(server.requests) == 5  # planning calls nothing
    assert [r.cache for r in plan(pipe, "q", cache_dir=cache_dir, environ={})] == ["unknown"] * 4


def test_identical_calls_in_flight_share_one_answer(server, cache_dir):
    """Two nodes sending the same request: one call, and both get the answer a rerun would give."""
    pipe = loads(f"""
provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY") }}
model m = fake:"twin" {{ temperature = 1.0 }}
node a = propose m
node b = propose m
node other = propose fake:"other"
node final = aggregate fake:"agg" <- a, b, other
""")
    server.latency = {"twin": 0.2}
    first = go(pipe, cache_dir=cache_dir)
    assert first.status == "ok"
    assert [r.body["model"] for r in server.requests].count("twin") == 1
    assert first.nodes["a"].text == first.nodes["b"].text
    assert sorted(first.nodes[n].status for n in "ab") == ["cached", "ok"]
    second = go(pipe, cache_dir=cache_dir)
    assert {n: r.text for n, r in second.nodes.items()} == {n: r.text for n, r in first.nodes.items()}


def test_a_failed_call_does_not_fail_the_identical_one_waiting_for_it(server, cache_dir):
    pipe = loads(f"""
provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY"), retries = 0 }}
node a = propose fake:"twin"
node b = propose fake:"twin"
node final = aggregate fake:"agg" <- a, b
""")
    server.inject("twin", "400", message="first one refused")
    result = go(pipe, cache_dir=cache_dir)
    assert sorted(result.nodes[n].status for n in "ab") == ["failed", "ok"]  # the waiter called for itself
    assert [r.body["model"] for r in server.requests].count("twin") == 2
    assert result.status == "ok"


def test_sessions_can_share_one_bound(server, cache_dir):
    from moa_dsl.runtime.scheduler import Session

    async def main():
        limiter = asyncio.Semaphore(1)
        pipes = [loads(source(server.url)), loads(source(server.url, "{ temperature = 0.1 }"))]
        sessions = [Session(p, cache=False, environ=ENV, limiter=limiter) for p in pipes]
        try:
            await asyncio.gather(*(s.run(f"q{i}") for i, s in enumerate(sessions)))
        finally:
            for s in sessions:
                await s.aclose()

    server.latency = {"a": 0.05, "b": 0.05, "c": 0.05}
    asyncio.run(main())
    assert len(server.requests) == 8 and server.max_in_flight == 1


@pytest.mark.parametrize("provider_bound", [False, True], ids=["global-bound", "provider-bound"])
def test_a_call_waiting_to_retry_gives_its_slot_to_the_others(server, cache_dir, provider_bound):
    """Bound 1 (the run's, or the provider's max_concurrency): `a` gets a 429 asking for 1 s. While
    it waits, `b` and `c` are served; `a` is retried after them, and the bound still holds."""
    text = source(server.url)
    if provider_bound:
        text = text.replace('api_key = env("FAKE_KEY") }', 'api_key = env("FAKE_KEY"), max_concurrency = 1 }')
    server.inject("a", "429", retry_after=1.0)
    result = go(loads(text), concurrency=1 if not provider_bound else 8, cache=False)
    assert result.status == "ok" and result.nodes["first.a"].attempts == 2
    order = [(r.model, r.fault) for r in server.requests]
    assert order == [("a", "429"), ("b", None), ("c", None), ("a", None), ("agg", None)]
    assert server.max_in_flight == 1
