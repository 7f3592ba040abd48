"""AsyncioTransport over TLS, against a real TLS server on 127.0.0.1.

tests/fixtures/tls holds a self-signed certificate for localhost / 127.0.0.1 (valid to 2126) and its
key, made for these tests only: `openssl req -x509 -newkey rsa:2048 -nodes -days 36500
-subj "/CN=moa-dsl test localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1"`.
"""
from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import httpx
import pytest

from moa_dsl.providers.transport import AsyncioTransport

TLS = Path(__file__).parents[1] / "fixtures" / "tls"
CERT, KEY = TLS / "cert.pem", TLS / "key.pem"


class _TLSServer:
    """HTTP/1.1 with keep-alive over TLS: answers every request with its method, path and body as JSON."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> "_TLSServer":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(CERT, KEY)
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                length = int({k.lower(): v for k, v in headers.items()}.get("content-length", "0"))
                body = await reader.readexactly(length)
                out = json.dumps({"method": method, "path": path, "body": body.decode()}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(out), out))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def _two_calls(transport: AsyncioTransport, url: str) -> list[dict]:
    async with httpx.AsyncClient(transport=transport) as client:
        first = await client.post(url, json={"q": 1})
        second = await client.get(url + "?x=2")
        return [first.json(), second.json()]


def test_https_with_a_trusted_certificate_keeps_its_connection_alive():
    async def main():
        async with _TLSServer() as server:
            transport = AsyncioTransport(ssl_context=ssl.create_default_context(cafile=str(CERT)))
            answers = await _two_calls(transport, f"https://127.0.0.1:{server.port}/v1/chat")
            return answers, server.connections

    answers, connections = asyncio.run(main())
    assert answers == [{"method": "POST", "path": "/v1/chat", "body": '{"q":1}'},
                       {"method": "GET", "path": "/v1/chat?x=2", "body": ""}]
    assert connections == 1


def test_an_untrusted_certificate_is_a_connect_error():
    async def main():
        async with _TLSServer() as server:
            transport = AsyncioTransport(trust_env=False)   # httpx's default CA bundle: does not know ours
            async with httpx.AsyncClient(transport=transport) as client:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED") as caught:
                    await client.get(f"https://localhost:{server.port}/")
                assert caught.value.request.url.host == "localhost"

    asyncio.run(main())


def test_the_default_context_honours_ssl_cert_file_when_trusting_the_environment(monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(CERT))

    async def main():
        async with _TLSServer() as server:
            url = f"https://localhost:{server.port}/"
            trusted = await _two_calls(AsyncioTransport(trust_env=True), url)
            with pytest.raises(httpx.ConnectError):
                await _two_calls(AsyncioTransport(trust_env=False), url)
            return trusted

    assert [a["method"] for a in asyncio.run(main())] == ["POST", "GET"]


def test_an_unreadable_ssl_cert_file_is_a_connect_error_naming_it(monkeypatch, tmp_path):
    """SSL_CERT_FILE naming a missing file, the environment trusted. Before the fix the request failed
    with a bare `FileNotFoundError: [Errno 2] No such file or directory`, naming neither the variable
    nor the path (the context is built at the first https connection)."""
    missing = tmp_path / "no-such-bundle.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(missing))

    async def main():
        async with _TLSServer() as server:
            async with httpx.AsyncClient(transport=AsyncioTransport(trust_env=True)) as client:
                with pytest.raises(httpx.ConnectError) as caught:
                    await client.get(f"https://127.0.0.1:{server.port}/v1")
                return caught.value

    message = str(asyncio.run(main()))
    assert "SSL_CERT_FILE" in message and str(missing) in message
