"""FakeLLMServer itself: real HTTP/1.1 on 127.0.0.1, keep-alive, faults, records, clean shutdown."""
from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from moa_dsl.testing import FakeLLMServer, default_answer

BODY = {"model": "m", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": 100}


def test_url_is_loopback_and_the_thread_stops_on_close():
    before = set(threading.enumerate())
    with FakeLLMServer() as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        assert httpx.post(server.url + "/chat/completions", json=BODY).status_code == 200
    assert set(threading.enumerate()) <= before
    with pytest.raises(RuntimeError, match="not started"):
        FakeLLMServer().url


def test_close_drops_hanging_requests():
    server = FakeLLMServer().start()
    server.inject("m", "hang")
    errors = []

    def client():
        try:
            httpx.post(server.url + "/chat/completions", json=BODY, timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    for _ in range(1000):   # wait (bounded) until the server holds the request
        if server.requests:
            break
        threading.Event().wait(0.01)
    assert server.requests
    server.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and errors


def test_default_answer_is_deterministic_and_varies():
    msgs = BODY["messages"]
    assert default_answer("m", msgs, 1) == default_answer("m", msgs, 1)
    assert len({default_answer("m", msgs, 1), default_answer("m", msgs, 2), default_answer("n", msgs, 1),
                default_answer("m", [{"role": "user", "content": "other"}], 1)}) == 4


def test_responder_usage_and_records():
    seen = []

    def responder(model, body):
        seen.append(model)
        return f"echo {body['messages'][-1]['content']}"

    with FakeLLMServer(responder={"m": responder}) as server:
        r = httpx.post(server.url + "/chat/completions", json=BODY, headers={"Authorization": "Bearer abc"})
        other = httpx.post(server.url + "/chat/completions", json={**BODY, "model": "z"}).json()
        (first, second) = server.requests
    data = r.json()
    assert data["choices"][0]["message"]["content"] == "echo Why is the sky blue?" and seen == ["m"]
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    assert other["choices"][0]["message"]["content"] == default_answer("z", BODY["messages"])
    assert (first.path, first.model, first.stream, first.body) == ("/v1/chat/completions", "m", False, BODY)
    assert first.headers["authorization"] == "Bearer abc" and first.finished >= first.started


def test_per_model_latency_and_max_in_flight():
    with FakeLLMServer(latency={"slow": 0.3}) as server:
        async def main():
            async with httpx.AsyncClient() as client:
                await asyncio.gather(*(client.post(server.url + "/chat/completions", json={**BODY, "model": m})
                                       for m in ["slow"] * 4 + ["fast"]))

        asyncio.run(main())
        slow = server.requests_for("slow")
        fast = server.requests_for("fast")
        assert all(r.finished - r.started >= 0.3 for r in slow)
        assert server.max_in_flight >= 4
        server.reset_stats()
        assert server.requests == [] and server.max_in_flight == 0
    assert len(slow) == 4 and len(fast) == 1


def test_faults_are_consumed_one_per_request_per_model():
    with FakeLLMServer() as server:
        server.inject("m", "429", retry_after=2, message="slow down")
        server.inject("*", "500")
        with httpx.Client() as client:
            first = client.post(server.url + "/chat/completions", json=BODY)
            second = client.post(server.url + "/chat/completions", json=BODY)
            third = client.post(server.url + "/chat/completions", json=BODY)
    assert (first.status_code, first.headers["retry-after"]) == (429, "2")
    assert first.json()["error"]["message"] == "slow down"
    assert (second.status_code, third.status_code) == (500, 200)
    with pytest.raises(ValueError, match="unknown fault"):
        server.inject("m", "explode")


def test_anthropic_route_and_error_format():
    with FakeLLMServer(api_key="secret-key") as server:
        denied = httpx.post(server.url + "/messages", json=BODY)
        ok = httpx.post(server.url + "/messages", json=BODY, headers={"x-api-key": "secret-key"})
        missing = httpx.post(server.url + "/nowhere", json=BODY)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    assert ok.json()["content"][0]["text"] and ok.json()["usage"]["input_tokens"] == 5
    assert missing.status_code == 404


def test_keep_alive_reuses_one_connection():
    with FakeLLMServer() as server:
        host, port = "127.0.0.1", server.port
        payload = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        with socket.create_connection((host, port)) as sock:
            sock.sendall(request + request)
            received = b""
            while received.count(b"HTTP/1.1 200") < 2:
                chunk = sock.recv(65536)
                assert chunk
                received += chunk
        assert len(server.requests) == 2


def test_sustains_many_concurrent_keep_alive_connections():
    """256 raw connections at once, 4 requests each (httpx's own pool would dominate the time here)."""
    payload = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
               % (len(payload), payload))

    async def connection(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ok = 0
        for _ in range(4):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            ok += head.startswith(b"HTTP/1.1 200")
        writer.close()
        return ok

    with FakeLLMServer(record=False, default_latency=0.05) as server:
        async def main():
            return await asyncio.gather(*(connection(server.port) for _ in range(256)))

        assert sum(asyncio.run(main())) == 1024
        assert server.max_in_flight > 64


def test_stream_token_delay_spaces_the_tokens():
    with FakeLLMServer(token_delay=0.02) as server:
        with httpx.stream("POST", server.url + "/chat/completions", json={**BODY, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        (record,) = server.requests
    assert lines[-1] == "data: [DONE]"
    events = len(lines)
    assert record.finished - record.started >= 0.02 * (events - 1)
