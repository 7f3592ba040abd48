"""What a server sends cannot hang a call, exhaust memory or reach the terminal raw (the README,
"Limits on input"), and the stream and retry edges the README promises. Every test talks to a real
HTTP/1.1 server on 127.0.0.1 that it starts itself (`_Script`), scripted byte for byte.

No test measures time: a trickle is asserted to fail as a timeout (its outcome), a retry's wait is
taken from the `retry` event and the order of requests.
"""
from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import time
from typing import Any, Awaitable, Callable

import pytest

from moa_dsl.errors import ProviderError, ProviderHTTPError, ProviderResponseError, ProviderTimeout
from moa_dsl.providers import AnthropicProvider, Backoff, CallRequest, OpenAIProvider

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("provider_path")]

KEY = "sk-test-SECRET-0123456789abcdef"
FAST = Backoff(base_s=0.001, cap_s=0.01)
Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


class _Script:
    """Reads each request and answers it with the next of `answers` (the last one repeats)."""

    def __init__(self, *answers: Answer):
        self.answers, self.requests = list(answers), 0
        self.log: list[str] = []   # "request" and the test's own marks, in order

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                answer = self.answers[min(self.requests, len(self.answers) - 1)]
                self.requests += 1
                self.log.append("request")
                await answer(writer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()


def _whole(status: str, body: bytes, content_type: str = "application/json", extra: str = "") -> Answer:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                     f"{extra}\r\n".encode() + body)
    return answer


OK_JSON = json.dumps({"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}).encode()


def _sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


def _chunk(text: str) -> bytes:
    return json.dumps({"choices": [{"delta": {"content": text}}]}, ensure_ascii=False).encode()


def _call(url: str, *, stream: bool = False, timeout: float = 5, retries: int = 0, cls: Any = OpenAIProvider,
          events: list | None = None, wait: Any = None, **kw: Any):
    tokens: list[str] = []

    async def main():
        provider = cls(name="p", base_url=url, api_key=KEY, backoff=FAST, **kw)
        try:
            req = CallRequest(node="n", model="m", messages=[{"role": "user", "content": "hi"}], params={},
                              stream=stream, timeout=timeout, retries=retries)
            emit = (lambda k, d: events.append((k, d))) if events is not None else None
            return await asyncio.wait_for(provider.complete(req, on_token=tokens.append, emit=emit, wait=wait), 60)
        finally:
            await provider.aclose()

    return tokens, main


def _run(script: _Script, **kw: Any):
    async def main():
        async with script as url:
            tokens, call = _call(url, **kw)
            return await call(), tokens
    return asyncio.run(main())


def _fails(script: _Script, error: type[ProviderError], **kw: Any) -> ProviderError:
    with pytest.raises(error) as info:
        _run(script, **kw)
    return info.value


# -- 2. timeout bounds the whole request ------------------------------------------------------------

def _trickle(data: bytes, every: float = 0.05) -> Answer:
    """A complete, valid response, one byte per `every` seconds: no single read ever waits long."""
    async def answer(writer: asyncio.StreamWriter) -> None:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(every)
    return answer


@pytest.mark.parametrize("part", ["headers", "json-body", "stream"])
def test_a_server_trickling_a_valid_response_slower_than_the_timeout_times_out(part):
    body = OK_JSON if part != "stream" else _sse(_chunk("a"), _chunk("b"), b"[DONE]")
    kind = "text/event-stream" if part == "stream" else "application/json"
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    if part == "headers":
        answer = _trickle(head + body)
    else:
        async def answer(writer: asyncio.StreamWriter) -> None:
            writer.write(head)
            await _trickle(body)(writer)
    script = _Script(answer)
    error = _fails(script, ProviderTimeout, stream=part == "stream", timeout=0.5)
    assert "timed out after 0.5 s" in str(error) and script.requests == 1   # retries=0: one attempt


def test_the_same_trickle_completes_when_the_timeout_allows_it():
    """The control: the trickled response above is valid; only its total time fails it."""
    body = OK_JSON[:]
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        await _trickle(body, every=0.0005)(writer)

    completion, _ = _run(_Script(answer), timeout=60)
    assert completion.text == "fine"


# -- 3. max_response_bytes -------------------------------------------------------------------------

def _endless(head: bytes, piece: bytes) -> Answer:
    """A chunked body that never ends (until the client hangs up); counts what it sent."""
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            answer.sent += len(piece)   # type: ignore[attr-defined]
            await writer.drain()
    answer.sent = 0   # type: ignore[attr-defined]
    return answer


@pytest.mark.parametrize("stream", [False, True], ids=["json-body", "event-stream"])
def test_an_endless_body_fails_at_max_response_bytes_without_a_retry(stream):
    kind = "text/event-stream" if stream else "application/json"
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    # a stream of comment lines (never an event), or one JSON string that never closes
    piece = b": keep-alive padding " + b"x" * 4000 + b"\n" if stream else b'{"choices": "' + b"x" * 4000
    answer = _endless(head, piece)
    script = _Script(answer)
    limit = 256 * 1024
    error = _fails(script, ProviderResponseError, stream=stream, retries=3, max_response_bytes=limit)
    assert f"the response exceeded max_response_bytes ({limit} bytes)" in str(error)
    assert script.requests == 1 and not error.retryable   # not retried
    # bounded: the server got to send the limit plus what sits in socket buffers, not an endless body
    assert limit < answer.sent < limit + 16 * 1024 * 1024   # type: ignore[attr-defined]


def test_max_response_bytes_counts_decoded_bytes():
    """A small gzip body that inflates past the limit fails as well (a decompression bomb)."""
    body = gzip.compress(b'{"choices": "' + b" " * (2 * 1024 * 1024) + b'"}')
    error = _fails(_Script(_whole("200 OK", body, extra="content-encoding: gzip\r\n")), ProviderResponseError,
                   max_response_bytes=1024 * 1024)
    assert len(body) < 1024 * 1024 and "exceeded max_response_bytes (1048576 bytes)" in str(error)


# -- 4. SSE lines end only at LF, CRLF and CR --------------------------------------------------------

SEPARATORS = "\u2028\u2029\u0085\u001c\u001d\u001e\u001f\u000b\u000c"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_unicode_line_separators_inside_a_streamed_chunk_pass_through_intact(newline):
    texts = [f"a{SEPARATORS}b", "c\u2028", "\u0085d"]
    body = b"".join(b"data: " + _chunk(t) + newline * 2 for t in texts) + b"data: [DONE]" + newline * 2
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 5):   # split anywhere, a CRLF included
            writer.write(b"%x\r\n%s\r\n" % (len(body[i:i + 5]), body[i:i + 5]))
        writer.write(b"0\r\n\r\n")
    completion, tokens = _run(_Script(answer), stream=True)
    assert tokens == texts and completion.text == "".join(texts)


def test_anthropic_events_with_separators_pass_through_intact():
    text = f"x{SEPARATORS}y"
    events = [{"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
              {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}},
              {"type": "message_stop"}]
    body = b"".join(b"event: %s\r\ndata: %s\r\n\r\n" % (e["type"].encode(), json.dumps(e, ensure_ascii=False).encode())
                    for e in events)
    completion, _ = _run(_Script(_whole("200 OK", body, "text/event-stream")), stream=True, cls=AnthropicProvider)
    assert completion.text == text and completion.prompt_tokens == 3


# -- 5. a 200 that is not an event stream ----------------------------------------------------------

@pytest.mark.parametrize("kind, body, shown", [
    ("text/html; charset=utf-8", b"<html><body>\x1b[31mLogin required</body></html>", "<html><body>\ufffd[31mLogin"),
    ("application/json", OK_JSON, '{"choices"'),
    ("application/json", b"", "an empty body"),
], ids=["html", "json", "empty"])
def test_a_streamed_request_answered_with_something_else_says_what_and_is_not_retried(kind, body, shown):
    script = _Script(_whole("200 OK", body, kind))
    error = _fails(script, ProviderResponseError, stream=True, retries=3)
    assert "not an event stream" in str(error) and kind.split(";")[0] in str(error) and shown in str(error)
    assert "\x1b" not in str(error) and script.requests == 1


# -- 6. server text hygiene -------------------------------------------------------------------------

def test_a_key_echoed_in_a_long_error_body_is_masked_before_the_text_is_cut():
    for offset in range(280, 300, 3):   # the key straddles the 300-character cut somewhere here
        message = "x" * offset + f" invalid key {KEY} " + "y" * 500
        body = json.dumps({"error": {"message": message}}).encode()
        error = _fails(_Script(_whole("401 Unauthorized", body)), ProviderHTTPError)
        assert "sk-test-SECR" not in str(error) and "SECRET" not in str(error)


def test_control_characters_a_server_sends_are_replaced_in_errors_and_retry_events():
    nasty = "\x1b]52;c;ZWNobyBoaQ==\x07 \x1b[2J\x9b31m\x00 tab\there"
    body = json.dumps({"error": {"message": nasty}}).encode()
    events: list = []
    error = _fails(_Script(_whole("503 Service Unavailable", body)), ProviderHTTPError, retries=1, events=events)
    shown = [str(error)] + [d["error"] for k, d in events if k == "retry"]
    assert len(shown) == 2
    for text in shown:
        assert not any(c in text for c in "\x1b\x07\x9b\x00")
        assert "]52;c;ZWNobyBoaQ==" in text   # the rest is still shown, only the controls are replaced


# -- 7. Retry-After as an HTTP date ------------------------------------------------------------------

def test_retry_after_as_an_http_date_is_honoured():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)   # 1 s resolution: 29-30 s from now
    script = _Script(_whole("429 Too Many Requests", b'{"error": {"message": "slow down"}}',
                            extra=f"retry-after: {when}\r\n"),
                     _whole("200 OK", OK_JSON))
    events: list = []
    waited: list[float] = []

    async def wait(seconds: float) -> None:   # the provider's sleep: recorded, not slept
        waited.append(seconds)
        script.log.append("wait")

    completion, _ = _run(script, retries=2, events=events, wait=wait)
    assert completion.text == "fine" and completion.attempts == 2
    assert script.log == ["request", "wait", "request"]           # the retry came after the wait
    (delay,) = [d["delay_s"] for k, d in events if k == "retry"]
    assert [round(w, 3) for w in waited] == [delay] and 25 <= delay <= 30               # the date's distance, not the backoff's 1 ms
