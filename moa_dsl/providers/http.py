"""What every HTTP provider shares: pooled connections, the retry loop, and error translation.

A subclass says how to build a request body and how to read a response or a stream; this module
decides what is retried, how long to wait, and what the user reads when a call fails for good.

Retryable (docs/language.md, "Built-in providers"): connection errors, timeouts, HTTP 408, 409, 429 and
5xx, and a broken stream that has not emitted a token yet (a retry after a token would duplicate
text). A 200 whose body is not what the API promises is not retried: it usually means a wrong
`base_url`, and failing fast says so. `Retry-After` / `retry-after-ms` are honoured in full, up to
`Backoff.max_retry_after_s`; a server asking for more is not retried.

Limits (README, "Limits on input"): `timeout` bounds each attempt from its start to its last byte
(connect, send, wait, every read of the body or the stream), not each read; a response body past
`max_response_bytes` (counted as it arrives, after content decoding) fails the call, not retried.

Errors are `moa_dsl.errors.ProviderError`s naming node, provider, model and HTTP status. Every secret
the provider holds (API key, header values) is masked out of every message, whatever the server echoes,
before server text is cut to length; control characters a server sent (other than newline and tab:
ESC sequences, OSC 52 clipboard writes, C1 controls) are replaced before they reach a message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource, ServerSentEvent

from ..config import DEFAULT_MAX_RESPONSE_BYTES
from ..config import request_params as _set_params
from ..errors import (
    ConfigError,
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderResponseError,
    ProviderTimeout,
)
from .base import CallRequest, Completion, Emit, OnToken, Wait
from .transport import MAX_CONNECTIONS, AiohttpTransport, ResponseTooLarge, read_body

__all__ = ["Backoff", "DEFAULT_BACKOFF", "Failure", "HTTPProvider", "request_params", "RETRYABLE_STATUS", "TokenGate"]

RETRYABLE_STATUS = frozenset({408, 409, 429})
_MESSAGE_LIMIT = 300  # characters of a server's error text kept in our message
_PEEK_LIMIT = 200  # bytes of a body that is not what we asked for, quoted in the message
_DRAIN_LIMIT = 64 * 1024  # bytes read after a stream's end marker before we give up on its connection
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# What a client sends without being asked (httpx.AsyncClient's defaults; gzip and deflate httpx always decodes).
_DEFAULT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": "moa-dsl",
}
# Control characters a terminal would act on (ESC sequences, OSC 52, C1), all but newline and tab.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")  # credentials in a URL (a proxy's) inside a message


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of base * 2**(n-1), capped."""

    base_s: float = 0.5
    cap_s: float = 20.0
    max_retry_after_s: float = 300.0  # a longer Retry-After (a spent daily quota) fails instead of stalling

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after > 0:
            return retry_after  # the server knows best; "at least" what it asks
        full = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        return full * (0.5 + random.random() / 2)


DEFAULT_BACKOFF = Backoff()  # read when a provider is built, so tests can monkeypatch it


class Failure(Exception):
    """One failed attempt, before we know whether it is the last. `complete` turns it into a ProviderError."""

    def __init__(
        self,
        error: type[ProviderError],
        detail: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(detail)
        self.error, self.detail, self.status = error, detail, status
        self.retryable, self.retry_after = retryable, retry_after


class TokenGate:
    """Passes deltas on and remembers whether any went out (then a retry would duplicate text)."""

    __slots__ = ("on_token", "emitted")

    def __init__(self, on_token: OnToken | None):
        self.on_token, self.emitted = on_token, False

    def __call__(self, text: str) -> None:
        self.emitted = True
        if self.on_token is not None:
            self.on_token(text)


_TooLarge = ResponseTooLarge
# The body of a JSON request, as httpx.Request(json=...) encodes it (httpx/_content.py: encode_json).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class _Capped(httpx.AsyncByteStream):
    """A body's decoded bytes, counted as they arrive: past `limit`, `_TooLarge` (never buffered first)."""

    __slots__ = ("source", "limit", "count")

    def __init__(self, source: AsyncIterator[bytes], limit: int):
        self.source, self.limit, self.count = source, limit, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.source:
            self.count += len(chunk)
            if self.count > self.limit:
                raise _TooLarge()
            yield chunk


def _capped(response: httpx.Response, limit: int) -> tuple[httpx.Response, _Capped]:
    """`response` read through `_Capped`: a response of the same status and headers whose body is the
    original's decoded bytes (so it is not decoded twice), counted."""
    capped = _Capped(response.aiter_bytes(), limit)
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"]
    return httpx.Response(
        response.status_code, headers=headers, stream=capped, request=response.request, extensions=response.extensions
    ), capped


class HTTPProvider:
    """Base of the OpenAI and Anthropic providers. Subclasses set `kind`, `path` and the four hooks.

    `fast_path`: with the providers' own transport (none injected), a call that is not streamed goes to
    aiohttp as bytes and a plain answer is read without httpx's objects (transport.py says why); False
    sends every call through httpx over the transport, as an injected one always is (the loopback tests
    run both ways).
    """

    fast_path = True

    kind = "http"
    path = ""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_concurrency: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        endpoint: str | None = None,
        backoff: Backoff | None = None,
        semaphore: AbstractAsyncContextManager[Any] | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ):
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"provider {name}: max_concurrency must be at least 1, not {max_concurrency}")
        if max_response_bytes < 1:
            raise ConfigError(f"provider {name}: max_response_bytes must be at least 1, not {max_response_bytes}")
        if not base_url or urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigError(f"provider {name}: base_url must be an http(s) URL, not {base_url!r}")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.endpoint = endpoint or self.base_url
        self.max_concurrency = max_concurrency
        self.max_response_bytes = max_response_bytes
        self.url = self.base_url + self.path
        extra = dict(headers or {})
        self._secrets = tuple(s for s in (api_key, *extra.values()) if s and len(s) >= 6)
        self._backoff = backoff or DEFAULT_BACKOFF
        # Held per attempt, never across a retry wait. `semaphore`: any async context manager shared
        # with other providers (the local provider's: its max_concurrency and the server's slots).
        self._semaphore: AbstractAsyncContextManager[Any] | None = (
            semaphore if semaphore is not None else (asyncio.Semaphore(max_concurrency) if max_concurrency else None)
        )
        self._target = httpx.URL(self.url)
        self._target_text = str(self._target)  # as httpx normalised it
        self._headers = httpx.Headers({**_DEFAULT_HEADERS, **self.auth_headers(api_key), **extra})
        # Proxy variables must not reroute loopback calls (the embedded runtime, the fake server).
        trust_env = urlsplit(self.base_url).hostname not in _LOOPBACK_HOSTS
        # The fast path only on our own transport: an injected one (a test's MockTransport) sees httpx's objects.
        self._direct: AiohttpTransport | None = None
        if transport is None:
            own = AiohttpTransport(trust_env=trust_env, max_connections=MAX_CONNECTIONS)
            self._direct = own if self.fast_path else None
            transport = own
        self._transport = transport
        self._direct_headers: tuple[list[tuple[str, str]], list[tuple[str, str]]] | None = None
        self._closed = False

    # -- hooks ------------------------------------------------------------------------------------
    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        raise NotImplementedError

    def build_body(self, req: CallRequest) -> dict[str, Any]:
        raise NotImplementedError

    def parse_body(self, data: Any) -> Completion:
        """A parsed 200 body -> Completion; raise Failure (or KeyError/TypeError/...) if malformed."""
        raise NotImplementedError

    async def read_stream(
        self, response: httpx.Response, events: AsyncIterator[ServerSentEvent], gate: TokenGate
    ) -> Completion:
        """Read the answer from `events` (the body's server-sent events, framed by httpx-sse) and
        return at the stream's end marker; `_attempt` then drains the rest of the body, so the
        connection goes back to the pool."""
        raise NotImplementedError

    # -- the call ---------------------------------------------------------------------------------
    async def complete(
        self, req: CallRequest, *, on_token: OnToken | None = None, emit: Emit | None = None, wait: Wait | None = None
    ) -> Completion:
        gate = TokenGate(on_token)
        retries = max(0, req.retries)
        attempt = 0
        while True:
            attempt += 1
            if emit is not None:
                emit("request_sent", {"attempt": attempt})
            try:
                if self._semaphore is None:
                    completion = await self._attempt(req, gate)
                else:
                    async with self._semaphore:
                        completion = await self._attempt(req, gate)
            except Failure as failure:
                if (
                    not failure.retryable
                    or attempt > retries
                    or gate.emitted
                    or (failure.retry_after or 0) > self._backoff.max_retry_after_s
                ):
                    raise self._error(req, failure, attempt) from failure.__cause__
                delay = self._backoff.delay(attempt, failure.retry_after)
                if emit is not None:
                    emit(
                        "retry", {"attempt": attempt, "error": self._clean(failure.detail), "delay_s": round(delay, 3)}
                    )
                await (wait or asyncio.sleep)(delay)
                continue
            if attempt > 1:
                completion = Completion(
                    completion.text,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                    attempt,
                    completion.finish_reason,
                    completion.extra,
                )
            return completion

    async def _attempt(self, req: CallRequest, gate: TokenGate) -> Completion:
        """One request, bounded as a whole by `req.timeout`: connect, send, wait, every read."""
        if self._closed:
            raise RuntimeError("Cannot send a request, as the provider has been closed.")
        body = self.build_body(req)
        direct = self._direct if not req.stream else None
        if direct is not None:
            content = _JSON.encode(body).encode("utf-8")
        else:
            request = httpx.Request("POST", self._target, json=body, headers=self._headers)
        try:
            async with asyncio.timeout(req.timeout) as deadline:
                if direct is not None:
                    return await self._fast(direct, body, content, req, gate, deadline)
                response = await self._transport.handle_async_request(request)
                response.request = request  # as httpx's client sets it (a MockTransport's response has none)
                try:
                    return await self._read(response, req, gate, deadline)
                finally:
                    await response.aclose()  # back to the pool once read to its end; else the connection is dropped
        except TimeoutError as exc:
            raise Failure(
                ProviderTimeout,
                f"timed out after {req.timeout:g} s (the whole request, from its start to its last byte)",
                retryable=True,
            ) from exc
        except _TooLarge as exc:
            raise Failure(
                ProviderResponseError,
                f"the response exceeded max_response_bytes ({self.max_response_bytes} bytes); it was not read further",
            ) from exc
        except httpx.TimeoutException as exc:  # an injected transport's own timeouts
            raise Failure(
                ProviderTimeout, f"timed out after {req.timeout:g} s ({type(exc).__name__})", retryable=True
            ) from exc
        except httpx.LocalProtocolError as exc:  # our request is malformed (e.g. a bad header): again is the same
            raise Failure(ProviderConnectionError, f"connection failed: {_describe(exc)}") from exc
        except httpx.TransportError as exc:
            raise Failure(ProviderConnectionError, f"connection failed: {_describe(exc)}", retryable=True) from exc
        except httpx.HTTPError as exc:  # e.g. a body that cannot be decoded
            raise Failure(ProviderResponseError, f"unreadable response: {_describe(exc)}") from exc

    async def _fast(
        self,
        transport: AiohttpTransport,
        body: dict[str, Any],
        content: bytes,
        req: CallRequest,
        gate: TokenGate,
        deadline: asyncio.Timeout,
    ) -> Completion:
        """A call that is not streamed, on the providers' own transport: the same bytes out as the httpx
        path sends, a plain JSON answer read straight from aiohttp; everything else (an error status, an
        encoded body, an answer that does not parse) goes through the httpx path's own reading, so the
        outcome and every message are the same."""
        head, tail = self._direct_headers or self._split_headers()
        headers = [*head, ("content-length", str(len(content))), *tail]
        response = await transport.send("POST", self._target_text, headers, content)
        if response.status >= 400 or "Content-Encoding" in response.headers:
            wrapped = transport.wrap(response, self._request(body))
            try:
                return await self._read(wrapped, req, gate, deadline)
            finally:
                await wrapped.aclose()
        try:
            data = await read_body(response, self.max_response_bytes)
        finally:
            response.release()  # back to the pool once read to its end; else aiohttp closes the connection
        try:
            return self.parse_body(json.loads(data))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            return self._parse(transport.buffered(response, data, self._request(body)))  # raises its Failure

    def _request(self, body: dict[str, Any]) -> httpx.Request:
        return httpx.Request("POST", self._target, json=body, headers=self._headers)

    def _split_headers(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The headers httpx.Request(json=...) sends, in its order, around its content-length."""
        items = self._request({}).headers.multi_items()
        at = next(i for i, (k, _) in enumerate(items) if k == "content-length")
        self._direct_headers = items[:at], items[at + 1 :]
        return self._direct_headers

    async def _read(
        self, response: httpx.Response, req: CallRequest, gate: TokenGate, deadline: asyncio.Timeout
    ) -> Completion:
        body, capped = _capped(response, self.max_response_bytes)
        if response.status_code >= 400:
            await body.aread()
            raise self._status_failure(body)
        if not req.stream:
            await body.aread()
            return self._parse(body)
        kind = response.headers.get("content-type", "")
        if not kind.lower().startswith("text/event-stream"):
            raise await self._not_a_stream(response, capped)
        events = EventSource(body).aiter_sse()
        try:
            try:
                completion = await self.read_stream(response, events, gate)
            except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a chunk of the wrong shape
                raise Failure(
                    ProviderResponseError, f"unexpected stream chunk ({_describe(exc)})", status=response.status_code
                ) from exc
            await _drain(capped, deadline)
            return completion
        finally:
            await events.aclose()

    async def _not_a_stream(self, response: httpx.Response, capped: _Capped) -> Failure:
        """A 200 to a streamed request that is not an event stream (an HTML page, plain JSON, nothing):
        usually a wrong `base_url` or a proxy's page. Says what came back; not retried."""
        head = b""
        async for chunk in capped:
            head += chunk
            if len(head) >= _PEEK_LIMIT:
                break
        kind = response.headers.get("content-type") or "no content-type"
        what = (
            repr(self._quote(head[:_PEEK_LIMIT].decode("utf-8", "replace"), _PEEK_LIMIT)) if head else "an empty body"
        )
        return Failure(
            ProviderResponseError,
            f"a streamed request got HTTP {response.status_code} that is not an "
            f"event stream ({self._quote(kind, 100)}): {what}",
            status=response.status_code,
        )

    def _parse(self, response: httpx.Response) -> Completion:
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            kind = response.headers.get("content-type", "no content-type")
            raise Failure(
                ProviderResponseError,
                f"response is not JSON (HTTP {response.status_code}, "
                f"{self._quote(kind, 100)}): {self._quote(response.text)!r}",
                status=response.status_code,
            ) from exc
        try:
            return self.parse_body(data)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise Failure(
                ProviderResponseError,
                f"unexpected response shape ({type(exc).__name__}: {exc}): {self._quote(response.text)!r}",
                status=response.status_code,
            ) from exc

    def _status_failure(self, response: httpx.Response) -> Failure:
        status = response.status_code
        retryable = status in RETRYABLE_STATUS or status >= 500
        detail = f"HTTP {status} {self._quote(response.reason_phrase, 100)}".rstrip()
        message = self._quote(_error_message(response))
        if message:
            detail += f": {message}"
        return Failure(
            ProviderHTTPError,
            detail,
            status=status,
            retryable=retryable,
            retry_after=_retry_after(response.headers) if retryable else None,
        )

    def stream_json(self, payload: str, gate: TokenGate, what: str) -> dict[str, Any]:
        """One stream `data:` payload as a JSON object; `what` names it in errors ("chunk", "event").
        Retryable only while no token has reached the user: text is never emitted twice."""
        try:
            item = json.loads(payload)
        except ValueError as exc:
            raise Failure(
                ProviderResponseError,
                f"a stream {what} is not JSON: {self._quote(payload, 200)!r}",
                retryable=not gate.emitted,
            ) from exc
        if not isinstance(item, dict):
            raise Failure(ProviderResponseError, f"a stream {what} is not an object: {self._quote(payload, 200)!r}")
        return item

    def _error(self, req: CallRequest, failure: Failure, attempts: int) -> ProviderError:
        text = f"{req.node}: provider {self.name}, model {req.model!r}: {failure.detail}"
        if attempts > 1:
            text += f" (gave up after {attempts} attempts)"
        elif failure.retry_after and failure.retry_after > self._backoff.max_retry_after_s:
            text += f" (the server asks to wait {failure.retry_after:g} s; not retried)"
        error = failure.error(
            self._clean(text), node=req.node, provider=self.name, status=failure.status, retryable=failure.retryable
        )
        error.attempts = attempts  # the runner reports it on failed nodes too
        return error

    def _quote(self, text: str, limit: int = _MESSAGE_LIMIT) -> str:
        """Server text for a message: secrets masked first (so a cut never leaves half a key), whitespace
        collapsed, control characters replaced, then cut to `limit` characters."""
        text = _CONTROL.sub("\ufffd", " ".join(self._redact(text).split()))
        return text if len(text) <= limit else text[:limit] + "..."

    def _clean(self, text: str) -> str:
        """A whole message: secrets (and a URL's credentials) masked, control characters replaced."""
        return _CONTROL.sub("\ufffd", _USERINFO.sub("***@", self._redact(text)))

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            # also as a bytes repr quotes it (`Bearer sk-..\r`) and without stray whitespace
            for form in sorted({secret, secret.strip(), repr(secret)[1:-1]}, key=len, reverse=True):
                if len(form) >= 6 and form in text:
                    text = text.replace(form, "***")
        return text

    async def aclose(self) -> None:
        # After this, a call fails (RuntimeError), as on a closed httpx client.
        self._closed = True
        await self._transport.aclose()

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(name={self.name!r}, endpoint={self.endpoint!r})"


def request_params(req: CallRequest) -> dict[str, Any]:
    """The parameters that reach the request body: REQUEST_PARAMS that are set, nothing else."""
    return _set_params(req.params)


async def _drain(capped: _Capped, deadline: asyncio.Timeout) -> None:
    """Read a stream's body to its end after the answer's end marker (`[DONE]`, `message_stop`).

    A connection goes back to the pool only when its body was read to the end; leaving the last
    chunk (usually just the chunked terminator) unread closes it, so every streamed call would pay a
    new TCP (in production, TLS) handshake. A server that keeps sending after its end marker gets
    `_DRAIN_LIMIT` bytes, within what is left of the request's timeout, then we give up on the
    connection (closed with the response) but keep the complete answer: running out of time here is
    not the call's timeout.
    """
    when = deadline.when()
    deadline.reschedule(None)
    left = _DRAIN_LIMIT
    try:
        async with asyncio.timeout_at(when):
            async for chunk in capped.source:  # the raw rest, past the SSE parser's buffer
                left -= len(chunk)
                if left < 0:
                    return
    except (TimeoutError, httpx.HTTPError):
        pass  # the answer is complete; only the connection is lost


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds a server asks us to wait: `retry-after-ms`, else `Retry-After` as seconds or an HTTP-date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(response: httpx.Response) -> str:
    """The provider's own words, whole: `{"error": {"message"}}` (OpenAI and Anthropic), else the text."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return response.text
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message"):
            return str(data["message"])
    return response.text


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
