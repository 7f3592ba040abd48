"""HTTP providers' connections (one aiohttp session per provider): kept alive across calls (streamed ones
included), bounded, over real loopback sockets."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from moa_dsl.providers import AnthropicProvider, Backoff, CallRequest, OpenAIProvider
from moa_dsl.providers import transport as transport_module
from moa_dsl.testing import FakeLLMServer

pytestmark = pytest.mark.usefixtures("provider_path")   # tests/conftest.py: the fast path and the httpx path

KEY = "sk-test-pool-0123456789"
FAST = Backoff(base_s=0.001, cap_s=0.01)
CALLS = 6


def _request(i: int, *, stream: bool) -> CallRequest:
    return CallRequest(node=f"n{i}", model="m", messages=[{"role": "user", "content": f"question {i}"}],
                       params={"max_tokens": 16}, stream=stream, retries=0, timeout=30)


async def _sequential(provider, n: int, *, stream: bool) -> list[str]:
    texts = []
    try:
        for i in range(n):
            tokens: list[str] = []
            result = await provider.complete(_request(i, stream=stream), on_token=tokens.append)
            if stream:
                assert "".join(tokens) == result.text and tokens
            texts.append(result.text)
    finally:
        await provider.aclose()
    return texts


@pytest.mark.parametrize("kind", [OpenAIProvider, AnthropicProvider])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_sequential_calls_reuse_one_connection(kind, stream):
    with FakeLLMServer() as server:
        provider = kind(name="fake", base_url=server.url, api_key=KEY, backoff=FAST)
        texts = asyncio.run(_sequential(provider, CALLS, stream=stream))
        assert len(set(texts)) == CALLS and all(texts)   # real, distinct answers
        assert len(server.requests) == CALLS
        assert server.connections == 1


def test_connections_counter_counts_new_connections():
    """The counter the reuse tests rely on: two providers cannot share a connection."""
    with FakeLLMServer() as server:
        for _ in range(2):
            asyncio.run(_sequential(OpenAIProvider(name="f", base_url=server.url), 2, stream=True))
        assert server.connections == 2
        server.reset_stats()
        assert server.connections == 0


# -- a server that misbehaves after the end marker ------------------------------------------------
class _Chatty:
    """Loopback HTTP/1.1 server: one SSE answer ending in `data: [DONE]`, then, per `mode`,
    endless chunks ("flood") or silence without the chunked terminator ("stall")."""

    def __init__(self, mode: str):
        self.mode, self.connections, self.flooded = mode, 0, 0
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                for event in (b'data: {"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]}\n\n',
                              b"data: [DONE]\n\n"):
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                while self.mode == "flood":   # until the client hangs up
                    junk = b": still here " + b"x" * 1000 + b"\n"
                    writer.write(b"%x\r\n%s\r\n" % (len(junk), junk))
                    self.flooded += len(junk)
                    await writer.drain()
                    await asyncio.sleep(0)
                await asyncio.Event().wait()   # "stall": never finishes the body
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()


@pytest.mark.parametrize("mode", ["flood", "stall"])
def test_a_server_that_keeps_the_body_open_after_done_cannot_hang_a_call(mode):
    server = _Chatty(mode)

    async def main():
        async with server as url:
            provider = OpenAIProvider(name="chatty", base_url=url, backoff=FAST)
            req = CallRequest(node="final", model="m", messages=[{"role": "user", "content": "hi"}], params={},
                              stream=True, retries=0, timeout=0.5)
            try:
                # wait_for turns a regression into a failure instead of a hung test run
                results = [await asyncio.wait_for(provider.complete(req), 30) for _ in range(2)]
            finally:
                await provider.aclose()
            return results

    results = asyncio.run(main())
    assert [r.text for r in results] == ["Hi", "Hi"] and results[0].finish_reason == "stop"
    assert server.connections == 2           # the unfinished connection was given up, not reused
    if mode == "flood":
        assert server.flooded >= 64 * 1024   # it did drain, up to the bound


def _wide(provider, n: int) -> list:
    async def main():
        return await asyncio.gather(*(provider.complete(_request(i, stream=i % 2 == 0)) for i in range(n)))
    return asyncio.run(main())


def test_concurrent_calls_keep_their_connections(monkeypatch):
    opened: list = []
    real = transport_module.AiohttpTransport

    def recording(**kw):
        opened.append(real(**kw))
        return opened[-1]

    monkeypatch.setattr("moa_dsl.providers.http.AiohttpTransport", recording)
    with FakeLLMServer(latency=0.2) as server:
        provider = OpenAIProvider(name="fake", base_url=server.url)

        async def main():
            try:
                for _ in range(2):   # the second wave finds the first wave's connections alive
                    results = await asyncio.gather(*(provider.complete(_request(i, stream=i % 2 == 0))
                                                     for i in range(40)))
                    assert len({r.text for r in results}) == 40
                await provider.complete(_request(99, stream=True))
                return opened[0]._session
            finally:
                await provider.aclose()

        session = asyncio.run(main())
        assert len(opened) == 1 and session.closed    # one session per provider, closed by aclose
        assert server.max_in_flight == 40            # the pool does not throttle
        assert server.connections == 40              # 81 calls, no connection opened twice


def test_the_connection_bound_holds(monkeypatch):
    monkeypatch.setattr("moa_dsl.providers.http.MAX_CONNECTIONS", 8)
    with FakeLLMServer(latency=0.1) as server:
        provider = OpenAIProvider(name="fake", base_url=server.url)

        async def main():
            try:
                results = await asyncio.gather(*(provider.complete(_request(i, stream=False)) for i in range(20)))
                assert len({r.text for r in results}) == 20
            finally:
                await provider.aclose()

        asyncio.run(main())
        assert server.max_in_flight == 8 and server.connections == 8


def test_an_injected_transport_serves_every_call():
    seen: list[str] = []
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        if len(seen) == 20:
            gate.set()
        await gate.wait()   # hold every call in flight until all 20 are
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})

    provider = OpenAIProvider(name="mock", base_url="https://api.example.test/v1", api_key=KEY,
                              transport=httpx.MockTransport(handler))

    async def main():
        try:
            return await asyncio.gather(*(provider.complete(_request(i, stream=False)) for i in range(20)))
        finally:
            await provider.aclose()

    results = asyncio.run(main())
    assert [r.text for r in results] == ["ok"] * 20
    assert seen == [f"Bearer {KEY}"] * 20            # every call carries the provider's headers


def test_requests_carry_the_clients_headers_and_a_closed_provider_refuses():
    """Requests are built from headers merged once per provider: the key, the default headers and
    the JSON body go out; after aclose nothing is sent."""
    with FakeLLMServer(api_key=KEY) as server:
        provider = OpenAIProvider(name="fake", base_url=server.url, api_key=KEY, backoff=FAST,
                                  headers={"x-extra": "yes"})

        async def go() -> str:
            text = (await provider.complete(_request(0, stream=False))).text
            await provider.aclose()
            with pytest.raises(RuntimeError, match="closed"):
                await provider.complete(_request(1, stream=False))
            return text

        assert asyncio.run(go())
        sent = server.requests
    assert len(sent) == 1
    headers = sent[0].headers
    assert headers["authorization"] == f"Bearer {KEY}" and headers["x-extra"] == "yes"
    assert headers["content-type"] == "application/json" and "user-agent" in headers
    assert sent[0].body["messages"] == [{"role": "user", "content": "question 0"}]


def _bytes_sent(fast: bool, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The request bytes a server reads for one call that is not streamed (non-ASCII text included)."""
    monkeypatch.setattr(OpenAIProvider, "fast_path", fast)
    body = b'{"choices":[{"message":{"content":"ok"},"finish_reason":"stop"}]}'

    async def main() -> bytes:
        got: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            got.append(head + await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        provider = OpenAIProvider(name="p", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                                  headers={"x-extra": "yes"})
        try:
            req = CallRequest(node="n", model="m", messages=[{"role": "user", "content": "héllo \u2028 \"x\""}],
                              params={"temperature": 0.5, "max_tokens": 16}, retries=0, timeout=30)
            assert (await provider.complete(req)).text == "ok"
        finally:
            await provider.aclose()
            server.close()
        return got[0].replace(b"127.0.0.1:%d" % port, b"127.0.0.1:PORT")

    return asyncio.run(main())


def test_the_fast_path_sends_the_same_bytes_as_the_httpx_path(monkeypatch):
    fast, slow = _bytes_sent(True, monkeypatch), _bytes_sent(False, monkeypatch)
    assert fast == slow
    assert b"content-type: application/json" in fast and "héllo".encode() in fast
