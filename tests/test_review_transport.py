"""Review of AsyncioTransport (providers/transport.py) and its use in providers/http.py, against
servers on 127.0.0.1 that each test starts itself."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import httpx
import pytest

from moa_dsl.providers.transport import AsyncioTransport

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 20))   # a hang fails in seconds


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


class _Server:
    """HTTP/1.1 keep-alive on 127.0.0.1 in the test's loop: records each request's target in the
    order it arrives; a target in `hold` is answered only once `release` is set."""

    def __init__(self, *, hold: tuple[str, ...] = ()):
        self.targets: list[str] = []
        self.hold = hold
        self.release = asyncio.Event()
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> "_Server":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0)   # let the handlers see it and end

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                self.targets.append(target)
                if target in self.hold:
                    await self.release.wait()
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


def test_bug_a_request_waiting_for_the_pool_is_overtaken_by_every_later_one():
    """max_connections=1. Task A sends /a0../a4 one after the other; B asks while /a0 is in flight,
    so it waits for the pool. When /a0's response is closed, `_release` wakes B -- but A's next
    request runs first (same loop turn, no yield in between), finds the connection idle and takes
    it; B wakes to a full pool and queues again, at the back. This repeats for every request of A:
    B is served last (and with a pool timeout shorter than A's loop it fails with PoolTimeout
    although the connection was free five times). Not a regression: httpcore 1.0.9 does the same,
    but a wake-up should hand the freed slot to the request it wakes."""
    async def main() -> list[str]:
        async with _Server(hold=("/a0",)) as server:
            transport = AsyncioTransport(max_connections=1)
            async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=5) as client:
                async def a() -> None:
                    for i in range(5):
                        (await client.get(f"{server.url}/a{i}")).raise_for_status()

                task_a = asyncio.ensure_future(a())
                await _until(lambda: server.targets == ["/a0"], "/a0 in flight")
                task_b = asyncio.ensure_future(client.get(f"{server.url}/b"))
                for _ in range(5):            # B runs up to its wait for the pool
                    await asyncio.sleep(0)
                assert not task_b.done() and transport.connections == 1
                server.release.set()
                await asyncio.gather(task_a, task_b)
            return server.targets

    targets = _run(main)
    assert targets[:2] == ["/a0", "/b"], f"the waiting request was served after {targets.index('/b') - 1} later ones: {targets}"
