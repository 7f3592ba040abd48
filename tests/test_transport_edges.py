"""AsyncioTransport and the providers' use of it at the edges: pool fairness, an unusable CA bundle,
proxy variables that do not apply. Servers on 127.0.0.1 that each test starts. Each test failed
before the fix its docstring names."""
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


def test_a_request_waiting_for_the_pool_is_served_before_later_ones():
    """Before the fix: max_connections=1. Task A sends /a0../a4 one after the other; B asks while /a0 is in flight,
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


def test_an_unreadable_ssl_cert_file_is_a_connect_error_naming_it(monkeypatch, tmp_path):
    """Before the fix: SSL_CERT_FILE naming a missing file, a provider trusting the environment (any non-loopback
    base_url). The SSL context is now built at the first https connection, outside `_connect`'s
    error handling: the request fails with a bare `FileNotFoundError: [Errno 2] No such file or
    directory` -- not an httpx error, so the provider reports it as a node failure that names
    neither SSL_CERT_FILE nor the path (`moa run` prints exactly that)."""
    import ssl
    from pathlib import Path

    tls = Path(__file__).parent / "fixtures" / "tls"
    missing = tmp_path / "no-such-bundle.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(missing))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def main() -> BaseException:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls / "cert.pem", tls / "key.pem")
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        try:
            async with httpx.AsyncClient(transport=AsyncioTransport(trust_env=True), trust_env=False) as client:
                try:
                    await client.get(url)
                except BaseException as exc:   # noqa: BLE001 -- what the caller sees is the point
                    return exc
                raise AssertionError("a request with no usable CA bundle succeeded")
        finally:
            server.close()

    exc = _run(main)
    assert isinstance(exc, httpx.ConnectError), f"{type(exc).__name__}: {exc}"
    assert "SSL_CERT_FILE" in str(exc) and str(missing) in str(exc)


@pytest.mark.parametrize("env", [
    {"ALL_PROXY": "socks5://127.0.0.1:9", "NO_PROXY": "api.example.com"},   # socksio is not installed
    {"HTTPS_PROXY": "ftp://127.0.0.1:9", "NO_PROXY": "api.example.com"},    # a scheme httpx refuses
])
def test_a_proxy_variable_that_does_not_apply_does_not_break_building_the_provider(monkeypatch, env):
    """Before the fix: NO_PROXY exempts the provider's host, so httpx would never use the proxy for it, and the
    provider would use AsyncioTransport. But `_proxied` asks a probe `httpx.AsyncClient(trust_env=True)`,
    whose constructor builds a transport for every proxy variable: the provider (and so `moa run`)
    dies with a traceback -- `ImportError: Using SOCKS proxy, but the 'socksio' package is not
    installed` / `ValueError: Unknown scheme for proxy URL`. Nothing is sent: only construction."""
    from moa_dsl.providers.openai import OpenAIProvider

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        provider = OpenAIProvider(name="p", base_url="https://api.example.com/v1", api_key="sk-test-123456")
    except Exception as exc:   # noqa: BLE001
        pytest.fail(f"building a provider NO_PROXY exempts raised {type(exc).__name__}: {exc}")
    asyncio.run(provider.aclose())


def test_a_connection_handed_to_a_waiter_cancelled_before_it_ran_goes_back_to_the_pool():
    """max_connections=1: /a0 holds the connection, /b waits for it. /a0's body is read, so the
    connection is handed straight to /b's request -- which is cancelled before it runs. The
    connection must come back to the pool (not leak, not close): /c gets it, on the same socket."""
    async def main() -> tuple[list[str], int, int]:
        async with _Server(hold=("/a0",)) as server:
            transport = AsyncioTransport(max_connections=1)
            async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=5) as client:
                first = asyncio.ensure_future(client.send(client.build_request("GET", f"{server.url}/a0"),
                                                          stream=True))
                await _until(lambda: server.targets == ["/a0"], "/a0 in flight")
                waiting = asyncio.ensure_future(client.get(f"{server.url}/b"))
                for _ in range(5):
                    await asyncio.sleep(0)
                server.release.set()
                response = await first      # the head is in; its body is buffered, not yet read
                await response.aread()      # read here: the connection goes to /b's request...
                waiting.cancel()            # ...which is cancelled before it could run
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                (await client.get(f"{server.url}/c")).raise_for_status()
                return server.targets, server.accepted, transport.connections

    targets, accepted, connections = _run(main)
    assert targets == ["/a0", "/c"] and accepted == 1 and connections == 1


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_bare_lf_line_endings_are_read_as_h11_reads_them(framing):
    """Lines ending in a bare LF (RFC 9112 2.2 lets a recipient accept them; h11 does): before, the
    head was never found and the request waited for its read timeout."""
    if framing == "length":
        answer = b"HTTP/1.1 200 OK\nContent-Length: 5\nX-Mixed: yes\r\n\nhello"
    else:
        answer = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nhel\n2;ext=1\nlo\n0\nX-Trailer: t\n\n"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> tuple[list[bytes], str, int]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        try:
            transport = AsyncioTransport()
            async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=5) as client:
                bodies = [(await client.get(url)).content for _ in range(2)]
                last = await client.get(url)
                return bodies, last.headers.get("x-mixed", ""), transport.connections
        finally:
            server.close()

    bodies, mixed, connections = _run(main)
    assert bodies == [b"hello", b"hello"] and connections == 1          # framed right: kept alive
    assert mixed == ("yes" if framing == "length" else "")
