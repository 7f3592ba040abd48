"""Soak: thousands of calls through one Session while the loopback server fails at random (seeded):
429s, 500s, resets, malformed bodies and hangs that only a timeout ends. The run must end (never
hang), every node ok, failed with a message that says what happened, or skipped because its inputs
failed; the bound must hold; nothing may be left running afterwards."""
from __future__ import annotations

import asyncio
import random
import threading

import pytest

from moa_dsl import loads
from moa_dsl.providers import http
from moa_dsl.runtime.scheduler import Session
from moa_dsl.testing import FakeLLMServer

from conftest import KEY

pytestmark = pytest.mark.slow
WIDTH = 10          # proposers per item
ITEMS = 220         # 220 * 11 = 2,420 nodes, more requests with the retries
BOUND = 24
TIMEOUT_S = 0.4     # per request: what ends a hang
FAULTS = [("429", 6), ("500", 6), ("503", 2), ("reset", 4), ("invalid_json", 1), ("hang", 1)]


def topology(url: str) -> str:
    members = ", ".join(f'fake:"m{i}"' for i in range(WIDTH))
    return (f'provider fake = openai {{ base_url = "{url}", api_key = env("K"), retries = 2, timeout = {TIMEOUT_S} }}\n'
            f"layer w = propose [{members}]\n"
            'node final = aggregate fake:"agg" <- w { min_inputs = 3 }\n')


def inject_random_faults(server: FakeLLMServer, rng: random.Random) -> dict[str, int]:
    """About 8% of first attempts meet a fault; consecutive ones on a model can exhaust the retries."""
    kinds = [k for k, weight in FAULTS for _ in range(weight)]
    counts: dict[str, int] = {}
    for model in [f"m{i}" for i in range(WIDTH)] + ["agg"]:
        for _ in range(rng.randint(ITEMS // 20, ITEMS // 8)):
            kind = rng.choice(kinds)
            times = rng.choice((1, 1, 1, 2, 3))   # 3 in a row: the call fails for good (retries = 2)
            server.inject(model, kind, retry_after=0.01 if kind == "429" else None, times=times)
            counts[kind] = counts.get(kind, 0) + times
    return counts


class InFlight:
    """Calls in flight as the runner reports them, across every run of the batch: from each attempt's
    `request_sent` to its `retry` (a call waiting to retry gives its slot back) or the node's end.
    Events reach listeners synchronously on the one loop, so counting them gives the exact order."""

    def __init__(self):
        self.now = self.peak = 0

    def __call__(self, e) -> None:
        if e.kind == "request_sent":
            self.now += 1
            self.peak = max(self.peak, self.now)
        elif e.kind in ("retry", "node_failed") or (e.kind == "node_finished" and e.data["status"] == "ok"):
            self.now -= 1


# How an attempt ended, from its error text. Only an attempt that got an answer (an HTTP status, a
# body, good or malformed) is known to have reached the server: it records a request before answering.
# One that timed out or lost its connection may have ended before its request was read: a connect
# that waits out the timeout on a starved loop (a loaded machine) never writes a byte, the node counts
# the attempt and retries, and the server records nothing.
UNCERTAIN = ("timed out", "connection failed")


class Outcomes:
    """Every `request_sent` ends in exactly one `retry` or `node_failed` (with the error) or an ok
    `node_finished`: count them as answered, or uncertain (no answer: the server may not have seen it)."""

    def __init__(self):
        self.sent = self.answered = self.uncertain = 0

    def __call__(self, e) -> None:
        if e.kind == "request_sent":
            self.sent += 1
        elif e.kind in ("retry", "node_failed"):
            if any(m in e.data["error"] for m in UNCERTAIN):
                self.uncertain += 1
            else:
                self.answered += 1
        elif e.kind == "node_finished" and e.data["status"] == "ok":
            self.answered += 1


@pytest.mark.timeout(240)
def test_soak_with_random_faults_ends_cleanly(monkeypatch, tmp_path):
    monkeypatch.setattr(http, "DEFAULT_BACKOFF", http.Backoff(base_s=0.002, cap_s=0.02))
    rng = random.Random(20240611)
    threads_before = set(threading.enumerate())
    with FakeLLMServer(default_latency=0.003) as server:
        injected = inject_random_faults(server, rng)
        pipe = loads(topology(server.url))
        in_flight, outcomes = InFlight(), Outcomes()

        def on_event(e) -> None:
            in_flight(e)
            outcomes(e)

        async def soak():
            async with Session(pipe, concurrency=BOUND, cache=True, cache_dir=tmp_path / "cache",
                               environ={"K": KEY}) as session:
                runs = (session.run(f"soak question {i}", on_event=on_event) for i in range(ITEMS))
                results = await asyncio.wait_for(asyncio.gather(*runs), timeout=180)
            # The loop's async-generator finalizers (httpx streams cut by a fault) may still be closing
            # sockets: they must finish promptly; anything still pending after that has leaked.
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others, timeout=5)
            leftovers = [t for t in others if not t.done()]
            return results, leftovers

        results, leftovers = asyncio.run(soak())
        requests = server.requests
        served_peak = server.max_in_flight
    assert leftovers == [], "tasks left running after the batch"
    assert set(threading.enumerate()) <= threads_before, "threads left running after the batch"

    statuses: dict[str, int] = {}
    attempts = 0
    retried_ok = 0
    for result in results:
        for name, node in result.nodes.items():
            statuses[node.status] = statuses.get(node.status, 0) + 1
            attempts += node.attempts
            retried_ok += node.status == "ok" and node.attempts > 1
            if node.status == "failed":
                assert node.error.startswith(f"{name}: provider fake, model "), node.error
                assert any(w in node.error for w in ("HTTP 429", "HTTP 500", "HTTP 503", "timed out",
                                                     "connection failed", "not JSON")), node.error
                assert "Traceback" not in node.error and KEY not in node.error
            elif node.status == "skipped":
                assert name == "final" and "min_inputs is 3" in node.error
            else:
                assert node.status == "ok" and node.text
        assert result.status == ("ok" if result.nodes["final"].status == "ok" else "failed")
    assert sum(statuses.values()) == ITEMS * (WIDTH + 1)
    # The faults did bite, some calls recovered on a retry, and no fault failed more than one node.
    assert statuses.get("failed", 0) > 0 and retried_ok > 0, statuses
    assert statuses["failed"] < sum(injected.values())
    # Every request the server saw is an attempt some node counted (none invented), and every attempt
    # that got an answer is one the server saw (none lost). Between the two: attempts that timed out or
    # lost their connection, which may have ended before the server read them (then only the client
    # can count them; they are real attempts, each retried).
    assert outcomes.sent == attempts == outcomes.answered + outcomes.uncertain
    counts = (outcomes.answered, len(requests), attempts)
    assert outcomes.answered <= len(requests) <= attempts, counts
    assert in_flight.now == 0 and 0 < in_flight.peak <= BOUND
    # The server also counts hung requests the client gave up on (they never end): at most one each.
    assert served_peak <= BOUND + injected.get("hang", 0)


@pytest.mark.timeout(120)
def test_soak_rerun_serves_every_success_from_the_cache(monkeypatch, tmp_path):
    """After a faulty batch, the same batch on a healthy server calls only what failed before."""
    monkeypatch.setattr(http, "DEFAULT_BACKOFF", http.Backoff(base_s=0.002, cap_s=0.02))
    rng = random.Random(7)
    items = 60
    with FakeLLMServer(default_latency=0.002) as server:
        for _ in range(40):
            server.inject(f"m{rng.randrange(WIDTH)}", rng.choice(["500", "reset", "429"]), times=3,
                          retry_after=0.005)
        server.inject("m0", "400", times=4)   # not retryable: at least these calls fail, however faults interleave
        pipe = loads(topology(server.url))

        async def batch():
            async with Session(pipe, concurrency=BOUND, cache_dir=tmp_path / "c", environ={"K": KEY}) as s:
                return await asyncio.wait_for(asyncio.gather(*(s.run(f"q{i}") for i in range(items))), 60)

        first = asyncio.run(batch())
        failed_before = sum(n.status != "ok" for r in first for n in r.nodes.values())
        assert failed_before > 0
        server.clear_faults()
        second = asyncio.run(batch())
    assert all(r.status == "ok" for r in second)
    calls = sum(r.usage.calls for r in second)
    hits = sum(r.usage.cache_hits for r in second)
    assert hits == items * (WIDTH + 1) - calls
    # Only the nodes that failed or were skipped call again, and aggregators whose inputs changed.
    proposers_failed = sum(n.status != "ok" for r in first for name, n in r.nodes.items() if name != "final")
    assert calls <= failed_before + items and calls >= proposers_failed
