"""What every HTTP provider shares: pooled connections, the retry loop, and error translation.

A subclass says how to build a request body and how to read a response or a stream; this module
decides what is retried, how long to wait, and what the user reads when a call fails for good.

Retryable (LANGUAGE.md, "Built-in providers"): connection errors, timeouts, HTTP 408, 409, 429 and
5xx, and a broken stream that has not emitted a token yet (a retry after a token would duplicate
text). A 200 whose body is not what the API promises is not retried: it usually means a wrong
`base_url`, and failing fast says so. `Retry-After` / `retry-after-ms` are honoured in full, up to
`Backoff.max_retry_after_s`; a server asking for more is not retried.

Errors are `moa_dsl.errors.ProviderError`s naming node, provider, model and HTTP status. Every secret
the provider holds (API key, header values) is masked out of every message, whatever the server echoes.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit

import httpx

from ..config import request_params as _set_params
from ..errors import (
    ConfigError, ProviderConnectionError, ProviderError, ProviderHTTPError, ProviderResponseError,
    ProviderTimeout,
)
from .base import CallRequest, Completion, Emit, OnToken, Wait
from .transport import AsyncioTransport

RETRYABLE_STATUS = frozenset({408, 409, 429})
MAX_CONNECTIONS = 512          # high-fanout topologies and benchmarks run hundreds of calls at once
SHARD_CONNECTIONS = 8          # connections per httpx client; see _Shards for why they are split
_MESSAGE_LIMIT = 300           # characters of a server's error text kept in our message
_DRAIN_LIMIT = 64 * 1024       # characters read after a stream's end marker before we give up on its connection
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\")]+")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of base * 2**(n-1), capped."""

    base_s: float = 0.5
    cap_s: float = 20.0
    max_retry_after_s: float = 300.0   # a longer Retry-After (a spent daily quota) fails instead of stalling

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after > 0:
            return retry_after         # the server knows best; "at least" what it asks
        full = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        return full * (0.5 + random.random() / 2)


DEFAULT_BACKOFF = Backoff()            # read when a provider is built, so tests can monkeypatch it


class Failure(Exception):
    """One failed attempt, before we know whether it is the last. `complete` turns it into a ProviderError."""

    def __init__(self, error: type[ProviderError], detail: str, *, status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None):
        super().__init__(detail)
        self.error, self.detail, self.status = error, detail, status
        self.retryable, self.retry_after = retryable, retry_after


class _TokenGate:
    """Passes deltas on and remembers whether any went out (then a retry would duplicate text)."""

    __slots__ = ("on_token", "emitted")

    def __init__(self, on_token: OnToken | None):
        self.on_token, self.emitted = on_token, False

    def __call__(self, text: str) -> None:
        self.emitted = True
        if self.on_token is not None:
            self.on_token(text)


class _Shards:
    """A provider's connections, split over several `httpx.AsyncClient`s of `per_shard` connections each.

    Why: httpcore 1.0.9's `AsyncConnectionPool._assign_requests_to_connections` does
    O(requests x connections) work on every request's start and end. With 64 calls in flight in one
    pool that is ~10 ms of CPU per call, more than a fast model's whole latency. Measured (raw
    httpx, 1,000 calls of 100 ms, 2 cores): pools of 8 connections cost 1.1 s of CPU at bound 64 and
    1.5 s at bound 256; pools of 16, 1.3 s and 2.4 s; of 32, 4.7 s and 4.1 s.

    Each call takes the first shard with a free connection, and a shard is added only when every
    existing one is full: a low-concurrency user keeps one client, and a burst of N calls finds the
    connections the last burst of N opened (spreading calls evenly instead would ask a shard that
    had few calls for more, opening new connections). At the cap, the least busy shard queues the
    call. Choosing is O(number of shards), at most MAX_CONNECTIONS / per_shard.
    """

    __slots__ = ("_make", "_per_shard", "_max_shards", "clients", "busy", "_closed")

    def __init__(self, make: Callable[[], httpx.AsyncClient], *, per_shard: int, max_shards: int):
        self._make, self._per_shard, self._max_shards = make, per_shard, max_shards
        self.clients: list[httpx.AsyncClient] = [make()]
        self.busy: list[int] = [0]        # calls in flight per client
        self._closed = False

    def acquire(self) -> int:
        """The index of the client to send on; pair with `release(index)`."""
        busy = self.busy
        for index, calls in enumerate(busy):
            if calls < self._per_shard:
                break
        else:
            if len(busy) < self._max_shards and not self._closed:
                self.clients.append(self._make())
                busy.append(0)
                index = len(busy) - 1
            else:
                index = busy.index(min(busy))
        busy[index] += 1
        return index

    def release(self, index: int) -> None:
        self.busy[index] -= 1

    async def aclose(self) -> None:
        # After this, a call fails as on any closed httpx client (no new shard is opened).
        self._closed = True
        for client in self.clients:
            await client.aclose()


class HTTPProvider:
    """Base of the OpenAI and Anthropic providers. Subclasses set `kind`, `path` and the four hooks."""

    kind = "http"
    path = ""

    def __init__(self, *, name: str, base_url: str, api_key: str | None = None,
                 headers: Mapping[str, str] | None = None, max_concurrency: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, endpoint: str | None = None,
                 backoff: Backoff | None = None, semaphore: asyncio.Semaphore | None = None):
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"provider {name}: max_concurrency must be at least 1, not {max_concurrency}")
        if not base_url or urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigError(f"provider {name}: base_url must be an http(s) URL, not {base_url!r}")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.endpoint = endpoint or self.base_url
        self.max_concurrency = max_concurrency
        self.url = self.base_url + self.path
        extra = dict(headers or {})
        self._secrets = tuple(s for s in (api_key, *extra.values()) if s and len(s) >= 6)
        self._backoff = backoff or DEFAULT_BACKOFF
        # Held per attempt, never across a retry wait. `semaphore`: one shared with other providers
        # (the local provider's max_concurrency spans its per-model clients).
        self._semaphore = semaphore if semaphore is not None else (
            asyncio.Semaphore(max_concurrency) if max_concurrency else None)
        self._timeout_dicts: dict[float, dict[str, float | None]] = {}
        self._target = httpx.URL(self.url)
        headers = {**self.auth_headers(api_key), **extra}
        # Proxy variables must not reroute loopback calls (the embedded runtime, the fake server).
        trust_env = urlsplit(self.base_url).hostname not in _LOOPBACK_HOSTS
        # One SSL context for every shard: building one costs ~30 ms (it loads the CA bundle).
        verify: Any = True
        per_shard = SHARD_CONNECTIONS
        if transport is None:
            if _proxied(self._target, trust_env):
                # httpx's own transport, in shards sharing one SSL context (building one costs ~30 ms)
                verify = httpx.create_ssl_context(trust_env=trust_env)
            else:
                # Our HTTP/1.1 transport (providers/transport.py says why): its pool is O(1) a call, so
                # one client; its SSL context is built at its first https connection, not for http.
                transport = AsyncioTransport(trust_env=trust_env, max_connections=MAX_CONNECTIONS)
                per_shard = MAX_CONNECTIONS
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        # An injected transport (tests) is shared by every shard; closing it more than once is harmless.
        try:
            self._shards = _Shards(
                lambda: httpx.AsyncClient(headers=headers, limits=limits, transport=transport, verify=verify,
                                          trust_env=trust_env),
                per_shard=per_shard, max_shards=max(1, MAX_CONNECTIONS // per_shard))
        except (ImportError, ValueError) as exc:   # an environment proxy httpx cannot use
            reason = _URL_IN_TEXT.sub("<proxy URL>", str(exc))   # a proxy URL may hold credentials
            raise ConfigError(f"provider {name}: the proxy the environment sets for {self._target.host} "
                              f"(HTTP_PROXY / HTTPS_PROXY / ALL_PROXY) cannot be used: {reason}") from None

    # -- hooks ------------------------------------------------------------------------------------
    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        raise NotImplementedError

    def build_body(self, req: CallRequest) -> dict[str, Any]:
        raise NotImplementedError

    def parse_body(self, data: Any) -> Completion:
        """A parsed 200 body -> Completion; raise Failure (or KeyError/TypeError/...) if malformed."""
        raise NotImplementedError

    async def read_stream(self, response: httpx.Response, lines: AsyncIterator[str], gate: _TokenGate) -> Completion:
        """Read the answer from `lines` (the body's lines) and return at the stream's end marker;
        `_attempt` then drains what is left of `lines`, so the connection goes back to the pool."""
        raise NotImplementedError

    # -- the call ---------------------------------------------------------------------------------
    async def complete(self, req: CallRequest, *, on_token: OnToken | None = None,
                       emit: Emit | None = None, wait: Wait | None = None) -> Completion:
        gate = _TokenGate(on_token)
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
                if (not failure.retryable or attempt > retries or gate.emitted
                        or (failure.retry_after or 0) > self._backoff.max_retry_after_s):
                    raise self._error(req, failure, attempt) from failure.__cause__
                delay = self._backoff.delay(attempt, failure.retry_after)
                if emit is not None:
                    emit("retry", {"attempt": attempt, "error": self._redact(failure.detail),
                                   "delay_s": round(delay, 3)})
                await (wait or asyncio.sleep)(delay)
                continue
            if attempt > 1:
                completion = Completion(completion.text, completion.prompt_tokens, completion.completion_tokens,
                                        attempt, completion.finish_reason, completion.extra)
            return completion

    async def _attempt(self, req: CallRequest, gate: _TokenGate) -> Completion:
        body = self.build_body(req)
        shard = self._shards.acquire()
        try:
            return await self._send(self._shards.clients[shard], req, body, gate)
        finally:
            self._shards.release(shard)

    def _request(self, client: httpx.AsyncClient, body: dict[str, Any], seconds: float) -> httpx.Request:
        """The request `client.post(self.url, json=body, timeout=...)` would build, from parts computed
        once per provider (the URL, the client's merged headers) instead of merged again on every call."""
        return httpx.Request("POST", self._target, json=body, headers=client.headers,
                             extensions={"timeout": self._timeout_dict(seconds)})

    async def _send(self, client: httpx.AsyncClient, req: CallRequest, body: dict[str, Any],
                    gate: _TokenGate) -> Completion:
        try:
            response = await _dispatch(client, self._request(client, body, req.timeout))
            try:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._status_failure(response)
                if not req.stream:
                    await response.aread()
                    return self._parse(response)
                lines = response.aiter_lines()
                try:
                    completion = await self.read_stream(response, lines, gate)
                except (KeyError, IndexError, TypeError, AttributeError) as exc:   # a chunk of the wrong shape
                    raise Failure(ProviderResponseError, f"unexpected stream chunk ({_describe(exc)})",
                                  status=response.status_code) from exc
                await _drain(lines, req.timeout)
                return completion
            finally:
                await response.aclose()   # back to the pool once read to its end; else the connection is dropped
        except httpx.TimeoutException as exc:
            raise Failure(ProviderTimeout, f"timed out after {req.timeout:g} s ({type(exc).__name__})",
                          retryable=True) from exc
        except httpx.LocalProtocolError as exc:   # our request is malformed (e.g. a bad header): again is the same
            raise Failure(ProviderConnectionError, f"connection failed: {_describe(exc)}") from exc
        except httpx.TransportError as exc:
            raise Failure(ProviderConnectionError, f"connection failed: {_describe(exc)}", retryable=True) from exc
        except httpx.HTTPError as exc:   # e.g. a body that cannot be decoded
            raise Failure(ProviderResponseError, f"unreadable response: {_describe(exc)}") from exc

    def _parse(self, response: httpx.Response) -> Completion:
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            kind = response.headers.get("content-type", "no content-type")
            raise Failure(ProviderResponseError, f"response is not JSON (HTTP {response.status_code}, {kind}): "
                          f"{_snippet(response.text)!r}", status=response.status_code) from exc
        try:
            return self.parse_body(data)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise Failure(ProviderResponseError, f"unexpected response shape ({type(exc).__name__}: {exc}): "
                          f"{_snippet(response.text)!r}", status=response.status_code) from exc

    def _status_failure(self, response: httpx.Response) -> Failure:
        status = response.status_code
        retryable = status in RETRYABLE_STATUS or status >= 500
        detail = f"HTTP {status} {response.reason_phrase}".rstrip()
        message = _error_message(response)
        if message:
            detail += f": {message}"
        return Failure(ProviderHTTPError, detail, status=status, retryable=retryable,
                       retry_after=_retry_after(response.headers) if retryable else None)

    def _error(self, req: CallRequest, failure: Failure, attempts: int) -> ProviderError:
        text = f"{req.node}: provider {self.name}, model {req.model!r}: {failure.detail}"
        if attempts > 1:
            text += f" (gave up after {attempts} attempts)"
        elif failure.retry_after and failure.retry_after > self._backoff.max_retry_after_s:
            text += f" (the server asks to wait {failure.retry_after:g} s; not retried)"
        error = failure.error(self._redact(text), node=req.node, provider=self.name, status=failure.status,
                              retryable=failure.retryable)
        error.attempts = attempts   # the runner reports it on failed nodes too
        return error

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            # also as h11/httpx quote it (`Bearer sk-..\r` in a bytes repr) and without stray whitespace
            for form in sorted({secret, secret.strip(), repr(secret)[1:-1]}, key=len, reverse=True):
                if len(form) >= 6 and form in text:
                    text = text.replace(form, "***")
        return text

    def _timeout_dict(self, seconds: float) -> dict[str, float | None]:
        """The request extension httpx's transports read, built once per distinct timeout."""
        timeout = self._timeout_dicts.get(seconds)
        if timeout is None:
            timeout = self._timeout_dicts[seconds] = httpx.Timeout(seconds).as_dict()
        return timeout

    async def aclose(self) -> None:
        await self._shards.aclose()

    def __repr__(self) -> str:   # never the key
        return f"{type(self).__name__}(name={self.name!r}, endpoint={self.endpoint!r})"


def _proxied(url: httpx.URL, trust_env: bool) -> bool:
    """Whether httpx would send a request for `url` through an environment proxy (HTTP(S)_PROXY,
    ALL_PROXY, NO_PROXY), decided as httpx's client decides it (its most specific matching pattern
    wins; NO_PROXY maps to None) but without building a transport for every variable: a proxy that
    does not apply here (say socks5:// without socksio) must not stop this provider."""
    if not trust_env:
        return False
    try:
        from httpx._utils import URLPattern, get_environment_proxies
    except ImportError:   # an httpx that moved them: ask a client (builds, never sends)
        probe = httpx.AsyncClient(verify=False, trust_env=True)
        pick = getattr(probe, "_transport_for_url", None)
        return pick is None or pick(url) is not probe._transport
    mounts = sorted(((URLPattern(key), proxy) for key, proxy in get_environment_proxies().items()),
                    key=lambda item: item[0])
    return next((proxy is not None for pattern, proxy in mounts if pattern.matches(url)), False)


async def _dispatch(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send `request` on the transport `client` would pick for its URL (an environment proxy's, a
    test's injected one, else the client's pool), its body unread; the caller closes the response.

    Why not `client.send`: its per-request work -- the auth and redirect generators, the cookie jar
    (two urllib.request objects per response), response timing -- measured ~75 us of CPU a call
    (~125 us with `build_request`), a tenth of a loopback call's whole cost, for features these
    providers never use: auth is a header, redirects are not followed, and no LLM API needs cookies
    (so none are kept). A closed client still refuses, as `client.send` would.
    """
    if client.is_closed:
        raise RuntimeError("Cannot send a request, as the client has been closed.")
    pick = getattr(client, "_transport_for_url", None)
    if pick is None:   # an httpx without it: the public path, same result
        return await client.send(request, stream=True)
    response = await pick(request.url).handle_async_request(request)
    response.request = request
    return response


def request_params(req: CallRequest) -> dict[str, Any]:
    """The parameters that reach the request body: REQUEST_PARAMS that are set, nothing else."""
    return _set_params(req.params)


def stream_json(payload: str, gate: "_TokenGate", what: str) -> dict[str, Any]:
    """One stream `data:` payload as a JSON object; `what` names it in errors ("chunk", "event").
    Retryable only while no token has reached the user: text is never emitted twice."""
    try:
        item = json.loads(payload)
    except ValueError as exc:
        raise Failure(ProviderResponseError, f"a stream {what} is not JSON: {payload[:200]!r}",
                      retryable=not gate.emitted) from exc
    if not isinstance(item, dict):
        raise Failure(ProviderResponseError, f"a stream {what} is not an object: {payload[:200]!r}")
    return item


def sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line, else None (comments, `event:` lines, blank separators)."""
    if line.startswith("data:"):
        return line[5:].strip()
    return None


async def _drain(lines: AsyncIterator[str], timeout: float) -> None:
    """Read a stream's body to its end after the answer's end marker (`[DONE]`, `message_stop`).

    httpx returns a connection to the pool only when the body was read to its end; leaving the last
    chunk (usually just the chunked terminator) unread makes it close the connection, so every
    streamed call would pay a new TCP (in production, TLS) handshake. A server that keeps sending
    after its end marker gets `_DRAIN_LIMIT` characters and `timeout` seconds in all, then we give
    up on the connection (closed when the stream context exits) but keep the complete answer.
    """
    left = _DRAIN_LIMIT
    try:
        async with asyncio.timeout(timeout):
            async for line in lines:
                left -= len(line) + 1
                if left < 0:
                    return
    except (TimeoutError, httpx.HTTPError):
        pass   # the answer is complete; only the connection is lost


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
    """The provider's own words: `{"error": {"message"}}` (OpenAI and Anthropic), else the text."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return _snippet(response.text)
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _snippet(str(error["message"]))
        if isinstance(error, str):
            return _snippet(error)
        if data.get("message"):
            return _snippet(str(data["message"]))
    return _snippet(response.text)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
