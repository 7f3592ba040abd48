"""AiohttpTransport (providers/transport.py) as users reach it: `httpx.AsyncClient(transport=...)`.

aiohttp parses HTTP; these tests check what reaches httpx through the transport: every framing, big
bodies, uploads, gzip, keep-alive, and that each failure arrives as the httpx exception that says what
happened (a timeout as a timeout, a hang-up as a protocol error), carrying its request.

Every test talks to a real server on 127.0.0.1 that it starts itself:
- `_Stdlib`: the standard library's `http.server` (HTTP/1.1, a thread): an independent HTTP
  implementation, for the happy paths (framings, informational responses, big bodies, uploads);
- `_Raw`: a scripted asyncio server in the test's own loop, for misbehaviour and for the pool,
  where a test must hold a response, count connections or see one close at an exact moment.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.server
import json
import random
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from moa_dsl.providers.transport import AiohttpTransport

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SECRET = "sk-secret-123"


def _blob(n: int, seed: int) -> bytes:
    """n bytes without a period, so a byte lost, doubled or moved anywhere changes the result."""
    return random.Random(seed).randbytes(n)


def _run(main: Callable[[], Awaitable[Any]]) -> Any:
    # wait_for turns a regression that hangs into a failure in seconds, not a pytest-timeout kill
    return asyncio.run(asyncio.wait_for(main(), 20))


def _client(transport: AiohttpTransport | None = None, *, timeout: Any = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport or AiohttpTransport(trust_env=False), timeout=timeout,
                             trust_env=False)


async def _raises(kind: type[Exception] | tuple, call: Awaitable[Any], url: str) -> Exception:
    """`call` fails with `kind`, an httpx error that carries the request it was about."""
    with pytest.raises(kind) as info:
        await call
    exc = info.value
    assert isinstance(exc, httpx.RequestError)
    assert str(exc.request.url) == url   # `.request` raises RuntimeError when it was never set
    return exc


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded, generously) for a state another party reaches; never a measure of speed."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


# --- the standard library's server -----------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes by path: /echo, /bytes, /chunked, /chunked-big, /until-close, /http10, /close,
    /status, /early-hints, /gate (GET/HEAD) and /upload (POST)."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        owner: _Stdlib = self.server.owner   # type: ignore[attr-defined]
        with owner.lock:
            owner.accepted += 1
            owner.open += 1
            owner.max_open = max(owner.max_open, owner.open)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            owner: _Stdlib = self.server.owner   # type: ignore[attr-defined]
            with owner.lock:
                owner.open -= 1

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._route(head=False)

    def do_POST(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _route(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        self.server.owner.targets.append(self.path)   # type: ignore[attr-defined]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        getattr(self, "_" + url.path.strip("/").replace("-", "_"))(query, head)

    def _send(self, status: int, body: bytes = b"", *, headers: tuple = (), head: bool = False) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            for i in range(0, len(body), 65536):
                self.wfile.write(body[i:i + 65536])

    # -- routes -------------------------------------------------------------------------------------
    def _echo(self, query: dict, head: bool) -> None:
        body = json.dumps({"method": self.command, "target": self.path, "headers": self.headers.items()})
        self._send(200, body.encode(), headers=[("Content-Type", "application/json")], head=head)

    def _bytes(self, query: dict, head: bool) -> None:
        self._send(200, _blob(int(query["n"]), int(query["seed"])), head=head)

    def _chunked(self, query: dict, head: bool) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Trailer", "X-Checksum")
        self.end_headers()
        self.wfile.write(b'5;name=value\r\nhello\r\n7;quoted="a;b";flag\r\n, world\r\n'
                         b"1A \t;x=1\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                         b"0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")

    def _chunked_big(self, query: dict, head: bool) -> None:
        body = _blob(int(query["n"]), int(query["seed"]))
        sizes = random.Random(1)
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        i = 0
        while i < len(body):
            part = body[i:i + sizes.choice((1, 7, 4096, 65535, 300_000))]
            self.wfile.write(b"%06X;n=%d\r\n%s\r\n" % (len(part), i, part))   # upper-case hex, leading zeros
            i += len(part)
        self.wfile.write(b"0\r\n\r\n")

    def _until_close(self, query: dict, head: bool) -> None:
        self.send_response(200)       # no Content-Length, no chunked coding: the close ends the body
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(_blob(int(query["n"]), int(query["seed"])))
        self.close_connection = True

    def _http10(self, query: dict, head: bool) -> None:
        self.protocol_version = "HTTP/1.0"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"an HTTP/1.0 answer, ended by the close")
        self.close_connection = True

    def _close(self, query: dict, head: bool) -> None:
        self._send(200, b"bye", headers=[("Connection", "close")])

    def _status(self, query: dict, head: bool) -> None:
        code = int(query["code"])
        self.send_response(code)
        if code == 304:   # the length of the representation the client already has, not of a body
            self.send_header("Content-Length", "1234")
            self.send_header("ETag", '"v1"')
        self.end_headers()

    def _early_hints(self, query: dict, head: bool) -> None:
        self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        self._send(200, b"final")

    def _gate(self, query: dict, head: bool) -> None:
        owner: _Stdlib = self.server.owner   # type: ignore[attr-defined]
        with owner.gate:
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
            owner.gate.notify_all()
            # the first request waits (bounded) for a second, so two always overlap at least once
            owner.gate.wait_for(lambda: owner.max_in_flight >= 2, timeout=2)
        self._send(200, b"gate")
        with owner.gate:
            owner.in_flight -= 1

    def _gzip(self, query: dict, head: bool) -> None:
        """A gzip-encoded OpenAI-shaped answer, as api.openai.com sends one to httpx's Accept-Encoding."""
        body = gzip.compress(json.dumps({"choices": [{"message": {"content": "compressed hello"},
                                                       "finish_reason": "stop"}],
                                          "accept_encoding": self.headers.get("Accept-Encoding")}).encode())
        if query.get("chunked"):
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(200, body, headers=[("Content-Encoding", "gzip"), ("Content-Type", "application/json")])

    def _upload(self, query: dict, head: bool) -> None:
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        body = self._read_chunked() if chunked else self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "chunked": chunked,
                  "content_length": self.headers.get("Content-Length"), "expect": self.headers.get("Expect")}
        self._send(200, json.dumps(answer).encode())

    def _read_chunked(self) -> bytes:
        """http.server does not decode a chunked request body: done here, strictly."""
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b""):   # trailers
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            assert self.rfile.read(2) == b"\r\n"


class _Stdlib:
    """`http.server.ThreadingHTTPServer` on 127.0.0.1 in a thread, with connection counts."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.lock = threading.Lock()
        self.gate = threading.Condition(self.lock)
        self.accepted = self.open = self.max_open = self.in_flight = self.max_in_flight = 0
        self.targets: list[str] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self   # type: ignore[attr-defined]
        self.httpd.handle_error = lambda *a: None   # a client hanging up mid-body is part of the tests
        if tls is not None:   # the handshake happens on accept; a client refusing it is only logged
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"http{'s' if tls else ''}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)

    def __enter__(self) -> "_Stdlib":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def stdlib():
    with _Stdlib() as server:
        yield server


# --- a scripted server in the test's loop ----------------------------------------------------------

Respond = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]


class _Raw:
    """Reads each request (head and Content-Length body) and lets `respond(head, reader, writer)`
    answer with raw bytes; `respond` returning False closes the connection."""

    def __init__(self, respond: Respond):
        self.respond = respond
        self.accepted = self.open = self.max_open = 0
        self.heads: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> "_Raw":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.heads.append(head)
                if await self.respond(head, reader, writer) is False:
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass   # the client hung up
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def until(self, condition: Callable[["_Raw"], bool], what: str) -> None:
        await _until(lambda: condition(self), what)


def _target(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0].split(b" ")[1]


async def _answer_ok(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(OK)


def _reply(data: bytes, *, close: bool) -> Respond:
    """Send `data`; then close (`close`), or hold the connection until the client hangs up."""
    async def respond(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        if not close:
            await reader.read()
        return False
    return respond


async def _stall_until_hangup(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await reader.read()   # never answers; returns when the client closes the connection
    return False


def _hold_until(release: asyncio.Event) -> Respond:
    """Answer OK once `release` is set."""
    async def respond(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(OK)
    return respond


def _routes(**routes: Respond) -> Respond:
    """Dispatch on the request target (`/name`); anything else gets OK."""
    async def respond(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        name = _target(head).decode().strip("/").split("?")[0]
        return await routes.get(name, _answer_ok)(head, reader, writer)
    return respond


# ===================================================================================================
# 1. Against http.server: every framing, informational responses, big bodies, uploads
# ===================================================================================================

def test_a_content_length_response_with_its_status_version_reason_and_headers(stdlib):
    async def main():
        async with _client() as client:
            return await client.get(stdlib.url + "/echo", headers={"X-Custom": "value 1"})

    response = _run(main)
    assert response.status_code == 200 and response.reason_phrase == "OK"
    assert response.http_version == "HTTP/1.1" and response.headers["content-type"] == "application/json"
    sent = response.json()
    assert sent["method"] == "GET" and sent["target"] == "/echo"
    headers = {k.lower(): v for k, v in sent["headers"]}
    assert headers["x-custom"] == "value 1" and headers["host"] == stdlib.url.removeprefix("http://")
    assert int(response.headers["content-length"]) == len(response.content)


def test_query_strings_reach_the_server_byte_for_byte(stdlib):
    raw = "/echo?q=a%20b&x=%E2%9C%93&empty=&dup=1&dup=2&slash=%2F&plus=1+1"

    async def main():
        async with _client() as client:
            first = (await client.get(stdlib.url + raw)).json()["target"]
            second = (await client.get(stdlib.url + "/echo", params={"k": "v w", "u": "é&="})).json()["target"]
            return first, second

    first, second = _run(main)
    assert first == raw
    assert parse_qs(urlsplit(second).query) == {"k": ["v w"], "u": ["é&="]}
    assert stdlib.targets == [raw, second]


def test_a_chunked_body_with_extensions_and_trailers_then_the_connection_is_reused(stdlib):
    async def main():
        async with _client() as client:
            response = await client.get(stdlib.url + "/chunked")
            again = await client.get(stdlib.url + "/echo")   # the trailers were read: the next head parses
            return response, again

    response, again = _run(main)
    assert response.content == b"hello, world" + b"abcdefghijklmnopqrstuvwxyz"
    assert "x-checksum" not in response.headers            # trailers are consumed, not merged into the head
    assert again.status_code == 200 and stdlib.accepted == 1


def test_a_big_chunked_body_in_uneven_chunks_arrives_exact(stdlib):
    n = 3 * 1024 * 1024 + 17

    async def main():
        async with _client() as client:
            body = (await client.get(stdlib.url + f"/chunked-big?n={n}&seed=3")).content
            await client.get(stdlib.url + "/echo")
            return body

    assert _run(main) == _blob(n, 3)
    assert stdlib.accepted == 1


def test_a_large_body_streamed_arrives_exact(stdlib):
    n = 6 * 1024 * 1024

    async def main():
        async with _client() as client:
            async with client.stream("GET", stdlib.url + f"/bytes?n={n}&seed=7") as response:
                streamed = b"".join([part async for part in response.aiter_raw()])
            whole = (await client.get(stdlib.url + f"/bytes?n={n}&seed=8")).content
        return streamed, whole

    streamed, whole = _run(main)
    assert streamed == _blob(n, 7) and whole == _blob(n, 8)
    assert stdlib.accepted == 1


def test_a_body_delimited_by_the_close_and_an_http_1_0_answer(stdlib):
    n = 700_000

    async def main():
        async with _client() as client:
            body = (await client.get(stdlib.url + f"/until-close?n={n}&seed=5")).content
            old = await client.get(stdlib.url + "/http10")
            last = await client.get(stdlib.url + "/echo")
            return body, old, last

    body, old, last = _run(main)
    assert body == _blob(n, 5)
    assert old.http_version == "HTTP/1.0" and old.text == "an HTTP/1.0 answer, ended by the close"
    assert last.status_code == 200
    assert stdlib.accepted == 3   # neither close-delimited connection was kept


def test_no_body_for_204_304_and_head_even_when_a_length_is_announced(stdlib):
    async def main():
        async with _client() as client:
            no_content = await client.get(stdlib.url + "/status?code=204")
            not_modified = await client.get(stdlib.url + "/status?code=304")
            head = await client.head(stdlib.url + "/bytes?n=5000&seed=1")
            after = await client.get(stdlib.url + "/bytes?n=10&seed=2")
            return no_content, not_modified, head, after

    no_content, not_modified, head, after = _run(main)
    assert (no_content.status_code, no_content.content) == (204, b"")
    assert (not_modified.status_code, not_modified.content) == (304, b"")
    assert not_modified.headers["content-length"] == "1234"
    assert head.headers["content-length"] == "5000" and head.content == b""
    assert after.content == _blob(10, 2)
    assert stdlib.accepted == 1   # had the client waited for those bodies it would have hung or misread


def test_informational_responses_before_the_final_one_are_skipped(stdlib):
    body = _blob(50_000, 9)

    async def main():
        async with _client() as client:
            hinted = await client.get(stdlib.url + "/early-hints")
            # http.server answers `Expect: 100-continue` with `100 Continue` before the handler runs
            upload = await client.post(stdlib.url + "/upload", content=body, headers={"Expect": "100-continue"})
            return hinted, upload

    hinted, upload = _run(main)
    assert (hinted.status_code, hinted.text) == (200, "final") and "link" not in hinted.headers
    answer = upload.json()
    assert upload.status_code == 200 and answer["expect"] == "100-continue"
    assert answer["length"] == len(body) and answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert stdlib.accepted == 1


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_gzip_encoded_body_is_decoded_by_httpx_and_the_connection_kept(stdlib, framing):
    async def main():
        async with _client() as client:
            url = stdlib.url + "/gzip" + ("?chunked=1" if framing == "chunked" else "")
            return [(await client.get(url)).json() for _ in range(2)]

    answers = _run(main)
    assert [a["choices"][0]["message"]["content"] for a in answers] == ["compressed hello"] * 2
    assert "gzip" in answers[0]["accept_encoding"] and stdlib.accepted == 1


def test_an_in_memory_request_body_goes_with_its_content_length(stdlib):
    body = _blob(1_500_000, 4)

    async def main():
        async with _client() as client:
            return (await client.post(stdlib.url + "/upload", content=body)).json()

    answer = _run(main)
    assert answer["chunked"] is False and answer["content_length"] == str(len(body))
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_streamed_request_body_is_sent_chunked_and_decodes_exactly(stdlib):
    pieces = [b"first", b"", _blob(1, 1), _blob(2_000_000, 2), b"\r\n0\r\n\r\n", _blob(70_000, 3)]

    async def body():
        for piece in pieces:
            yield piece
            await asyncio.sleep(0)

    async def main():
        async with _client() as client:
            answer = (await client.post(stdlib.url + "/upload", content=body())).json()
            after = await client.get(stdlib.url + "/echo")   # the terminator was right: the connection is fine
            return answer, after

    answer, after = _run(main)
    whole = b"".join(pieces)
    assert answer["chunked"] is True and answer["content_length"] is None
    assert answer["length"] == len(whole) and answer["sha256"] == hashlib.sha256(whole).hexdigest()
    assert after.status_code == 200 and stdlib.accepted == 1


@pytest.fixture(scope="module")
def certificate() -> Path:
    """The self-signed certificate for 127.0.0.1 in tests/fixtures/tls (test_transport_tls.py says how it was made)."""
    return Path(__file__).parents[1] / "fixtures" / "tls"


@pytest.fixture
def tls_server(certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    with _Stdlib(tls=context) as server:
        yield server


def test_https_with_a_trusting_context_reads_every_framing_and_keeps_its_connection(tls_server, certificate):
    n = 2 * 1024 * 1024 + 3
    transport = AiohttpTransport(trust_env=False, ssl_context=ssl.create_default_context(cafile=certificate / "cert.pem"))

    async def main():
        async with _client(transport) as client:
            big = (await client.get(tls_server.url + f"/bytes?n={n}&seed=11")).content
            chunked = (await client.get(tls_server.url + "/chunked")).content
            echo = await client.post(tls_server.url + "/upload", content=b"over TLS")
            return big, chunked, echo

    big, chunked, echo = _run(main)
    assert big == _blob(n, 11) and chunked.startswith(b"hello, world")
    assert echo.json()["sha256"] == hashlib.sha256(b"over TLS").hexdigest()
    assert tls_server.accepted == 1


def test_https_to_an_untrusted_certificate_is_a_connect_error(tls_server):
    transport = AiohttpTransport(trust_env=False)   # aiohttp's default context: the system CAs, not ours
    url = tls_server.url + "/echo"

    async def main():
        async with _client(transport) as client:
            return await _raises(httpx.ConnectError, client.get(url), url)

    assert "CERTIFICATE_VERIFY_FAILED" in str(_run(main))

# ===================================================================================================
# 2. Failures arrive as the httpx exception that says what happened, with their request
# ===================================================================================================

BAD_RESPONSES = {
    # name: (what the server sends, whether it then closes)
    "status-line-letters": (b"HTTP/1.1 2OO OK\r\n\r\n", False),
    "header-no-colon": (b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n", False),
    "content-length-letters": (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", False),
    "chunk-size-not-hex": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", False),
    "closes-before-answering": (b"", True),
    "closes-in-the-head": (b"HTTP/1.1 200 OK\r\nContent-", True),
    "closes-mid-body": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True),
    "closes-mid-chunked-body": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", True),
}


@pytest.mark.parametrize("name", list(BAD_RESPONSES))
def test_a_misbehaving_server_gives_a_remote_protocol_error_and_the_transport_goes_on(name):
    data, close = BAD_RESPONSES[name]

    async def main():
        async with _Raw(_routes(bad=_reply(data, close=close))) as server, _client() as client:
            url = server.url + "/bad"
            await _raises(httpx.RemoteProtocolError, client.get(url), url)
            assert (await client.get(server.url + "/fine")).text == "ok"   # the transport itself is fine
            return server.accepted

    # The broken connection was not reused. (aiohttp tries an idempotent GET again once when the
    # server hangs up before answering; the providers' POSTs are never sent twice by it.)
    assert _run(main) == (3 if close and name in ("closes-before-answering", "closes-in-the-head") else 2)


def test_a_silent_server_gives_a_read_timeout_when_httpx_asks_for_one():
    """The providers bound each whole request themselves; a plain httpx user's read timeout still holds."""
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"

    async def main():
        respond = _routes(silent=_stall_until_hangup, partial=_reply(partial, close=False))
        async with _Raw(respond) as server, _client(timeout=httpx.Timeout(5, read=0.1)) as client:
            await _raises(httpx.ReadTimeout, client.get(server.url + "/silent"), server.url + "/silent")
            await _raises(httpx.ReadTimeout, client.get(server.url + "/partial"), server.url + "/partial")
            await server.until(lambda s: s.open == 0, "every timed-out connection closed")

    _run(main)


def test_connection_refused_is_a_connect_error_naming_the_address():
    with socket.socket() as sock:   # a port that was just free on 127.0.0.1 and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"

    async def main():
        async with _client() as client:
            return await _raises(httpx.ConnectError, client.get(url), url)

    assert f"127.0.0.1:{port}" in str(_run(main))


def test_an_unsupported_scheme_is_refused_with_the_request():
    async def main():
        transport = AiohttpTransport(trust_env=False)
        request = httpx.Request("GET", "ftp://127.0.0.1/x")
        with pytest.raises(httpx.UnsupportedProtocol) as info:
            await transport.handle_async_request(request)
        await transport.aclose()
        return info.value

    assert _run(main).request.url.scheme == "ftp"


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {SECRET}\r\nX: y"},
    {"X-Api-Key": f"{SECRET}\nX: y"},
    {"X-Api-Key": f"{SECRET}\rX: y"},
], ids=["crlf-value", "lf-value", "cr-value"])
def test_a_header_that_would_split_the_request_is_refused_before_sending(headers):
    async def main():
        async with _Raw(_answer_ok) as server, _client() as client:
            url = server.url + "/"
            await _raises(httpx.LocalProtocolError, client.get(url, headers=headers), url)
            return len(server.heads)

    assert _run(main) == 0   # no request reached the server


# ===================================================================================================
# 3. Keep-alive and closing
# ===================================================================================================

def test_sequential_requests_reuse_one_connection(stdlib):
    async def main():
        async with _client() as client:
            for i in range(5):
                response = await client.get(stdlib.url + f"/bytes?n={1000 + i}&seed={i}")
                assert response.content == _blob(1000 + i, i)
            # streamed and read to the end: reused as well
            async with client.stream("GET", stdlib.url + "/chunked") as response:
                assert b"".join([part async for part in response.aiter_bytes()]).startswith(b"hello")
            await client.get(stdlib.url + "/echo")

    _run(main)
    assert stdlib.accepted == 1 and len(stdlib.targets) == 7


def test_a_response_not_read_to_the_end_does_not_return_its_connection(stdlib):
    async def main():
        async with _client() as client:
            async with client.stream("GET", stdlib.url + "/bytes?n=2000000&seed=1") as response:
                assert await anext(response.aiter_raw())   # then closed on the way out, bytes pending
            return (await client.get(stdlib.url + "/bytes?n=10&seed=2")).content

    assert _run(main) == _blob(10, 2)
    assert stdlib.accepted == 2


def test_connection_close_responses_are_not_reused(stdlib):
    async def main():
        async with _client() as client:
            return [(await client.get(stdlib.url + "/close")).text for _ in range(3)]

    assert _run(main) == ["bye"] * 3
    assert stdlib.accepted == 3


def test_a_request_asking_connection_close_does_not_keep_its_connection(stdlib):
    async def main():
        async with _client() as client:
            await client.get(stdlib.url + "/echo", headers={"Connection": "close"})
            await client.get(stdlib.url + "/echo")

    _run(main)
    assert stdlib.accepted == 2


def test_aclose_refuses_later_requests_and_twice_is_harmless():
    transport = AiohttpTransport(trust_env=False)

    async def main():
        async with _Raw(_answer_ok) as server:
            client = _client(transport)
            await asyncio.gather(client.get(server.url + "/a"), client.get(server.url + "/b"))
            await transport.aclose()
            await server.until(lambda s: s.open == 0, "the server saw both connections close")
            with pytest.raises(RuntimeError, match="closed"):
                await client.get(server.url + "/c")
            await transport.aclose()
            await client.aclose()
            return server.accepted, len(server.heads)

    assert _run(main) == (2, 2)


def test_max_connections_bounds_concurrent_connections(stdlib):
    async def main():
        async with _client(AiohttpTransport(trust_env=False, max_connections=1)) as client:
            return await asyncio.gather(*(client.get(stdlib.url + "/gate") for _ in range(2)))

    assert [r.text for r in _run(main)] == ["gate"] * 2
    assert stdlib.max_in_flight == 1 and stdlib.accepted == 1


def test_max_connections_must_be_positive():
    with pytest.raises(ValueError, match="max_connections"):
        AiohttpTransport(max_connections=0)
