"""AiohttpTransport and the providers over TLS, against a real TLS server on 127.0.0.1.

tests/fixtures/tls holds a self-signed certificate for localhost / 127.0.0.1 (valid to 2126) and its
key, made for these tests only: `openssl req -x509 -newkey rsa:2048 -nodes -days 36500
-subj "/CN=moa-dsl test localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1"`.
"""
from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from pathlib import Path

import httpx
import pytest

from moa_dsl.providers.transport import AiohttpTransport

ROOT = Path(__file__).resolve().parents[2]
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


async def _two_calls(transport: AiohttpTransport, url: str) -> list[dict]:
    async with httpx.AsyncClient(transport=transport) as client:
        first = await client.post(url, json={"q": 1})
        second = await client.get(url + "?x=2")
        return [first.json(), second.json()]


def _two_calls_in(transport: AiohttpTransport, url: str) -> list[dict]:
    async def main():
        async with _TLSServer() as server:
            return await _two_calls(transport, url.format(port=server.port)), server.connections
    return asyncio.run(main())


def test_https_with_a_trusted_certificate_keeps_its_connection_alive():
    transport = AiohttpTransport(trust_env=False, ssl_context=ssl.create_default_context(cafile=str(CERT)))
    answers, connections = _two_calls_in(transport, "https://127.0.0.1:{port}/v1/chat")
    assert answers == [{"method": "POST", "path": "/v1/chat", "body": '{"q":1}'},
                       {"method": "GET", "path": "/v1/chat?x=2", "body": ""}]
    assert connections == 1


def test_an_untrusted_certificate_is_a_connect_error():
    async def main():
        async with _TLSServer() as server:
            transport = AiohttpTransport(trust_env=False)   # aiohttp's default context: does not know ours
            async with httpx.AsyncClient(transport=transport) as client:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED") as caught:
                    await client.get(f"https://localhost:{server.port}/")
                assert caught.value.request.url.host == "localhost"

    asyncio.run(main())


_CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from moa_dsl.providers import CallRequest, OpenAIProvider
async def main():
    provider = OpenAIProvider(name="tls", base_url=sys.argv[1], api_key="sk-tls-test-0123456789")
    try:
        req = CallRequest(node="n", model="m", messages=[{"role": "user", "content": "hi"}], params={},
                          retries=0, timeout=20)
        print((await provider.complete(req)).text)
    except Exception as exc:
        print("FAILED", exc)
    finally:
        await provider.aclose()
asyncio.run(main())
"""


@pytest.mark.parametrize("trusted", [True, False], ids=["SSL_CERT_FILE", "default"])
def test_a_provider_trusts_what_ssl_cert_file_names(trusted):
    """aiohttp builds its verified context when it is imported, from OpenSSL's default paths, which
    read SSL_CERT_FILE: so a fresh process with the variable set trusts our test certificate, and one
    without it does not."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if trusted:
        env["SSL_CERT_FILE"] = str(CERT)

    async def main():
        async with _TLSServer() as server:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD, f"https://localhost:{server.port}/v1", str(ROOT), env=env,
                stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return out.decode()

    out = asyncio.run(main())
    if trusted:
        # verified and answered: the TLS server's echo is not an OpenAI answer, and says our path
        assert "unexpected response shape" in out and "/v1/chat/completions" in out, out
    else:
        assert out.startswith("FAILED") and "CERTIFICATE_VERIFY_FAILED" in out
