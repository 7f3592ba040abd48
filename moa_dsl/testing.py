"""`FakeLLMServer`: an offline OpenAI- and Anthropic-compatible server on 127.0.0.1, for tests,
benchmarks and trying a topology without keys or network.

    from moa_dsl.testing import FakeLLMServer

    with FakeLLMServer(latency={"slow-model": 0.2}, token_delay=0.01) as server:
        server.url                                  # "http://127.0.0.1:PORT/v1": use as a base_url
        server.inject("m", "429", retry_after=0.05) # the next request for model "m" gets a 429
        ...                                         # run a topology against it
        server.requests[-1].body["messages"]        # what was sent
        server.max_in_flight                        # the most requests it ever served at once
        server.connections                          # TCP connections accepted (keep-alive reuse shows here)

It is a real HTTP/1.1 server (keep-alive, Content-Length bodies, chunked SSE streams) on its own
asyncio loop in a background thread, so clients see sockets, timeouts and resets as they would in
production. It serves thousands of requests at concurrency 256. Closing it (or leaving the `with`)
stops the thread and drops every connection, hanging ones included.

Endpoints: `POST /v1/chat/completions` (OpenAI: JSON, or SSE with `data: [DONE]` and a usage chunk
when `stream_options.include_usage`), `POST /v1/messages` (Anthropic: JSON, or its typed event
stream), `GET /v1/models`.

Answers: `default_answer(model, messages, seed)` -- deterministic, different per model, question
and seed -- unless `responder` is given: `responder(model, body) -> str`, one callable for every
model or a mapping model -> callable (key "*" for the rest). `max_tokens` cuts the answer by
(whitespace-delimited) tokens, with finish_reason "length". Usage counts words.

Timing: `latency` (seconds, one number or per model, with `default_latency` for the rest) passes
before the first byte of the answer -- a stream's time to first token -- and `token_delay` between
a stream's tokens.

Faults: `inject(model, fault, ...)` queues a fault for that model (or "*" for any), consumed one per
request, before any answer:

    "429", "500", "400", any status 400-599   the status with an error body in the API's format;
                                              `message=`, `retry_after=` (seconds), `retry_after_ms=`
    "hang"                                    reads the request and never answers
    "reset"                                   closes the socket (a stream: after `tokens=` tokens)
    "invalid_json"                            200 with a body (or stream chunk) that is not JSON
    "bad_shape"                               200 JSON without choices / content
    "truncated_stream"                        a stream that sends `tokens=` tokens and ends cleanly
                                              without `[DONE]` / `message_stop`
    "stream_error"                            a stream with an error event (Anthropic `overloaded_error`)

`api_key=` makes it answer 401 to requests without that key (Bearer or x-api-key).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Deque, Iterable, Mapping

__all__ = ["default_answer", "FakeLLMServer", "FAULTS", "RecordedRequest", "Responder"]

Responder = Callable[[str, dict], str]

FAULTS = ("hang", "reset", "invalid_json", "bad_shape", "truncated_stream", "stream_error")
_HOST = "127.0.0.1"
_TOKEN = re.compile(r"\S*\s*")
_VOCAB = (
    "light",
    "scatters",
    "because",
    "the",
    "air",
    "molecules",
    "blue",
    "shorter",
    "waves",
    "sun",
    "answer",
    "energy",
    "model",
    "reason",
    "layer",
    "clearly",
    "therefore",
    "simple",
    "data",
    "sky",
    "ocean",
    "signal",
    "first",
    "second",
    "overall",
    "careful",
    "result",
    "value",
    "mixture",
    "agents",
    "graph",
    "quickly",
)


@dataclass
class RecordedRequest:
    """One request as the server saw it. `finished` is None while it is being answered."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    model: str | None
    stream: bool
    started: float  # time.monotonic()
    finished: float | None = None
    fault: str | None = None


@dataclass(frozen=True)
class _Fault:
    kind: str
    message: str | None = None
    retry_after: float | None = None
    retry_after_ms: float | None = None
    tokens: int = 0


@dataclass
class _Answer:
    text: str
    tokens: list[str]
    prompt_tokens: int
    finish_reason: str = "stop"
    extra: dict = field(default_factory=dict)


def default_answer(model: str, messages: list[dict], seed: Any = None) -> str:
    """A deterministic answer that differs by model, last user message and seed."""
    last = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    digest = hashlib.sha256(f"{model}\0{last}\0{seed}".encode()).digest()
    words = " ".join(_VOCAB[b % len(_VOCAB)] for b in digest[:12])
    topic = " ".join(last.split()[:8])
    return f"{model} on {topic!r}: {words}."


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Anthropic-style content blocks
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


class FakeLLMServer:
    """See the module docstring. Start with `with FakeLLMServer() as server:` or `start()`/`close()`."""

    def __init__(
        self,
        *,
        latency: float | Mapping[str, float] | None = None,
        default_latency: float = 0.0,
        token_delay: float = 0.0,
        responder: Responder | Mapping[str, Responder] | None = None,
        api_key: str | None = None,
        record: bool = True,
    ):
        if isinstance(latency, (int, float)):
            default_latency, latency = float(latency), None
        self.latency: dict[str, float] = dict(latency or {})
        self.default_latency = default_latency
        self.token_delay = token_delay
        self.responder = responder
        self.api_key = api_key
        self.record = record
        self.port: int | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0  # accepted since start or reset_stats(): a client that reuses keeps it low
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._faults: dict[str, Deque[_Fault]] = collections.defaultdict(collections.deque)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "FakeLLMServer":
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="FakeLLMServer", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def close(self) -> None:
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._thread = self._loop = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeLLMServer is not started: use `with FakeLLMServer() as server:`")
        return f"http://{_HOST}:{self.port}/v1"

    # -- control ----------------------------------------------------------------------------------
    def inject(
        self,
        model: str,
        fault: str,
        *,
        message: str | None = None,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        tokens: int = 0,
        times: int = 1,
    ) -> None:
        """Queue `fault` for the next `times` requests for `model` ("*": any model)."""
        if fault not in FAULTS and not (fault.isdigit() and 400 <= int(fault) <= 599):
            raise ValueError(f"unknown fault {fault!r}: use an HTTP status 400-599 or one of {', '.join(FAULTS)}")
        for _ in range(times):
            self._faults[model].append(_Fault(fault, message, retry_after, retry_after_ms, tokens))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    def reset_stats(self) -> None:
        with self._lock:
            self._requests.clear()
            self.max_in_flight = self.in_flight
            self.connections = 0

    # -- the server loop --------------------------------------------------------------------------
    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._connection, _HOST, 0, backlog=2048)
        return self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the transports' close callbacks run before the loop stops

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1  # only this server's loop thread writes it
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # close(): drop the connection
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed a kept-alive connection
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        raw = await reader.readexactly(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        stream = bool(body.get("stream")) if isinstance(body, dict) else False
        record = RecordedRequest(method, path, headers, body, model, stream, time.monotonic())
        if self.record:
            with self._lock:
                self._requests.append(record)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            keep = await self._dispatch(record, writer)
        finally:
            self.in_flight -= 1
            record.finished = time.monotonic()
        return keep and headers.get("connection", "").lower() != "close"

    async def _dispatch(self, req: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        api = "anthropic" if req.path.rstrip("/").endswith("/messages") else "openai"
        if req.method == "GET" and req.path.rstrip("/").endswith("/models"):
            return await _send_json(
                writer, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in sorted(self.latency)]}
            )
        if req.method != "POST" or not req.path.rstrip("/").endswith(("/chat/completions", "/messages")):
            return await _send_json(writer, 404, _error_body(api, 404, f"no route for {req.method} {req.path}"))
        if not isinstance(req.body, dict) or not req.model or not isinstance(req.body.get("messages"), list):
            return await _send_json(writer, 400, _error_body(api, 400, "the body needs `model` and `messages`"))
        if self.api_key and self.api_key not in (
            req.headers.get("x-api-key"),
            req.headers.get("authorization", "")[7:],
        ):
            return await _send_json(writer, 401, _error_body(api, 401, "invalid API key"))
        fault = self._next_fault(req.model)
        if fault is not None:
            req.fault = fault.kind
            if fault.kind != "hang":
                return await self._fault(api, req, fault, writer)
            await asyncio.Event().wait()  # never answers; close() cancels it
        await asyncio.sleep(self.latency.get(req.model, self.default_latency))
        try:
            answer = self._answer(api, req)
        except Exception as exc:  # a test's responder failed: say so to the client
            return await _send_json(writer, 500, _error_body(api, 500, f"responder failed: {exc!r}"))
        if req.stream:
            return await self._stream(writer, _stream_events(api, req, answer), answer, self.token_delay)
        return await _send_json(writer, 200, _body(api, req, answer))

    def _next_fault(self, model: str) -> _Fault | None:
        for key in (model, "*"):
            queue = self._faults.get(key)
            if queue:
                try:
                    return queue.popleft()
                except IndexError:
                    pass
        return None

    def _answer(self, api: str, req: RecordedRequest) -> _Answer:
        body = req.body
        model = req.model or ""
        responder = self.responder
        if isinstance(responder, Mapping):
            responder = responder.get(model) or responder.get("*")
        text = responder(model, body) if responder else default_answer(model, body["messages"], body.get("seed"))
        tokens = [t for t in _TOKEN.findall(str(text)) if t]
        finish = "stop" if api == "openai" else "end_turn"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens, finish = tokens[:limit], ("length" if api == "openai" else "max_tokens")
        words = sum(len(_text(m.get("content")).split()) for m in body["messages"] if isinstance(m, dict))
        words += len(_text(body.get("system")).split())
        return _Answer("".join(tokens), tokens, words, finish)

    async def _fault(self, api: str, req: RecordedRequest, fault: _Fault, writer: asyncio.StreamWriter) -> bool:
        kind = fault.kind
        if kind.isdigit():
            status = int(kind)
            headers = []
            if fault.retry_after is not None:
                headers.append(("retry-after", f"{fault.retry_after:g}"))
            if fault.retry_after_ms is not None:
                headers.append(("retry-after-ms", f"{fault.retry_after_ms:g}"))
            message = fault.message or f"{HTTPStatus(status).phrase} (injected by FakeLLMServer)"
            return await _send_json(writer, status, _error_body(api, status, message), headers)
        if kind == "reset" and not req.stream:
            return False
        if kind == "invalid_json" and not req.stream:
            return await _send_raw(writer, 200, b"{this is not json", "application/json")
        if kind == "bad_shape":
            shape = (
                {"object": "chat.completion", "choices": []} if api == "openai" else {"type": "message", "content": []}
            )
            return await _send_json(writer, 200, shape)
        if kind == "truncated_stream" and not req.stream:  # a body shorter than its Content-Length
            writer.write(_head(200, "application/json", [("content-length", "1000")]) + b'{"choices": [')
            await writer.drain()
            return False
        answer = self._answer(api, req)
        events = list(_stream_events(api, req, answer))
        head = events[: _first_token_index(api) + fault.tokens]
        if kind == "invalid_json":
            return await self._stream(writer, head + [b"data: {this is not json\n\n"], answer, 0.0)
        if kind == "stream_error":
            return await self._stream(writer, head + [_stream_error(api)], answer, 0.0)
        if kind == "truncated_stream":
            return await self._stream(writer, head, answer, 0.0)
        await self._stream(writer, head, answer, 0.0, end=False)  # reset mid-stream
        return False

    async def _stream(
        self, writer: asyncio.StreamWriter, events: Iterable[bytes], answer: _Answer, delay: float, *, end: bool = True
    ) -> bool:
        writer.write(_head(200, "text/event-stream", [("transfer-encoding", "chunked"), ("cache-control", "no-cache")]))
        for event in events:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            if delay:
                await writer.drain()
                await asyncio.sleep(delay)
        if end:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return end


# -- wire formats ---------------------------------------------------------------------------------
def _head(status: int, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"content-type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_raw(
    writer: asyncio.StreamWriter, status: int, data: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()
) -> bool:
    writer.write(_head(status, content_type, [("content-length", str(len(data))), *headers]) + data)
    await writer.drain()
    return True


async def _send_json(
    writer: asyncio.StreamWriter, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()
) -> bool:
    return await _send_raw(writer, status, json.dumps(obj).encode(), "application/json", headers)


def _error_body(api: str, status: int, message: str) -> dict:
    if api == "anthropic":
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": "fake_error", "code": status}}


def _body(api: str, req: RecordedRequest, answer: _Answer) -> dict:
    if api == "anthropic":
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [{"type": "text", "text": answer.text}],
            "stop_reason": answer.finish_reason,
            "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": len(answer.tokens)},
        }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": len(answer.tokens),
            "total_tokens": answer.prompt_tokens + len(answer.tokens),
        },
    }


def _first_token_index(api: str) -> int:
    """How many events precede the first token in `_stream_events` (a fault's `tokens=` counts after)."""
    return 2 if api == "anthropic" else 1


def _stream_events(api: str, req: RecordedRequest, answer: _Answer) -> Iterable[bytes]:
    n = len(answer.tokens)
    if api == "anthropic":
        yield _sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": req.model,
                    "content": [],
                    "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": 1},
                },
            },
            "message_start",
        )
        yield _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        )
        for token in answer.tokens:
            yield _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}},
                "content_block_delta",
            )
        yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        yield _sse(
            {"type": "message_delta", "delta": {"stop_reason": answer.finish_reason}, "usage": {"output_tokens": n}},
            "message_delta",
        )
        yield _sse({"type": "message_stop"}, "message_stop")
        return
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": req.model}
    yield _sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    )
    for token in answer.tokens:
        yield _sse({**base, "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]})
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]})
    if (req.body.get("stream_options") or {}).get("include_usage"):
        yield _sse(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": answer.prompt_tokens,
                    "completion_tokens": n,
                    "total_tokens": answer.prompt_tokens + n,
                },
            }
        )
    yield b"data: [DONE]\n\n"


def _stream_error(api: str) -> bytes:
    if api == "anthropic":
        return _sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")
    return _sse({"error": {"message": "the server had an error while streaming", "type": "server_error"}})


def _sse(data: dict, event: str | None = None) -> bytes:
    payload = b"data: " + json.dumps(data).encode() + b"\n\n"
    return b"event: " + event.encode() + b"\n" + payload if event else payload
