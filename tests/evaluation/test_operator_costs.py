"""`moa eval`'s per-item ledger on the new operators (a real run against the FakeLLMServer): a window
counts each of its calls, a vote and an agreeing aggregator none, a cancelled input what it spent;
a quorum's latency is that of the K inputs it read."""
from __future__ import annotations

import asyncio

import pytest

from moa_dsl.evaluation.data import Item
from moa_dsl.evaluation.latency import LatencyLedger, run_item
from moa_dsl.runtime.scheduler import Session

from conftest import KEY
from run_helpers import node, served

PRICE = [1.0, 2.0]


def _item(session):
    async def go():
        async with session:
            return await run_item(session, Item(0, ("q?",), "test"), ledger=LatencyLedger(None))
    return asyncio.run(go())


def test_window_vote_agree_and_cancelled_calls_are_counted_as_made(make_server, cache_dir):
    folds = iter(range(100))
    server = make_server(api_key=KEY, latency={"slow": 30.0},
                         responder={**{n: (lambda m, b: "same") for n in "abcd"},
                                    "m-seq": lambda m, b: f"fold {next(folds)}", "*": lambda m, b: f"{m} says"})
    names = ["a", "b", "c", "d"]
    pipe = served({**{n: node("propose", model=n, price=PRICE) for n in names},
                   "slow": node("propose", model="slow", price=PRICE),
                   "seq": node("aggregate", names, window=2, price=PRICE),          # 3 calls
                   "same": node("aggregate", names, agree=True, price=PRICE),       # no call
                   "maj": node("vote", ["seq", "same"]),                            # no call
                   "q": node("aggregate", ["maj", "slow"], quorum=1, price=PRICE)}, # slow cancelled
                  "q", server.url)
    run = _item(Session(pipe, cache_dir=cache_dir, environ={"FAKE_KEY": KEY}))
    assert run.status == "ok"
    made = len(server.requests)
    assert made == 4 + 1 + 3 + 1            # proposers, slow (sent, then abandoned), seq's folds, q
    assert run.calls == made
    tokens = run.prompt_tokens + run.completion_tokens
    assert run.cost_usd is not None and run.cost_usd == pytest.approx(
        (run.prompt_tokens * PRICE[0] + run.completion_tokens * PRICE[1]) / 1e6) and tokens > 0
    # rerun from the cache: the topology's cost is the same, the cancelled call is not in it this time
    again = _item(Session(pipe, cache_dir=cache_dir, environ={"FAKE_KEY": KEY}))
    assert again.calls in (made - 1, made)     # slow may or may not have been sent before the quorum
