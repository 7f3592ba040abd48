"""`AiohttpTransport`: httpx's request and response API, with aiohttp moving (and parsing) the bytes.

httpx builds every request and reads every response (`httpx.Request`, `httpx.Response`, its content
decoders); aiohttp speaks HTTP/1.1: one `aiohttp.ClientSession` (one connection pool) per provider.
This module parses nothing itself. It only translates at one boundary: aiohttp's exceptions into
httpx's (`raise ... from exc`, each carrying the request), so the providers see one error tree.

Why aiohttp and not httpx's default transport (httpcore): the providers make many short calls at once,
and httpcore on asyncio goes through anyio (a checkpoint and a cancel scope per I/O step) and scans its
pool on every request start and end. Measured (1,000 calls, 64 in flight, 50 ms each, wall / ideal):
aiohttp alone 1.09, httpx over this transport about the same, httpx on httpcore 10.8-14.6. Why not the
`httpx-aiohttp` package's adapter: it maps a dropped connection (`ServerDisconnectedError`) to
`httpx.ConnectTimeout`, so a reset would read as a timeout, and it builds an SSL context through httpx
(~30 ms, the CA bundle) for every transport, plain-HTTP ones included.

What aiohttp decides, not us: environment proxies when `trust_env` (HTTP_PROXY / HTTPS_PROXY /
NO_PROXY, `.netrc`; an https:// URL through a proxy is tunnelled with CONNECT), TLS verification and
its CA bundle (the system's default paths, so `SSL_CERT_FILE` / `SSL_CERT_DIR` as set when aiohttp is
first imported), keep-alive, flow control (it stops reading the socket while 128 KiB are unread).

Timeouts: a request's httpx `timeout` extension, if any, becomes aiohttp's connect and per-read socket
timeouts. The providers send none: they bound each whole request themselves (`asyncio.timeout`).

The providers' fast path (`send`, `read_body`, `wrap`, `buffered`): for a call that is not streamed, the
providers skip httpx's objects and hand aiohttp the request as bytes (the same headers, in the same order,
that `httpx.Request` would have carried), then read a plain answer (< 400, no Content-Encoding) with
`read_body`. Anything else (an error status, an encoded body) is wrapped (`wrap`) into the same
`httpx.Response` `handle_async_request` returns and read the httpx way. Why: at zero latency, building
an `httpx.Request` and `httpx.Response` and reading the body through httpx's decoder chain cost more
client CPU per call than aiohttp's whole request (bench/README.md, "Where the time goes over aiohttp alone").
"""

from __future__ import annotations

import asyncio
import ssl
from typing import AsyncIterator

import aiohttp
import httpx
import yarl

__all__ = ["AiohttpTransport", "MAX_CONNECTIONS", "ResponseTooLarge", "read_body"]

MAX_CONNECTIONS = 512


def _mapped(exc: BaseException) -> type[httpx.TransportError]:
    """The httpx exception type that says what an aiohttp (or socket) error says."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx.ReadTimeout
    if isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        return httpx.ProxyError
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake and certificate
        return httpx.ConnectError
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx.UnsupportedProtocol
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError  # no (valid) response: a hang-up, a malformed head
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError  # a body cut short or framed wrong
    if isinstance(exc, (ValueError, TypeError)):
        return httpx.LocalProtocolError  # our request cannot be sent (a header with a line break)
    return httpx.ReadError  # ClientOSError and the rest: the connection failed


def _translate(exc: BaseException, request: httpx.Request | None) -> httpx.TransportError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientSSLError) and getattr(exc, "certificate_error", None) is not None:
        text = f"{text} ({exc.certificate_error})"  # type: ignore[attr-defined]
    return _mapped(exc)(text, request=request)


class ResponseTooLarge(Exception):
    """A body past its limit (the providers' `max_response_bytes`), counted as it arrived."""


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """A whole body as it arrived (the caller has checked it has no Content-Encoding), counted chunk by
    chunk: past `limit` bytes, `ResponseTooLarge`, never buffered first. aiohttp's errors as httpx's."""
    chunks: list[bytes] = []
    count = 0
    try:
        async for chunk in response.content.iter_any():
            count += len(chunk)
            if count > limit:
                raise ResponseTooLarge()
            chunks.append(chunk)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise _translate(exc, None) from exc
    return b"".join(chunks)


def _extensions(response: aiohttp.ClientResponse) -> dict[str, bytes]:
    return {
        "http_version": b"HTTP/%d.%d" % tuple(response.version or (1, 1)),
        "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
    }


class _Body(httpx.AsyncByteStream):
    """A response body as aiohttp hands it over, chunk by chunk as bytes arrive."""

    __slots__ = ("_response", "_request")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self._response, self._request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise _translate(exc, self._request) from exc

    async def aclose(self) -> None:
        # Back to the pool if the body was read to its end; aiohttp closes the connection otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (its pool bounded to `max_connections`), opened at the first request.

    `ssl_context`: None for aiohttp's verified default; `trust_env`: proxies (and `.netrc`) from the
    environment. A session belongs to the event loop it was opened on; a request from another loop
    (a later `asyncio.run`) opens a new one.
    """

    def __init__(
        self,
        *,
        trust_env: bool = True,
        max_connections: int = MAX_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float | None = 15.0,
    ):
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self._trust_env, self._max = trust_env, max_connections
        self._ssl, self._keepalive = ssl_context, keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}
        self._urls: dict[str, yarl.URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                limit=self._max,
                limit_per_host=0,
                ssl=self._ssl if self._ssl is not None else True,
                keepalive_timeout=self._keepalive,
            )
            # auto_decompress off: httpx decodes (and the providers count) the body. No cookies: no LLM
            # API needs them. No default headers: httpx's request carries its own.
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=self._trust_env,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
            self._loop = loop
        return self._session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout | None:
        given = request.extensions.get("timeout")
        if not given:
            return None
        key = (given.get("connect"), given.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=None, sock_connect=key[0], sock_read=key[1])
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("Cannot send a request, as the transport has been closed.")
        session = self._open()
        headers = request.headers.multi_items()
        try:
            data: bytes | AsyncIterator[bytes] | None = request.content or None
        except httpx.RequestNotRead:  # a streamed request body: aiohttp frames it (chunked)
            data = request.stream  # type: ignore[assignment]
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        timeout = self._timeout(request)
        try:
            response = await session.request(
                request.method,
                self._url(request.url),
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=False,
                # None: the session's own (no total bound; the providers bound each request themselves)
                timeout=timeout if timeout is not None else session.timeout,
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, TypeError) as exc:
            raise _translate(exc, request) from exc
        return self.wrap(response, request)

    def _url(self, url: httpx.URL | str) -> yarl.URL:
        # encoded=True: the URL goes out as httpx built it, byte for byte (yarl would re-quote %2F)
        text = url if isinstance(url, str) else str(url)
        parsed = self._urls.get(text)
        if parsed is None:
            if len(self._urls) >= 64:
                self._urls.clear()
            parsed = self._urls[text] = yarl.URL(text, encoded=True)
        return parsed

    async def send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> aiohttp.ClientResponse:
        """The providers' fast path: a request given as the parts an `httpx.Request` would hold (its
        `headers.multi_items()`, its content; the URL as `str(request.url)`), aiohttp's own response back,
        unread. Sent and refused exactly as by `handle_async_request` (no timeout extension: the caller
        bounds the request); its errors are the same httpx exceptions, without a request attached."""
        if self._closed:
            raise RuntimeError("Cannot send a request, as the transport has been closed.")
        session = self._open()
        try:
            return await session.request(
                method, self._url(url), headers=headers, data=body or None, allow_redirects=False, compress=False
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, TypeError) as exc:
            raise _translate(exc, None) from exc

    @staticmethod
    def wrap(response: aiohttp.ClientResponse, request: httpx.Request) -> httpx.Response:
        """aiohttp's unread response as httpx's, its body streamed as it arrives."""
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions=_extensions(response),
        )

    @staticmethod
    def buffered(response: aiohttp.ClientResponse, content: bytes, request: httpx.Request) -> httpx.Response:
        """aiohttp's response, its (unencoded) body already read by `read_body`, as httpx's."""
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            content=content,
            request=request,
            extensions=_extensions(response),
        )

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        # A session of a loop that has ended cannot be closed from this one; its sockets went with it.
        if session is not None and not session.closed and self._loop is asyncio.get_running_loop():
            await session.close()
