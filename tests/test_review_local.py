"""Review of the local provider's server processes and its interplay with the runner's retry slots,
against the real llama.cpp server (smollm2-135m, already downloaded)."""
from __future__ import annotations

import asyncio

import pytest

import moa_dsl
from moa_dsl.providers import local

pytestmark = pytest.mark.local_models

HANG_GUARD_S = 30.0    # not a speed assertion: the run takes a few seconds, or never ends


@pytest.fixture(scope="module")
def smol():
    return local.resolve("smollm2-135m")


def test_bug_a_local_provider_with_max_concurrency_deadlocks_when_a_call_waits_to_retry(smol, cache_dir):
    """`provider loc = local { max_concurrency = 1 }`, two nodes, a retryable failure (a timeout).

    The runner gives the call's provider slot back while it waits to retry (_Slots.sleep), but
    LocalProvider.complete still holds its own semaphore across every attempt and wait. The second
    call takes the runner's provider slot and blocks on LocalProvider's semaphore; the first, its
    wait over, blocks on the runner's provider slot: neither ever moves again."""
    pipe = moa_dsl.loads(
        'provider loc = local { max_concurrency = 1 }\n'
        'model smol = loc:"smollm2-135m"\n'
        'defaults { max_tokens = 4, timeout = 0.001, retries = 1 }\n'
        'layer ps = propose [smol, smol] { temperature = 0.1 }\n'
        'node agg = aggregate smol <- ps\n'
        'output agg\n')
    local.serve(smol)   # warm: the load is not part of what is measured

    async def go():
        return await asyncio.wait_for(pipe.arun("Say hi.", cache=False), HANG_GUARD_S)

    try:
        result = asyncio.run(go())
    except (asyncio.TimeoutError, TimeoutError):
        pytest.fail(f"the run was still stuck after {HANG_GUARD_S:g} s: "
                    "LocalProvider's semaphore and the runner's provider slot wait for each other")
    # Every call timed out (0.001 s): each proposer fails after its retry, the aggregator is skipped.
    assert {r.status for n, r in result.nodes.items() if n != "agg"} == {"failed"}
