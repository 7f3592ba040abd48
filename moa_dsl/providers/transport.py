"""`AsyncioTransport`: HTTP/1.1 for the providers on asyncio's own sockets, behind httpx's API.

httpx still builds every request and reads every response (`httpx.Request`, `httpx.Response`,
its decoders and exceptions); this transport only moves the bytes, in place of httpcore.

Why: the providers make many short calls at once. httpcore (1.0.x) on asyncio goes through anyio,
which adds a cancel scope to every read and write and a checkpoint (a trip round the event loop) to
every lock and I/O step, and scans its pool on every request start and end. At 64 calls in flight a
loaded event loop makes each trip cost a millisecond or more, so a call spent ~10 ms in the client
on top of the server's latency (bench/README.md has the measurements). Here a request is written
synchronously and a response costs one wake-up per arrival of bytes.

What it does: HTTP/1.1 over TCP or TLS; a keep-alive pool with one bound on open connections
(across origins) and an idle expiry; request bodies in memory or streamed (chunked); responses
framed by Content-Length, chunked coding or the connection's close; 1xx responses skipped;
connect, read (per wait for bytes, as httpcore), write and pool timeouts; httpx's exceptions, each
carrying the request. A connection is reused only after its response was read to the end.

What it leaves to httpx's default transport: proxies (the providers keep httpx's own transport when
an environment proxy applies to their URL), HTTP/2, Unix sockets, `socket_options`.
"""
from __future__ import annotations

import asyncio
import os
import re
import select
import ssl
from collections import deque
from typing import AsyncIterator

import httpx

MAX_HEAD = 64 * 1024           # bytes of status line and headers we accept
_HIGH_WATER = 256 * 1024       # unread response bytes before we stop reading the socket
_LOW_WATER = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BAD_HEADER_BYTES = (b"\r", b"\n", b"\0")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # RFC 9110 token: methods, header names
_NOT_TOKEN = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_HEAD_END = re.compile(rb"\r?\n\r?\n")                       # the blank line after the headers

Origin = tuple[str, str, int]   # scheme, host, port


class _Connection(asyncio.Protocol):
    """One socket: the bytes received and not yet consumed, and a way to wait for more."""

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop):
        self.origin, self.loop = origin, loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False                       # the peer closed its side, or the socket is gone
        self.idle_since = 0.0
        self.discarded = False
        self._waiter: asyncio.Future | None = None
        self._drained: asyncio.Future | None = None
        self._reading_paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False               # let asyncio close the socket

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- used by the transport ------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def reusable(self) -> bool:
        """Open, quiet (no unread bytes: a server does not speak first) and not closing -- also as the
        socket says now: a server that hung up right after its answer leaves a FIN the loop may not
        have read yet, and a request written there is lost (httpcore asks the socket the same)."""
        if self.eof or self.buffer or self.transport is None or self.transport.is_closing():
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()   # not select.select: it cannot take descriptors above 1023
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    async def wait_for_bytes(self, timeout: float | None, request: httpx.Request) -> None:
        """Until more bytes arrive or the peer closes; httpx.ReadTimeout after `timeout` seconds of silence."""
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            arrived = await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if not arrived:
            raise httpx.ReadTimeout(f"no bytes from the server for {timeout:g} s", request=request)

    def take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        if self._reading_paused and len(self.buffer) < _LOW_WATER:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def write(self, data: bytes, timeout: float | None, request: httpx.Request) -> None:
        if self.eof or self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("the server closed the connection", request=request)
        self.transport.write(data)
        if self._drained is not None:    # the socket's buffer is full: wait until it takes more
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._drained)
            except TimeoutError:
                raise httpx.WriteTimeout(f"could not send the request within {timeout:g} s",
                                         request=request) from None
            if self.eof:
                raise httpx.WriteError("the server closed the connection", request=request)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.eof = True


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(False)


class AsyncioTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` (use as `httpx.AsyncClient(transport=...)`).

    `ssl_context` verifies https origins (default: httpx's, honouring SSL_CERT_FILE / SSL_CERT_DIR
    when `trust_env`, built at the first https connection); `max_connections` bounds the open
    connections of every origin together, further requests wait (`pool` timeout);
    `keepalive_expiry` drops connections idle longer than that many seconds (4: under the 5 s after
    which llama.cpp's server, uvicorn and Node close an idle connection, so we never race their close).
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, trust_env: bool = True,
                 max_connections: int = 100, keepalive_expiry: float | None = 4.0):
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._ssl = ssl_context
        self._trust_env = trust_env
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._live: set[_Connection] = set()   # open or being opened, idle or not
        self._opening = 0
        # Requests waiting for the pool, oldest first: (origin, future). The future's result is a
        # connection handed over (same origin), True (a slot may be free: look again) or False (timeout).
        self._waiters: deque[tuple[Origin, asyncio.Future]] = deque()
        self._closed = False

    @property
    def connections(self) -> int:
        """Connections open (or being opened) now."""
        return len(self._live) + self._opening

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        if not url.host:
            raise httpx.UnsupportedProtocol("the URL has no host", request=request)
        timeouts = request.extensions.get("timeout") or {}
        head = _request_head(request)
        conn = await self._acquire((url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme]),
                                   request, timeouts)
        try:
            write_timeout = timeouts.get("write")
            await _send_body(conn, request, head, write_timeout)
            read_timeout = timeouts.get("read")
            while True:
                version, status, reason, headers = await _read_head(conn, request, read_timeout)
                if status >= 200:
                    break
                if status == 101:
                    raise httpx.RemoteProtocolError("the server switched protocols unasked (101)", request=request)
            body = _Body(self, conn, request, _framing(request, status, headers), read_timeout,
                         keep_alive=_keep_alive(request, version, headers))
        except BaseException:
            self._release(conn, reuse=False)
            raise
        return httpx.Response(status, headers=headers, stream=body,
                              extensions={"http_version": version, "reason_phrase": reason})

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail, later ones are refused."""
        self._closed = True
        for conn in list(self._live):
            conn.close()
        self._live.clear()
        self._idle.clear()
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)   # it looks again, finds the transport closed and says so

    # -- the pool -------------------------------------------------------------------------------------
    async def _acquire(self, origin: Origin, request: httpx.Request, timeouts: dict) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = None
        woken_before = False
        while True:
            if self._closed:
                raise RuntimeError("the transport is closed")
            idle = self._idle.get(origin)
            now = loop.time()
            while idle:
                conn = idle.pop()        # the most recently used: the warmest
                if conn.reusable() and (self._expiry is None or now - conn.idle_since < self._expiry):
                    return conn
                self._discard(conn)
            if self.connections >= self._max:
                self._close_an_idle_connection()
            if self.connections < self._max:
                return await self._connect(origin, request, timeouts.get("connect"))
            pool_timeout = timeouts.get("pool")
            if deadline is None and pool_timeout is not None:
                deadline = now + pool_timeout
            waiter = loop.create_future()
            # Woken but overtaken (a new request took the free slot first): keep our place in the queue.
            (self._waiters.appendleft if woken_before else self._waiters.append)((origin, waiter))
            timer = loop.call_at(deadline, _expire, waiter) if deadline is not None else None
            try:
                woken = await waiter
            except BaseException:   # cancelled: leave the queue, or pass on what was already given
                self._forget(origin, waiter)
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if isinstance(woken, _Connection):
                return woken
            if woken is False:
                raise httpx.PoolTimeout(f"no connection free within {pool_timeout:g} s "
                                        f"({self._max} in use)", request=request)
            woken_before = True

    def _forget(self, origin: Origin, waiter: asyncio.Future) -> None:
        """A waiting request was cancelled: take it out of the queue, or hand on what it was given."""
        if (origin, waiter) in self._waiters:
            self._waiters.remove((origin, waiter))
        elif waiter.done() and not waiter.cancelled():
            given = waiter.result()
            if isinstance(given, _Connection):
                self._release(given, reuse=True)
            elif given:
                self._wake_one()

    def _close_an_idle_connection(self) -> None:
        for conns in self._idle.values():
            if conns:
                self._discard(conns.popleft())   # the longest idle
                return

    async def _connect(self, origin: Origin, request: httpx.Request, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                try:
                    self._ssl = httpx.create_ssl_context(trust_env=self._trust_env)
                except (OSError, ssl.SSLError) as exc:   # e.g. SSL_CERT_FILE names a missing file
                    where = ", ".join(f"{v}={os.environ[v]!r}" for v in ("SSL_CERT_FILE", "SSL_CERT_DIR")
                                      if self._trust_env and os.environ.get(v))
                    raise httpx.ConnectError(f"cannot load the CA certificates to verify {host}"
                                             + (f" ({where})" if where else "") + f": {exc}",
                                             request=request) from exc
            context = self._ssl
        self._opening += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(origin, loop), host, port, ssl=context,
                                                       server_hostname=host if context is not None else None)
        except BaseException as exc:
            self._opening -= 1
            self._wake_one()    # the slot this attempt held is free again
            if isinstance(exc, TimeoutError) and timeout is not None:
                raise httpx.ConnectTimeout(f"could not connect to {host}:{port} within {timeout:g} s",
                                           request=request) from None
            if isinstance(exc, (OSError, ssl.SSLError)):
                raise httpx.ConnectError(f"could not connect to {host}:{port}: {exc}", request=request) from exc
            raise
        self._opening -= 1
        if self._closed:
            conn.close()
            raise RuntimeError("the transport is closed")
        self._live.add(conn)
        return conn

    def _release(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and not self._closed and not conn.discarded and conn.reusable():
            conn.idle_since = conn.loop.time()
            # Straight to the oldest request waiting for this origin: a request made after it must
            # not take the connection first (it would, being scheduled earlier than the waiter).
            for i, (origin, waiter) in enumerate(self._waiters):
                if origin == conn.origin and not waiter.done():
                    del self._waiters[i]
                    waiter.set_result(conn)
                    return
            self._idle.setdefault(conn.origin, deque()).append(conn)
        else:
            self._discard(conn)
        self._wake_one()

    def _discard(self, conn: _Connection) -> None:
        if not conn.discarded:
            conn.discarded = True
            conn.close()
            self._live.discard(conn)

    def _wake_one(self) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return


# --- requests --------------------------------------------------------------------------------------

def _request_head(request: httpx.Request) -> bytes:
    target = request.url.raw_path or b"/"
    method = request.method.encode("utf-8")
    if not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"illegal character in method {_NOT_TOKEN.split(method)[0][:20]!r}", request=request)
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or any(c in value for c in _BAD_HEADER_BYTES):
            # Never the value, nor a name past its first bad byte: either may hold a secret.
            raise httpx.LocalProtocolError(f"illegal character in header {_NOT_TOKEN.split(name)[0][:40]!r}",
                                           request=request)
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


async def _send_body(conn: _Connection, request: httpx.Request, head: bytes, timeout: float | None) -> None:
    try:
        content = request.content
    except httpx.RequestNotRead:
        content = None
    if content is not None:
        await conn.write(head + content, timeout, request)   # one write, one segment for small requests
        return
    await conn.write(head, timeout, request)
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    async for chunk in request.stream:                      # type: ignore[union-attr]
        if chunk:
            await conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk, timeout, request)
    if chunked:
        await conn.write(b"0\r\n\r\n", timeout, request)


# --- responses -------------------------------------------------------------------------------------

async def _read_head(conn: _Connection, request: httpx.Request,
                     timeout: float | None) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    while True:
        blank = _HEAD_END.search(conn.buffer)
        if blank is not None:
            end = blank.start()
            break
        if len(conn.buffer) > MAX_HEAD:
            raise httpx.RemoteProtocolError(f"the response head exceeds {MAX_HEAD} bytes", request=request)
        if conn.eof:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response." if not conn.buffer
                                            else "Server disconnected in the middle of the response head.",
                                            request=request)
        await conn.wait_for_bytes(timeout, request)
    if end > MAX_HEAD:
        raise httpx.RemoteProtocolError(f"the response head exceeds {MAX_HEAD} bytes", request=request)
    # Lines end in CRLF; a bare LF is accepted too (RFC 9112 2.2 allows it, and h11 does).
    lines = [line[:-1] if line.endswith(b"\r") else line for line in conn.take(blank.end())[:end].split(b"\n")]
    status_line = lines[0].split(b" ", 2)
    version = status_line[0]
    if (len(status_line) < 2 or not version.startswith(b"HTTP/1.") or len(status_line[1]) != 3
            or not status_line[1].isdigit()):
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}", request=request)
    status = int(status_line[1])
    if status < 100:
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}", request=request)
    reason = status_line[2] if len(status_line) > 2 else b""
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):           # obsolete line folding: part of the previous value
            if not headers:
                raise httpx.RemoteProtocolError("a header line starts with whitespace", request=request)
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip(b" \t"):
            raise httpx.RemoteProtocolError(f"malformed header line: {line[:80]!r}", request=request)
        headers.append((name, value.strip(b" \t")))
    return version, status, reason, headers


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name]


def _framing(request: httpx.Request, status: int, headers: list[tuple[bytes, bytes]]) -> tuple[str, int]:
    """How the body ends (RFC 9112, 6.3): ("length", n), ("chunked", 0) or ("close", 0)."""
    if request.method == "HEAD" or status in (204, 304):
        return ("length", 0)
    codings = b",".join(_values(headers, b"transfer-encoding"))
    if codings:
        last = codings.split(b",")[-1].strip().lower()
        return ("chunked", 0) if last == b"chunked" else ("close", 0)
    lengths = {v.strip() for value in _values(headers, b"content-length") for v in value.split(b",")}
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise httpx.RemoteProtocolError(f"bad Content-Length: {sorted(lengths)!r}", request=request)
        return ("length", int(next(iter(lengths))))
    return ("close", 0)


def _keep_alive(request: httpx.Request, version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    tokens = {t.strip().lower() for v in _values(headers, b"connection") for t in v.split(b",")}
    if version != b"HTTP/1.1" or b"close" in tokens:
        return False
    return "close" not in request.headers.get("connection", "").lower()


class _Body(httpx.AsyncByteStream):
    """A response body read off its connection as it arrives; closing it returns the connection to
    the pool if the body was read to its end (else the connection is closed)."""

    def __init__(self, transport: AsyncioTransport, conn: _Connection, request: httpx.Request,
                 framing: tuple[str, int], timeout: float | None, *, keep_alive: bool):
        self._transport, self._conn, self._request = transport, conn, request
        self._mode, self._length = framing
        self._timeout = timeout
        self._keep_alive = keep_alive and self._mode != "close"
        self._started = self._complete = self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise httpx.StreamConsumed()
        self._started = True
        if self._mode == "length":
            parts = self._fixed(self._length)
        elif self._mode == "chunked":
            parts = self._chunked()
        else:
            parts = self._until_close()
        async for part in parts:
            yield part
        self._complete = True

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._conn, reuse=self._complete and self._keep_alive)

    async def _more(self) -> None:
        await self._conn.wait_for_bytes(self._timeout, self._request)

    async def _fixed(self, length: int) -> AsyncIterator[bytes]:
        conn, left = self._conn, length
        while left:
            if not conn.buffer:
                if conn.eof:
                    raise httpx.RemoteProtocolError(
                        f"peer closed connection without sending complete message body: "
                        f"received {length - left} bytes, expected {length}", request=self._request)
                await self._more()
                continue
            part = conn.take(min(left, len(conn.buffer)))
            left -= len(part)
            yield part

    async def _line(self) -> bytes:
        conn = self._conn
        while True:
            end = conn.buffer.find(b"\n")
            if end >= 0:
                line = conn.take(end + 1)[:-1]
                return line[:-1] if line.endswith(b"\r") else line   # CRLF, or a bare LF
            if len(conn.buffer) > MAX_HEAD:
                raise httpx.RemoteProtocolError("a chunk-size or trailer line is too long", request=self._request)
            if conn.eof:
                raise httpx.RemoteProtocolError("peer closed connection in the middle of a chunked body",
                                                request=self._request)
            await self._more()

    async def _chunked(self) -> AsyncIterator[bytes]:
        while True:
            size_text = (await self._line()).split(b";", 1)[0].strip()
            size = int(size_text, 16) if _HEX.fullmatch(size_text) else -1   # int() takes "0x5", "+5", "0_5"
            if size < 0:
                raise httpx.RemoteProtocolError(f"bad chunk size {size_text[:20]!r}", request=self._request)
            if size == 0:
                while await self._line():   # trailers, up to the empty line
                    pass
                return
            async for part in self._fixed(size):
                yield part
            if await self._line():
                raise httpx.RemoteProtocolError("a chunk is longer than its size says", request=self._request)

    async def _until_close(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.buffer:
                yield conn.take(len(conn.buffer))
            elif conn.eof:
                return
            else:
                await self._more()
