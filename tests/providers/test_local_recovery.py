"""The local provider when its llama.cpp server dies or a call waits to retry, against the real
server (smollm2-135m). Each test failed before the fix its docstring names."""
from __future__ import annotations

import asyncio

import pytest

import moa_dsl
from moa_dsl.providers.local import llamacpp as local

pytestmark = pytest.mark.local_models

HANG_GUARD_S = 15.0   # not a speed assertion: the run takes about a second once fixed, or never ends


@pytest.fixture(scope="module")
def smol():
    return local.resolve("smollm2-135m")


def test_a_local_provider_with_max_concurrency_does_not_deadlock_when_a_call_waits_to_retry(smol, cache_dir):
    """Before the fix: `provider loc = local { max_concurrency = 1 }`, two nodes, a retryable failure (a timeout).

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


def _ask(provider, *, retries: int = 0, node: str = "n"):
    from moa_dsl.providers.base import CallRequest

    return provider.complete(CallRequest(node, "smollm2-135m", [{"role": "user", "content": "Say hi."}],
                                         {"max_tokens": 4, "temperature": 0}, retries=retries))


def _kill_server(path) -> None:
    import os
    import signal

    proc = local._servers[path].server.proc
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def quick_backoff(monkeypatch):
    from moa_dsl.providers import http

    monkeypatch.setattr(http, "DEFAULT_BACKOFF", http.Backoff(base_s=0.05))


def test_calls_still_retrying_on_a_dead_server_fail_with_a_local_model_error(smol, quick_backoff):
    """Before the fix: A layer samples one local model twice, with retries; its server dies. The first call to give
    up closes the shared client (LocalProvider._complete); the other, still between retries, then
    sends on that closed client and fails with `RuntimeError: Cannot send a request, as the client has
    been closed.` instead of the LocalModelError that says what happened."""
    async def go():
        provider = local.LocalProvider(name="local")
        try:
            assert (await _ask(provider)).text        # the client exists, the server is up
            _kill_server(smol)
            return await asyncio.gather(_ask(provider, retries=2, node="a"), _ask(provider, retries=2, node="b"),
                                        return_exceptions=True)
        finally:
            await provider.aclose()

    outcomes = asyncio.run(go())
    assert [type(o).__name__ for o in outcomes] == ["LocalModelError", "LocalModelError"], outcomes


def test_a_second_provider_recovers_once_another_restarted_the_dead_server(smol):
    """Before the fix: Two sessions in one process (moa eval runs several topologies at once) each have a
    LocalProvider with a client on the same server. The server dies; session A's call reports it and
    A's next call starts a new server on a new port. Session B's client still points at the dead
    port: exit_code() now sees the new server alive, so B's error is a bare connection failure and B
    keeps its stale client -- every later call of B fails, for the rest of the run."""
    async def go():
        a, b = local.LocalProvider(name="local"), local.LocalProvider(name="local")
        try:
            assert (await _ask(a)).text and (await _ask(b)).text
            _kill_server(smol)
            with pytest.raises(moa_dsl.LocalModelError):
                await _ask(a)
            assert (await _ask(a)).text                  # A started a new server
            first = await asyncio.gather(_ask(b), return_exceptions=True)
            second = await asyncio.gather(_ask(b), return_exceptions=True)
            return first[0], second[0]
        finally:
            await a.aclose()
            await b.aclose()

    first, second = asyncio.run(go())
    # B's call may fail once (it was on the old server), but not forever.
    assert not isinstance(second, BaseException), f"B still fails after the restart: {second!r}"
