"""Environment proxies: a provider whose URL an HTTP(S)_PROXY / ALL_PROXY applies to sends through that
proxy (httpx's own transport); NO_PROXY and loopback URLs go direct (our AsyncioTransport).

The proxy is a real forward proxy on 127.0.0.1 that relays to FakeLLMServer; the provider's URL names a
host that does not exist, so a call can only succeed through the proxy.
"""
from __future__ import annotations

import asyncio
import http.client
import http.server
import threading
from urllib.parse import urlsplit

import httpx
import pytest

from moa_dsl.errors import ConfigError
from moa_dsl.providers import CallRequest, OpenAIProvider, http as provider_http
from moa_dsl.providers.transport import AsyncioTransport
from moa_dsl.testing import FakeLLMServer

KEY = "sk-proxy-test-0123456789"
REMOTE = "http://api.moa-proxy-test.invalid/v1"   # .invalid never resolves (RFC 6761)


class _ForwardProxy(http.server.BaseHTTPRequestHandler):
    """Takes absolute-form requests (`POST http://host/path HTTP/1.1`) and relays them to `upstream`."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        owner = self.server.owner   # type: ignore[attr-defined]
        owner.seen.append((self.path, self.headers.get("authorization")))
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

    def log_message(self, *args: object) -> None:
        pass


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


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_proxy_from_the_environment_carries_the_calls(proxy, monkeypatch, variable, stream):
    url, seen, server = proxy
    monkeypatch.setenv(variable, url)
    provider = OpenAIProvider(name="remote", base_url=REMOTE, api_key=KEY)
    assert not isinstance(provider._shards.clients[0]._transport, AsyncioTransport)   # httpx's, with its proxy
    assert _ask(provider, stream=stream)
    assert seen == [(f"{REMOTE}/chat/completions", f"Bearer {KEY}")]   # absolute-form, key passed on
    assert len(server.requests) == 1


def test_no_proxy_and_loopback_urls_go_direct(proxy, monkeypatch):
    url, seen, server = proxy
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("NO_PROXY", "api.moa-proxy-test.invalid")
    assert not provider_http._proxied(httpx.URL(REMOTE + "/chat/completions"), True)
    monkeypatch.delenv("NO_PROXY")
    assert provider_http._proxied(httpx.URL(REMOTE + "/chat/completions"), True)
    direct = OpenAIProvider(name="fake", base_url=server.url, api_key=KEY)   # loopback: never proxied
    assert isinstance(direct._shards.clients[0]._transport, AsyncioTransport)
    assert _ask(direct, stream=False) and seen == []


@pytest.mark.parametrize("variable, value", [
    ("HTTPS_PROXY", "ftp://user:hunter2-secret@127.0.0.1:9"),      # a scheme httpx refuses
    ("ALL_PROXY", "socks5://user:hunter2-secret@127.0.0.1:9"),     # SOCKS without socksio installed
])
def test_a_proxy_that_applies_but_cannot_be_used_is_a_config_error_without_its_credentials(
        proxy, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=r"^provider remote: the proxy the environment sets for "
                                          r"api\.moa-proxy-test\.invalid .* cannot be used: ") as info:
        OpenAIProvider(name="remote", base_url="https://api.moa-proxy-test.invalid/v1", api_key=KEY)
    assert "hunter2" not in str(info.value) and "127.0.0.1:9" not in str(info.value)
    monkeypatch.setenv("NO_PROXY", "api.moa-proxy-test.invalid")   # exempt: built, and direct
    exempt = OpenAIProvider(name="remote", base_url="https://api.moa-proxy-test.invalid/v1", api_key=KEY)
    assert isinstance(exempt._shards.clients[0]._transport, AsyncioTransport)


@pytest.mark.parametrize("variable, value", [
    ("ALL_PROXY", "socks5://127.0.0.1:9"),    # socksio is not installed
    ("HTTPS_PROXY", "ftp://127.0.0.1:9"),     # a scheme httpx refuses
])
def test_a_proxy_variable_that_does_not_apply_does_not_break_building_the_provider(proxy, monkeypatch,
                                                                                   variable, value):
    """NO_PROXY exempts the host, so httpx would never use the proxy for it. Before the fix, deciding
    that built an httpx client, hence a transport for every proxy variable, and the provider (and
    `moa run`) died with an ImportError / ValueError traceback."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    provider = OpenAIProvider(name="p", base_url="https://api.example.com/v1", api_key=KEY)
    assert isinstance(provider._shards.clients[0]._transport, AsyncioTransport)
    asyncio.run(provider.aclose())
