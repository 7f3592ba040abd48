"""Environment proxies (aiohttp's `trust_env`): a provider whose URL HTTP_PROXY / HTTPS_PROXY applies to
sends through that proxy; NO_PROXY and loopback URLs go direct.

The proxy is a real forward proxy on 127.0.0.1: absolute-form requests for http:// URLs are relayed to
FakeLLMServer, and CONNECT (what a client sends for an https:// URL) opens a tunnel to a TLS front on
127.0.0.1 (the certificate in tests/fixtures/tls) that relays to FakeLLMServer. The http:// provider's
URL names a host that does not exist, so a call can only succeed through the proxy.
"""
from __future__ import annotations

import asyncio
import http.client
import http.server
import os
import select
import socket
import ssl
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from moa_dsl.errors import ProviderConnectionError
from moa_dsl.providers import CallRequest, OpenAIProvider
from moa_dsl.testing import FakeLLMServer

pytestmark = pytest.mark.usefixtures("provider_path")   # tests/conftest.py: the fast path and the httpx path

KEY = "sk-proxy-test-0123456789"
REMOTE = "http://api.moa-proxy-test.invalid/v1"   # .invalid never resolves (RFC 6761)
ROOT = Path(__file__).resolve().parents[2]
TLS = Path(__file__).parents[1] / "fixtures" / "tls"


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (bounded: the test's sockets time out)."""
    sockets = [a, b]
    while True:
        ready, _, _ = select.select(sockets, [], [], 10)
        if not ready:
            return
        for s in ready:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class _ForwardProxy(http.server.BaseHTTPRequestHandler):
    """Absolute-form requests (`POST http://host/path HTTP/1.1`) relayed to `upstream`; `CONNECT host:port`
    tunnelled to `tunnels[host:port]`."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        owner = self.server.owner   # type: ignore[attr-defined]
        owner.seen.append((self.command, self.path, self.headers.get("authorization")))
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        upstream = http.client.HTTPConnection(*owner.upstream, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
        upstream.request("POST", urlsplit(self.path).path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()   # a stream arrives whole: fine for a relay
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    def do_CONNECT(self) -> None:
        owner = self.server.owner   # type: ignore[attr-defined]
        owner.seen.append((self.command, self.path, self.headers.get("authorization")))
        host, port = self.path.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            _pipe(self.connection, upstream)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class _TLSFront:
    """TLS on 127.0.0.1 (the test certificate), relaying the plain bytes to FakeLLMServer; an asyncio
    loop in a thread."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.handshakes = upstream, 0
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(TLS / "cert.pem", TLS / "key.pem")
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                sink.close()

        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def proxy(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):   # only what each test sets
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with FakeLLMServer(api_key=KEY) as server:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
        httpd.owner = type("Owner", (), {})()   # type: ignore[attr-defined]
        httpd.owner.seen = []
        httpd.owner.upstream = urlsplit(server.url).hostname, urlsplit(server.url).port
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.owner.seen, server
        finally:
            httpd.shutdown()
            httpd.server_close()


def _ask(provider: OpenAIProvider, *, stream: bool) -> str:
    async def go() -> str:
        try:
            req = CallRequest(node="n", model="m", messages=[{"role": "user", "content": "through a proxy?"}],
                              params={"max_tokens": 8}, stream=stream, retries=0, timeout=10)
            return (await provider.complete(req)).text
        finally:
            await provider.aclose()
    return asyncio.run(go())


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_proxy_from_the_environment_carries_the_calls(proxy, monkeypatch, variable, stream):
    url, seen, server = proxy
    monkeypatch.setenv(variable, url)
    assert _ask(OpenAIProvider(name="remote", base_url=REMOTE, api_key=KEY), stream=stream)
    assert seen == [("POST", f"{REMOTE}/chat/completions", f"Bearer {KEY}")]   # absolute-form, key passed on
    assert len(server.requests) == 1


def test_no_proxy_and_loopback_urls_go_direct(proxy, monkeypatch):
    url, seen, server = proxy
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("NO_PROXY", "api.moa-proxy-test.invalid")
    with pytest.raises(ProviderConnectionError):   # direct, so the .invalid name does not resolve
        _ask(OpenAIProvider(name="remote", base_url=REMOTE, api_key=KEY), stream=False)
    monkeypatch.delenv("NO_PROXY")
    assert _ask(OpenAIProvider(name="fake", base_url=server.url, api_key=KEY), stream=False)   # loopback
    assert seen == [] and len(server.requests) == 1


def test_an_unusable_proxy_fails_the_call_without_its_credentials(proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "socks5://user:hunter2-secret@127.0.0.1:9")   # aiohttp speaks no SOCKS
    with pytest.raises(ProviderConnectionError) as info:
        _ask(OpenAIProvider(name="remote", base_url=REMOTE, api_key=KEY), stream=False)
    assert "hunter2" not in str(info.value)


_CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
import moa_dsl.providers.http as provider_http
from moa_dsl.providers import CallRequest, OpenAIProvider
provider_http._LOOPBACK_HOSTS = frozenset()   # the test's "remote" host is localhost: let the proxy apply
async def main():
    provider = OpenAIProvider(name="remote", base_url=sys.argv[1], api_key=sys.argv[3])
    try:
        for stream in (False, True):
            req = CallRequest(node="n", model="m", messages=[{"role": "user", "content": "over https?"}],
                              params={"max_tokens": 8}, stream=stream, retries=0, timeout=20)
            print("OK" if (await provider.complete(req)).text else "EMPTY", flush=True)
    except Exception as exc:
        print("FAILED", exc, flush=True)
    finally:
        await provider.aclose()
asyncio.run(main())
"""


def test_https_through_https_proxy_tunnels_with_connect_and_verifies_the_upstream(proxy):
    """HTTPS_PROXY for an https:// URL: CONNECT to the proxy, then TLS end to end through the tunnel,
    verified against SSL_CERT_FILE (read when aiohttp is imported, hence a child process)."""
    url, seen, server = proxy
    front = _TLSFront((urlsplit(server.url).hostname, urlsplit(server.url).port))
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                                                   "NO_PROXY", "SSL_CERT_DIR")}
    env.update(HTTPS_PROXY=url, SSL_CERT_FILE=str(TLS / "cert.pem"))

    async def main() -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, f"https://localhost:{front.port}/v1", str(ROOT), KEY, env=env,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return out.decode()

    try:
        out = asyncio.run(main())
    finally:
        front.close()
    assert out.split() == ["OK", "OK"], out
    assert seen == [("CONNECT", f"localhost:{front.port}", None)]   # the key went inside the tunnel only
    assert front.handshakes == 1 and len(server.requests) == 2
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)
