"""OpenAIProvider: request bodies, headers and parsing (MockTransport), and streams over loopback."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from moa_dsl.errors import ProviderHTTPError, ProviderResponseError
from moa_dsl.providers import Backoff, CallRequest, OpenAIProvider
from moa_dsl.testing import FakeLLMServer

KEY = "sk-test-very-secret-0123456789"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
FAST = Backoff(base_s=0.001, cap_s=0.01)


def _request(**kw) -> CallRequest:
    base = dict(node="final", model="gpt-x", messages=MESSAGES, params={"temperature": 0.2, "max_tokens": 64})
    return CallRequest(**{**base, **kw})


def _provider(handler, **kw) -> OpenAIProvider:
    return OpenAIProvider(name="acme", base_url="https://api.example.test/v1/", api_key=KEY,
                          transport=httpx.MockTransport(handler), backoff=FAST, **kw)


def _ok(text="Rayleigh scattering.", usage=None):
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return httpx.Response(200, json=body)


def _run(coro):
    return asyncio.run(coro)


async def _complete(provider, req, **kw):
    try:
        return await provider.complete(req, **kw)
    finally:
        await provider.aclose()


def test_request_url_headers_and_exact_body():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _ok(usage={"prompt_tokens": 11, "completion_tokens": 3})

    params = {"temperature": 0.2, "max_tokens": 64, "top_p": 0.9, "seed": 7, "stop": ["\n\n"],
              "cache": True, "timeout": 5, "system": "not sent", "retries": 2}
    provider = _provider(handler, headers={"X-Title": "moa"})
    result = _run(_complete(provider, _request(params=params)))
    (request,) = seen
    assert str(request.url) == "https://api.example.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-title"] == "moa"
    assert json.loads(request.content) == {"model": "gpt-x", "messages": MESSAGES, "temperature": 0.2,
                                           "max_tokens": 64, "top_p": 0.9, "seed": 7, "stop": ["\n\n"]}
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("Rayleigh scattering.", 11, 3)
    assert (result.finish_reason, result.attempts) == ("stop", 1)


def test_no_key_no_authorization_header_and_no_usage():
    seen = []

    def handler(request):
        seen.append(request)
        return _ok()

    provider = OpenAIProvider(name="ollama", base_url="http://localhost:11434/v1",
                              transport=httpx.MockTransport(handler))
    result = _run(_complete(provider, _request()))
    assert "authorization" not in seen[0].headers
    assert result.prompt_tokens is None and result.completion_tokens is None


def test_endpoint_defaults_to_base_url_and_can_be_set():
    p = OpenAIProvider(name="a", base_url="http://127.0.0.1:9/v1/")
    q = OpenAIProvider(name="b", base_url="http://127.0.0.1:9/v1", endpoint="local:smollm2-135m")
    assert (p.kind, p.endpoint, q.endpoint) == ("openai", "http://127.0.0.1:9/v1", "local:smollm2-135m")
    assert KEY not in repr(_provider(lambda r: _ok()))
    _run(p.aclose()), _run(q.aclose())


@pytest.mark.parametrize("body", [
    b"<html>Bad gateway</html>",
    b'{"choices": []}',
    b'{"choices": [{"message": {}}]}',
    b'{"choices": [{"message": {"content": null}}]}',
    b'[1, 2]',
])
def test_malformed_200_is_a_response_error_naming_node_and_provider(body):
    provider = _provider(lambda r: httpx.Response(200, content=body))
    with pytest.raises(ProviderResponseError) as info:
        _run(_complete(provider, _request()))
    message = str(info.value)
    assert "final" in message and "acme" in message and "gpt-x" in message
    assert info.value.node == "final" and info.value.provider == "acme"
    assert info.value.attempts == 1   # a wrong-shaped 200 is not retried


def test_4xx_fails_at_once_with_the_servers_message():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(404, json={"error": {"message": "The model `gpt-x` does not exist"}})

    with pytest.raises(ProviderHTTPError) as info:
        _run(_complete(_provider(handler), _request(retries=5)))
    assert len(calls) == 1
    assert info.value.status == 404
    assert "The model `gpt-x` does not exist" in str(info.value) and "404" in str(info.value)


def test_the_key_never_appears_in_an_error_even_when_echoed():
    def handler(request):   # a server that echoes the key and the custom header back
        return httpx.Response(401, json={"error": {"message": f"bad key {KEY} / {request.headers['x-secret']}"}})

    provider = _provider(handler, headers={"X-Secret": "hdr-secret-abcdef"})
    with pytest.raises(ProviderHTTPError) as info:
        _run(_complete(provider, _request()))
    text = str(info.value) + repr(info.value) + "".join(map(str, info.value.args))
    assert KEY not in text and "hdr-secret-abcdef" not in text
    assert "***" in text


def test_emit_reports_each_attempt_and_each_retry():
    replies = iter([httpx.Response(503, json={"error": {"message": "busy"}}), _ok("fine")])
    events = []
    provider = _provider(lambda r: next(replies))
    result = _run(_complete(provider, _request(), emit=lambda k, d: events.append((k, d))))
    assert result.text == "fine" and result.attempts == 2
    assert [k for k, _ in events] == ["request_sent", "retry", "request_sent"]
    assert events[0][1] == {"attempt": 1} and events[2][1] == {"attempt": 2}
    assert events[1][1]["attempt"] == 1 and "503" in events[1][1]["error"] and events[1][1]["delay_s"] >= 0


def test_bad_configuration_is_a_config_error():
    from moa_dsl.errors import ConfigError

    with pytest.raises(ConfigError, match="max_concurrency"):
        OpenAIProvider(name="x", base_url="http://127.0.0.1:1/v1", max_concurrency=0)
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIProvider(name="x", base_url="api.example.com")


# -- streaming over a real socket ---------------------------------------------------------------
@pytest.fixture
def server():
    with FakeLLMServer() as s:
        yield s


async def _stream(url, req, **kw):
    tokens: list[str] = []
    provider = OpenAIProvider(name="fake", base_url=url, api_key=KEY, backoff=FAST, **kw)
    result = await _complete(provider, req, on_token=tokens.append)
    return result, tokens


def test_stream_tokens_arrive_in_order_and_usage_comes_from_the_last_chunk(server):
    result, tokens = _run(_stream(server.url, _request(stream=True)))
    (recorded,) = server.requests
    assert recorded.body["stream"] is True and recorded.body["stream_options"] == {"include_usage": True}
    assert len(tokens) > 3 and "".join(tokens) == result.text
    expected = _run(_complete(OpenAIProvider(name="f", base_url=server.url), _request()))
    assert result.text == expected.text   # the same answer as without streaming
    assert result.completion_tokens == len(tokens) and result.prompt_tokens == expected.prompt_tokens


def test_stream_without_usage_chunk_leaves_usage_unknown():
    def handler(request):
        lines = [b'data: {"choices": [{"delta": {"content": "He"}}]}', b"",
                 b'data: {"choices": [{"delta": {"content": "llo"}, "finish_reason": "stop"}]}', b"",
                 b": keep-alive comment", b"", b"data: [DONE]", b"", b""]
        return httpx.Response(200, content=b"\n".join(lines), headers={"content-type": "text/event-stream"})

    tokens = []
    result = _run(_complete(_provider(handler), _request(stream=True), on_token=tokens.append))
    assert tokens == ["He", "llo"] and result.text == "Hello" and result.finish_reason == "stop"
    assert result.prompt_tokens is None


def test_stream_max_tokens_cut_reports_length(server):
    result, tokens = _run(_stream(server.url, _request(stream=True, params={"max_tokens": 3})))
    assert len(tokens) == 3 and result.finish_reason == "length"


def test_max_concurrency_is_enforced_inside_the_provider():
    with FakeLLMServer(latency=0.05) as server:
        async def main():
            provider = OpenAIProvider(name="f", base_url=server.url, max_concurrency=3)
            try:
                await asyncio.gather(*(provider.complete(_request()) for _ in range(12)))
            finally:
                await provider.aclose()

        _run(main())
        assert 0 < server.max_in_flight <= 3
        assert len(server.requests) == 12
