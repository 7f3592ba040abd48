"""`base_url` as a list: replicas of one model server, over real loopback servers (FakeLLMServer).

Routing to the replica with the fewest calls in flight, moving off a replica that cannot be reached
without spending `retries`, ordinary retries for 429/5xx, one cache across replicas, `max_concurrency`
per replica, and a streamed call that has shown text never moved. No timed assertions: latencies only
keep calls in flight long enough to overlap.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

import moa_dsl
from moa_dsl.config import ProviderConfig
from moa_dsl.errors import ProviderConnectionError, ProviderError, ProviderHTTPError
from moa_dsl.providers import Backoff, CallRequest, ProviderPool, ReplicatedProvider
from moa_dsl.runtime import Session
from moa_dsl.testing import FakeLLMServer

FAST = Backoff(base_s=0.001, cap_s=0.01)
LAYER = 12


def _topology(urls: list[str], *, retries: int = 0, extra: str = "") -> Any:
    listed = ", ".join(f'"{u}"' for u in urls)
    return moa_dsl.loads(
        f'provider gpus = openai {{ base_url = [{listed}], retries = {retries}, timeout = 30{extra} }}\n'
        f'layer drafts = propose [gpus:"m" * {LAYER}] {{ seed = 1 }}\n'
        'node final = aggregate gpus:"m" <- drafts\n')


def _request(i: int, *, stream: bool = False, retries: int = 0) -> CallRequest:
    return CallRequest(node=f"n{i}", model="m", messages=[{"role": "user", "content": f"question {i}"}],
                       params={"max_tokens": 16}, stream=stream, retries=retries, timeout=30)


def _pool(urls: list[str], **options: Any) -> ProviderPool:
    return ProviderPool({"gpus": ProviderConfig("gpus", "openai", tuple(urls), **options)}, backoff=FAST)


def _dead_url() -> str:
    """A loopback URL nothing listens on (a server started and closed: its port refuses)."""
    server = FakeLLMServer().start()
    url = server.url
    server.close()
    return url


async def _run(pipe: Any, query: str, *, cache_dir: Any = None, events: list | None = None, **options: Any) -> Any:
    async with Session(pipe, cache=cache_dir is not None, cache_dir=cache_dir, **options) as session:
        return await session.run(query, on_event=events.append if events is not None else None)


async def _until(condition, what: str) -> None:
    for _ in range(2000):   # a bound, not a measure: at most ~20 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


# -- a replica dies ---------------------------------------------------------------------------------

def test_a_replica_dying_mid_run_loses_nothing_and_spends_no_retries(make_server, cache_dir):
    """Its calls in flight are cut off and land on the others; `retries = 0` still succeeds."""
    servers = [make_server(latency=0.3) for _ in range(3)]
    victim = servers[1]
    pipe = _topology([s.url for s in servers], retries=0)
    events: list = []

    async def main():
        run = asyncio.create_task(_run(pipe, "why is the sky blue?", cache_dir=cache_dir, events=events,
                                       concurrency=32))
        await _until(lambda: victim.in_flight > 0, "a call in flight on the victim")
        await asyncio.to_thread(victim.close)
        return await run

    result = asyncio.run(main())
    assert result.status == "ok", result.nodes
    assert all(n.status == "ok" for n in result.nodes.values()) and len(result.nodes) == LAYER + 1
    moves = [e for e in events if e.kind == "retry"]
    assert moves, "the victim had calls in flight when it died"
    assert all(e.data["moved"] and e.data["delay_s"] == 0 and e.data["replica"] == victim.url for e in moves)
    # Each node's last request is the one answered: the cut ones went elsewhere, one request each.
    last = {e.node: e.data["replica"] for e in events if e.kind == "request_sent"}
    assert len(last) == LAYER + 1 and {e.node for e in moves} <= {n for n, url in last.items() if url != victim.url}
    for server in servers:
        if server is not victim:
            assert len(server.requests) == sum(url == server.url for url in last.values())
    assert all(result.nodes[e.node].attempts == 2 for e in moves)   # one cut, one answered: no retry spent
    # The aggregator started after the death: the victim was set aside, so it went straight elsewhere.
    sent = [e for e in events if e.kind == "request_sent" and e.node == "final"]
    assert len(sent) == 1 and sent[0].data["replica"] != victim.url


def test_a_replica_refusing_from_the_start_is_set_aside_and_costs_no_retries(make_server):
    servers = [make_server(latency=0.05) for _ in range(2)]
    dead = _dead_url()
    pool = _pool([dead, *(s.url for s in servers)])
    provider = pool.get("gpus")
    assert isinstance(provider, ReplicatedProvider)
    events: list = []

    async def main():
        try:
            first = await asyncio.gather(*(provider.complete(_request(i), emit=lambda k, d: events.append((k, d)))
                                           for i in range(6)))
            assert provider.set_aside() == (dead,)
            before = len(events)
            later = await asyncio.gather(*(provider.complete(_request(i), emit=lambda k, d: events.append((k, d)))
                                           for i in range(6, 12)))
            return first + later, events[before:]
        finally:
            await pool.aclose()

    done, later_events = asyncio.run(main())
    assert len(done) == 12 and all(c.text for c in done)
    assert sum(len(s.requests) for s in servers) == 12
    # Set aside: once found dead, no later call tries it.
    assert not [d for k, d in later_events if k == "request_sent" and d["replica"] == dead]
    moved = [c for c in done if c.attempts > 1]
    assert moved and all(c.attempts == 2 for c in moved)


def test_every_replica_dead_fails_naming_the_replicas_tried():
    dead = [_dead_url(), _dead_url()]

    async def main(retries: int):
        pool = _pool(dead)
        try:
            await pool.get("gpus").complete(_request(0, retries=retries))
        finally:
            await pool.aclose()

    with pytest.raises(ProviderConnectionError) as info:
        asyncio.run(main(0))
    message = str(info.value)
    assert "provider gpus" in message and "gave up after 2 attempts" in message
    assert dead[0] in message and dead[1] in message and info.value.attempts == 2
    # With retries left, it probes the replica whose set-aside ends first: 2 moves' worth + 2 retries.
    with pytest.raises(ProviderConnectionError) as info:
        asyncio.run(main(2))
    assert info.value.attempts == 4


# -- ordinary retries ---------------------------------------------------------------------------------

def test_a_500_counts_against_retries_and_is_not_a_move(make_server):
    servers = [make_server() for _ in range(3)]
    servers[0].inject("m", "500")

    async def main(retries: int, events: list):
        pool = _pool([s.url for s in servers])
        try:
            return await pool.get("gpus").complete(_request(0, retries=retries),
                                                   emit=lambda k, d: events.append((k, d)))
        finally:
            await pool.aclose()

    with pytest.raises(ProviderHTTPError) as info:
        asyncio.run(main(0, []))
    assert info.value.status == 500 and servers[0].url in str(info.value)
    assert [len(s.requests) for s in servers] == [1, 0, 0]

    servers[0].inject("m", "429", retry_after=0.01)
    events: list = []
    done = asyncio.run(main(1, events))
    assert done.text and done.attempts == 2
    (retry,) = [d for k, d in events if k == "retry"]
    assert "moved" not in retry and "429" in retry["error"] and retry["delay_s"] >= 0.01
    assert [d["attempt"] for k, d in events if k == "request_sent"] == [1, 2]


def test_a_streamed_call_that_showed_text_is_not_moved(make_server):
    servers = [make_server() for _ in range(2)]
    servers[0].inject("m", "reset", tokens=2)
    tokens: list[str] = []

    async def main():
        pool = _pool([s.url for s in servers])
        try:
            return await pool.get("gpus").complete(_request(0, stream=True, retries=3), on_token=tokens.append)
        finally:
            await pool.aclose()

    with pytest.raises(ProviderError) as info:
        asyncio.run(main())
    assert tokens and servers[0].url in str(info.value)
    assert len(servers[1].requests) == 0   # no second copy of the text


def test_a_streamed_call_cut_before_its_first_token_moves(make_server):
    servers = [make_server() for _ in range(2)]
    servers[0].inject("m", "reset", tokens=0)
    tokens: list[str] = []

    async def main():
        pool = _pool([s.url for s in servers])
        try:
            return await pool.get("gpus").complete(_request(0, stream=True, retries=0), on_token=tokens.append)
        finally:
            await pool.aclose()

    done = asyncio.run(main())
    assert "".join(tokens) == done.text and done.attempts == 2 and len(servers[1].requests) == 1


# -- routing and bounds ----------------------------------------------------------------------------

def test_least_in_flight_spreads_concurrent_calls_across_equal_replicas(make_server):
    servers = [make_server(latency=0.1) for _ in range(3)]
    pool = _pool([s.url for s in servers])

    async def main():
        try:
            return await asyncio.gather(*(pool.get("gpus").complete(_request(i)) for i in range(30)))
        finally:
            await pool.aclose()

    assert len(asyncio.run(main())) == 30
    counts = [len(s.requests) for s in servers]
    assert sum(counts) == 30 and all(0 < c <= 15 for c in counts), counts


def test_ties_go_in_list_order(make_server):
    servers = [make_server() for _ in range(3)]
    pool = _pool([s.url for s in servers])

    async def main():
        try:
            for i in range(3):   # one at a time: every replica idle each time
                await pool.get("gpus").complete(_request(i))
        finally:
            await pool.aclose()

    asyncio.run(main())
    assert [len(s.requests) for s in servers] == [3, 0, 0]


def test_max_concurrency_is_per_replica(make_server):
    servers = [make_server(latency=0.1) for _ in range(3)]
    pipe = _topology([s.url for s in servers], extra=", max_concurrency = 2")
    result = asyncio.run(_run(pipe, "q", concurrency=64))
    assert result.status == "ok"
    assert all(s.max_in_flight <= 2 for s in servers), [s.max_in_flight for s in servers]
    assert sum(s.max_in_flight for s in servers) > 2   # more than one replica's worth at once
    assert _pool([s.url for s in servers], max_concurrency=2).get("gpus").max_concurrency == 6


# -- one cache -----------------------------------------------------------------------------------------

def test_one_cache_across_replicas_keyed_by_the_first_url(make_server, cache_dir):
    """A run answered by replica 2 (replica 1 dropped the call) is a cache hit for a rerun, which would
    go to replica 1, and for a single-URL provider at the first URL: the same keys."""
    servers = [make_server() for _ in range(3)]
    urls = [s.url for s in servers]
    pipe = moa_dsl.loads(f'provider gpus = openai {{ base_url = ["{urls[0]}", "{urls[1]}", "{urls[2]}"], '
                         'retries = 0 }\nnode a = propose gpus:"m"\n')
    servers[0].inject("m", "reset")
    first = asyncio.run(_run(pipe, "q", cache_dir=cache_dir))
    assert first.status == "ok" and first.nodes["a"].status == "ok"
    assert [len(s.requests) for s in servers] == [1, 1, 0] and servers[0].requests[0].fault == "reset"

    again = asyncio.run(_run(pipe, "q", cache_dir=cache_dir))
    assert again.nodes["a"].status == "cached" and again.nodes["a"].cache_key == first.nodes["a"].cache_key
    assert [len(s.requests) for s in servers] == [1, 1, 0]

    single = moa_dsl.loads(f'provider gpus = openai {{ base_url = "{urls[0]}" }}\nnode a = propose gpus:"m"\n')
    alone = asyncio.run(_run(single, "q", cache_dir=cache_dir))
    assert alone.nodes["a"].status == "cached" and alone.nodes["a"].cache_key == first.nodes["a"].cache_key


# -- the serve layer ------------------------------------------------------------------------------------

def test_the_serve_layer_shares_one_replicated_client_per_configuration(make_server):
    from moa_dsl.serve.topologies import SharedProviders

    servers = [make_server() for _ in range(2)]
    cfg = ProviderConfig("gpus", "openai", tuple(s.url for s in servers), max_concurrency=3)
    same = ProviderConfig("gpus", "openai", tuple(s.url for s in servers), max_concurrency=3)
    other = ProviderConfig("gpus", "openai", tuple(s.url for s in reversed(servers)), max_concurrency=3)
    shared = SharedProviders(environ={})
    a, b, c = shared.provider(cfg), shared.provider(same), shared.provider(other)
    assert a is b and a is not c and isinstance(a, ReplicatedProvider)
    assert a.endpoint == servers[0].url and c.endpoint == servers[1].url
    assert shared.slots(a)._value == 6   # max_concurrency per replica, two replicas
    asyncio.run(shared.aclose())
