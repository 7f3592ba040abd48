"""The scheduler's shape: dependency-driven starts (no layer barrier), the bounds, failures as values,
cancellation. Hand-built graphs and an in-process provider; no timed assertions, only orderings."""
from __future__ import annotations

import asyncio

import pytest

from moa_dsl.errors import ConfigError
from moa_dsl.runtime.scheduler import arun

from run_helpers import FakePool, FakeProvider, make_pipe, node


def run(pipe, provider, query="q", **kw):
    return asyncio.run(arun(pipe, query, cache=False, pool=FakePool(provider), **kw))


class GatedProvider(FakeProvider):
    """A FakeProvider whose call for node X ends only once the call for `gates[X]` has ended: an
    ordering the test imposes without a clock. A runner that got the order wrong never finishes."""

    def __init__(self, gates, **kw):
        super().__init__(**kw)
        self.gates = dict(gates)
        self.ended: dict[str, asyncio.Event] = {}

    def _ended(self, name: str) -> asyncio.Event:
        return self.ended.setdefault(name, asyncio.Event())

    async def complete(self, req, **kw):
        try:
            if req.node in self.gates:
                await self._ended(self.gates[req.node]).wait()
            return await super().complete(req, **kw)
        finally:
            self._ended(req.node).set()


def test_each_node_starts_when_its_own_inputs_finish_not_its_layer():
    # "layer 1": a and b. c reads only a; d reads only b; e reads a and c; out reads d and e.
    # b's call ends only after e's: a layer barrier (c held until b finished) would never finish,
    # so the run is bounded by a timeout that only a broken scheduler reaches.
    pipe = make_pipe({
        "a": node("propose"), "b": node("propose"),
        "c": node("aggregate", ["a"]), "d": node("aggregate", ["b"]),
        "e": node("aggregate", ["a", "c"]),
        "out": node("aggregate", ["d", "e"]),
    }, "out")
    fake = GatedProvider({"b": "e"})
    result = asyncio.run(asyncio.wait_for(arun(pipe, "q", cache=False, pool=FakePool(fake)), 60))
    assert result.status == "ok"
    s, f = fake.started, fake.finished
    for name in ("c", "d", "e", "out"):
        inputs = pipe.graph.nodes[name]["inputs"]
        last_input = max(f[i] for i in inputs)
        assert s[name] >= last_input                      # never before its inputs
        # right after them: no other call ended between its last input and its start
        assert not [n for n in f if n != name and last_input < f[n] < s[name]], name
    # c and e (second and third "generations") both ran while b, of the first, was still running
    assert s["c"] < f["b"] and s["e"] < f["b"]
    assert f["e"] < f["b"]


def held_until(condition):
    """A FakeProvider `hold`: every call waits until `condition()` has once been true (checked as
    each call starts), so a bound is shown reached by the calls themselves, not by their timing.
    A runner that never lets the condition hold never finishes: the runs below have a timeout."""
    reached = asyncio.Event()

    async def hold(_node: str) -> None:
        if condition():
            reached.set()
        await reached.wait()
    return hold


def max_overlap(*providers: FakeProvider) -> int:
    """The most calls of these providers running at once, from their recorded start/end times."""
    edges = sorted((t, step) for p in providers for (times, step) in ((p.started, 1), (p.finished, -1))
                   for t in times.values())   # at equal times an end (-1) sorts before a start
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_global_bound_is_reached_and_never_exceeded():
    nodes = {f"p{i}": node("propose") for i in range(20)}
    nodes["out"] = node("aggregate", list(nodes))
    fake = FakeProvider(hold=held_until(lambda: fake.running >= 5))
    result = asyncio.run(asyncio.wait_for(arun(make_pipe(nodes, "out"), "q", cache=False, pool=FakePool(fake),
                                               concurrency=5), 60))
    assert result.status == "ok"
    assert fake.max_running == 5


def test_bound_of_one_serialises_everything():
    nodes = {f"p{i}": node("propose") for i in range(6)}
    nodes["out"] = node("aggregate", list(nodes))
    fake = FakeProvider(default_latency=0.005)
    run(make_pipe(nodes, "out"), fake, concurrency=1)
    assert fake.max_running == 1


def test_provider_max_concurrency_bounds_its_calls_without_holding_global_slots():
    # Every call is held until fast has 4 calls running at once: only possible if slow's queued
    # calls (6 of them, behind its 2 running) hold none of the 6 global slots.
    hold = held_until(lambda: fast.running >= 4)
    slow = FakeProvider(name="slow", max_concurrency=2, hold=hold)
    fast = FakeProvider(name="fast", hold=hold)
    nodes = {f"s{i}": node("propose", provider="slow") for i in range(8)}
    nodes.update({f"f{i}": node("propose", provider="fast") for i in range(8)})
    nodes["out"] = node("aggregate", list(nodes), provider="fast")
    from moa_dsl.config import ProviderConfig

    providers = {n: ProviderConfig(n, "openai", f"http://{n}.invalid") for n in ("slow", "fast")}
    result = asyncio.run(asyncio.wait_for(arun(make_pipe(nodes, "out", providers=providers), "q", cache=False,
                                               concurrency=6, pool=FakePool(slow, fast)), 60))
    assert result.status == "ok"
    assert slow.max_running == 2
    # slow's queued calls did not take global slots: fast got the other 4 at once (later, while
    # slow is between calls, fast may briefly hold a fifth), and the global bound held throughout
    assert fast.max_running >= 4
    assert max_overlap(slow, fast) <= 6


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", True])
def test_concurrency_is_validated_up_front(bad):
    fake = FakeProvider()
    with pytest.raises(ConfigError, match="concurrency"):
        run(make_pipe({"a": node("propose")}, "a"), fake, concurrency=bad)
    assert fake.requests == {}


def test_failed_proposer_aggregator_runs_on_the_rest():
    pipe = make_pipe({"a": node("propose"), "b": node("propose"), "c": node("propose"),
                      "out": node("aggregate", ["a", "b", "c"])}, "out")
    fake = FakeProvider(fail={"b"})
    result = run(pipe, fake)
    assert result.status == "ok"
    assert result.nodes["b"].status == "failed" and "scripted failure" in result.nodes["b"].error
    sys_msg = fake.requests["out"].messages[0]["content"]
    assert sys_msg.endswith("\n1. answer of a\n2. answer of c")
    assert result.usage.calls == 4


def test_below_min_inputs_is_skipped_and_so_is_downstream():
    pipe = make_pipe({"a": node("propose"), "b": node("propose"),
                      "mid": node("aggregate", ["a", "b"], min_inputs=2),
                      "side": node("aggregate", ["a"]),
                      "out": node("aggregate", ["mid"])}, "out")
    fake = FakeProvider(fail={"b"})
    result = run(pipe, fake)
    assert result.nodes["mid"].status == "skipped" and "min_inputs is 2" in result.nodes["mid"].error
    assert result.nodes["out"].status == "skipped"
    assert result.nodes["side"].status == "ok"
    assert result.status == "failed" and result.output is None
    assert "mid" not in fake.requests and "out" not in fake.requests
    kinds = [(e.kind, e.node) for e in result.events if e.kind == "node_skipped"]
    assert kinds == [("node_skipped", "mid"), ("node_skipped", "out")]


def test_failed_output_fails_the_run():
    pipe = make_pipe({"a": node("propose"), "out": node("aggregate", ["a"])}, "out")
    result = run(pipe, FakeProvider(fail={"out"}))
    assert result.status == "failed" and result.nodes["out"].status == "failed"
    with pytest.raises(Exception, match="scripted failure"):
        result.raise_for_status()


def test_dead_nodes_are_not_run():
    pipe = make_pipe({"a": node("propose"), "dead": node("propose"), "out": node("aggregate", ["a"])},
                     "out", dead={"dead"})
    fake = FakeProvider()
    result = run(pipe, fake)
    assert "dead" not in fake.requests and "dead" not in result.nodes
    assert set(result.nodes) == {"a", "out"}


def test_missing_key_raises_before_any_call():
    fake = FakeProvider()
    pipe = make_pipe({"a": node("propose")}, "a")
    with pytest.raises(ConfigError, match="missing API key"):
        asyncio.run(arun(pipe, "q", cache=False, pool=FakePool(fake, missing_keys={"fake"})))
    assert fake.requests == {}


def test_cancellation_stops_calls_in_flight_and_reraises():
    nodes = {f"p{i}": node("propose") for i in range(4)}
    nodes["out"] = node("aggregate", list(nodes))
    fake = FakeProvider(default_latency=30)

    async def main():
        task = asyncio.ensure_future(arun(make_pipe(nodes, "out"), "q", cache=False, pool=FakePool(fake)))
        while fake.running < 4:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return fake.running

    assert asyncio.run(main()) == 0
    assert sorted(fake.cancelled) == ["p0", "p1", "p2", "p3"]


def test_output_streams_tokens_and_only_the_output_streams():
    pipe = make_pipe({"a": node("propose"), "out": node("aggregate", ["a"])}, "out")
    fake = FakeProvider()
    tokens: list[str] = []
    result = run(pipe, fake, on_token=tokens.append)
    assert fake.requests["out"].stream is True and fake.requests["a"].stream is False
    assert "".join(tokens) == "answer of out"
    assert [e.data["text"] for e in result.events if e.kind == "token"] == tokens


def test_keyboard_interrupt_inside_a_running_loop_cancels_the_calls():
    # A notebook: run_blocking is called while a loop runs; Ctrl-C arrives as KeyboardInterrupt in
    # the waiting thread, and must cancel the calls running on the worker thread's loop.
    import _thread
    import threading

    from moa_dsl.runtime.scheduler import run_blocking

    nodes = {f"p{i}": node("propose") for i in range(3)}
    nodes["out"] = node("aggregate", list(nodes))
    fake = FakeProvider(default_latency=30)

    def interrupt_when_running():
        while fake.running < 3:
            threading.Event().wait(0.005)
        _thread.interrupt_main()

    async def cell():
        threading.Thread(target=interrupt_when_running, daemon=True).start()
        return run_blocking(make_pipe(nodes, "out"), "q", cache=False, pool=FakePool(fake))

    # Not asyncio.run: its Runner turns SIGINT into a task cancellation; a kernel's loop does not.
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(cell())
    finally:
        loop.close()
    assert sorted(fake.cancelled) == ["p0", "p1", "p2"] and fake.running == 0


def test_gather_or_cancel_in_steps_starts_the_first_before_creating_the_rest_and_cancels_all():
    from moa_dsl.runtime.scheduler import gather_or_cancel

    log: list[str] = []

    async def item(i: int) -> int:
        log.append(f"start {i}")
        await asyncio.sleep(0.01)
        return i

    def items(n: int):
        for i in range(n):
            log.append(f"create {i}")
            yield item(i)

    assert asyncio.run(gather_or_cancel(items(20), step=4)) == list(range(20))   # results in order
    assert log.index("start 0") < log.index("create 19")   # the first ran before the last was created
    log.clear()
    assert asyncio.run(gather_or_cancel(items(20))) == list(range(20))
    assert log.index("start 0") > log.index("create 19")   # without step: all created first

    started: list[asyncio.Task] = []

    async def forever(i: int) -> None:
        started.append(asyncio.current_task())
        await asyncio.sleep(3600)

    async def main() -> None:
        def slow_items():
            for i in range(100):
                yield forever(i)
        task = asyncio.ensure_future(gather_or_cancel(slow_items(), step=1))
        while len(started) < 10:
            await asyncio.sleep(0)
        task.cancel()   # while it is still creating tasks
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert 10 <= len(started) < 100 and all(t.cancelled() for t in started)   # none left running


def test_slots_given_back_for_a_retry_wait_are_not_released_twice_when_it_is_cancelled():
    from moa_dsl.runtime.scheduler import _Slots

    async def main():
        bound, provider = asyncio.Semaphore(2), asyncio.Semaphore(1)
        slots = _Slots(bound, provider)
        await slots.acquire()
        assert (bound._value, provider._value) == (1, 0)
        waiting = asyncio.ensure_future(slots.sleep(3600))
        await asyncio.sleep(0)
        assert (bound._value, provider._value) == (2, 1)      # given back while it waits
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        slots.release()                                        # what the runner's `finally` does
        return bound._value, provider._value

    assert asyncio.run(main()) == (2, 1)                       # not (3, 2)
