"""HTTP providers' connections: kept alive across calls (streamed ones included), over real loopback sockets."""
from __future__ import annotations

import asyncio

import pytest

from moa_dsl.providers import AnthropicProvider, Backoff, CallRequest, OpenAIProvider
from moa_dsl.testing import FakeLLMServer

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
