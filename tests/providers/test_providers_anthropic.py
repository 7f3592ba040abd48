"""AnthropicProvider: the Messages API's body, headers, parsing and event stream."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from moa_dsl.errors import ProviderHTTPError, ProviderResponseError
from moa_dsl.providers import AnthropicProvider, Backoff, CallRequest
from moa_dsl.testing import FakeLLMServer

KEY = "sk-ant-very-secret-0123456789"
FAST = Backoff(base_s=0.001, cap_s=0.01)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Responses: 1. x"},
            {"role": "user", "content": "Why is the sky blue?"}]


def _request(**kw) -> CallRequest:
    base = dict(node="agg", model="claude-x", messages=MESSAGES, params={"temperature": 0.3, "max_tokens": 99})
    return CallRequest(**{**base, **kw})


async def _complete(provider, req, **kw):
    try:
        return await provider.complete(req, **kw)
    finally:
        await provider.aclose()


def _mock(handler) -> AnthropicProvider:
    return AnthropicProvider(name="anthropic", base_url="https://api.example.test/v1", api_key=KEY,
                             transport=httpx.MockTransport(handler), backoff=FAST)


def test_body_moves_system_out_renames_stop_and_drops_seed():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"content": [{"type": "text", "text": "Blue light scatters."}],
                                         "stop_reason": "end_turn", "usage": {"input_tokens": 20, "output_tokens": 4}})

    params = {"temperature": 0.3, "max_tokens": 99, "seed": 5, "stop": "END", "top_p": 0.5, "cache": True}
    result = asyncio.run(_complete(_mock(handler), _request(params=params)))
    (request,) = seen
    assert str(request.url) == "https://api.example.test/v1/messages"
    assert request.headers["x-api-key"] == KEY and request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {
        "model": "claude-x", "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "system": "Be brief.\n\nResponses: 1. x", "temperature": 0.3, "max_tokens": 99, "top_p": 0.5,
        "stop_sequences": ["END"]}
    assert (result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason) == (
        "Blue light scatters.", 20, 4, "end_turn")


def test_max_tokens_is_always_sent():
    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"content": [{"type": "text", "text": "ok"}]})

    req = _request(params={}, messages=[{"role": "user", "content": "hi"}])
    asyncio.run(_complete(_mock(handler), req))
    assert seen[0]["max_tokens"] == 512 and "system" not in seen[0]


@pytest.mark.parametrize("body", [b"not json", b'{"content": [{"type": "tool_use"}]}', b"{}"])
def test_malformed_body_is_a_response_error(body):
    with pytest.raises(ProviderResponseError, match="agg.*anthropic.*claude-x"):
        asyncio.run(_complete(_mock(lambda r: httpx.Response(200, content=body)), _request()))


def test_error_message_is_anthropics_and_the_key_is_masked():
    def handler(request):
        return httpx.Response(400, json={"type": "error", "error": {
            "type": "invalid_request_error", "message": f"max_tokens: too large (key {KEY})"}})

    with pytest.raises(ProviderHTTPError) as info:
        asyncio.run(_complete(_mock(handler), _request()))
    assert "max_tokens: too large" in str(info.value) and "400" in str(info.value)
    assert KEY not in str(info.value) and info.value.attempts == 1


def test_stream_over_loopback_tokens_in_order_with_usage():
    with FakeLLMServer() as server:
        tokens = []
        provider = AnthropicProvider(name="anthropic", base_url=server.url, api_key=KEY)
        streamed = asyncio.run(_complete(provider, _request(stream=True), on_token=tokens.append))
        plain = asyncio.run(_complete(AnthropicProvider(name="a", base_url=server.url, api_key=KEY), _request()))
        assert server.requests[0].path == "/v1/messages" and server.requests[0].body["stream"] is True
        assert server.requests[0].headers["x-api-key"] == KEY
    assert len(tokens) > 3 and "".join(tokens) == streamed.text == plain.text
    assert streamed.prompt_tokens == plain.prompt_tokens > 0
    assert streamed.completion_tokens == len(tokens) and streamed.finish_reason == "end_turn"


def test_stream_error_event_before_any_token_is_retried():
    with FakeLLMServer() as server:
        server.inject("claude-x", "stream_error")
        provider = AnthropicProvider(name="anthropic", base_url=server.url, backoff=FAST)
        result = asyncio.run(_complete(provider, _request(stream=True)))
    assert result.attempts == 2 and result.text


def test_stream_error_event_after_tokens_fails_without_duplicating_text():
    with FakeLLMServer() as server:
        server.inject("claude-x", "stream_error", tokens=2)
        tokens = []
        provider = AnthropicProvider(name="anthropic", base_url=server.url, backoff=FAST)
        with pytest.raises(ProviderResponseError, match="overloaded_error") as info:
            asyncio.run(_complete(provider, _request(stream=True), on_token=tokens.append))
        assert len(server.requests) == 1
    assert len(tokens) == 2 and info.value.attempts == 1


def test_stream_ending_without_message_stop_is_a_response_error():
    with FakeLLMServer() as server:
        server.inject("claude-x", "truncated_stream", tokens=1, times=5)
        provider = AnthropicProvider(name="anthropic", base_url=server.url, backoff=FAST)
        with pytest.raises(ProviderResponseError, match="message_stop"):
            asyncio.run(_complete(provider, _request(stream=True)))


def test_an_empty_content_list_is_an_empty_answer():
    def handler(request):
        return httpx.Response(200, json={"content": [], "stop_reason": "end_turn",
                                         "usage": {"input_tokens": 7, "output_tokens": 0}})

    result = asyncio.run(_complete(_mock(handler), _request()))
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("", 7, 0)


def test_content_blocks_without_text_or_not_a_list_are_still_errors():
    for content in ([{"type": "tool_use", "id": "x"}], "just text"):
        def handler(request, content=content):
            return httpx.Response(200, json={"content": content})

        with pytest.raises(ProviderResponseError, match="unexpected response shape"):
            asyncio.run(_complete(_mock(handler), _request()))
