"""Retries, backoff and error translation, against FakeLLMServer on 127.0.0.1 (real sockets)."""
from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest

from moa_dsl.errors import (
    ProviderConnectionError, ProviderHTTPError, ProviderResponseError, ProviderTimeout,
)
from moa_dsl.providers import AnthropicProvider, Backoff, CallRequest, OpenAIProvider
from moa_dsl.providers.http import _retry_after
from moa_dsl.testing import FakeLLMServer

pytestmark = pytest.mark.usefixtures("provider_path")   # tests/conftest.py: the fast path and the httpx path

KEY = "sk-retry-secret-0123456789"
FAST = Backoff(base_s=0.001, cap_s=0.01)


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _fresh(server):
    server.clear_faults()
    server.reset_stats()


def _request(model="m", **kw) -> CallRequest:
    return CallRequest(node="L.a", model=model, messages=[{"role": "user", "content": "hi there"}],
                       params={"max_tokens": 20}, **kw)


def _call(url, req, *, cls=OpenAIProvider, backoff=FAST, **kw):
    events = []

    async def main():
        provider = cls(name="fake", base_url=url, api_key=KEY, backoff=backoff)
        try:
            return await provider.complete(req, emit=lambda k, d: events.append((k, d)), **kw)
        finally:
            await provider.aclose()

    return asyncio.run(main()), events


def _fails(url, req, error, **kw):
    with pytest.raises(error) as info:
        _call(url, req, **kw)
    text = str(info.value)
    assert "L.a" in text and "fake" in text and KEY not in text
    return info.value


@pytest.mark.parametrize("cls", [OpenAIProvider, AnthropicProvider])
def test_429_waits_at_least_retry_after(server, cls):
    server.inject("m", "429", retry_after=0.3)
    start = time.monotonic()
    result, events = _call(server.url, _request(), cls=cls)
    assert time.monotonic() - start >= 0.3
    first, second = server.requests
    assert second.started - first.finished >= 0.3
    assert result.attempts == 2
    retry = [d for k, d in events if k == "retry"]
    assert retry == [{"attempt": 1, "error": retry[0]["error"], "delay_s": 0.3}] and "429" in retry[0]["error"]


def test_retry_after_ms_is_honoured(server):
    server.inject("m", "429", retry_after_ms=250)
    result, _ = _call(server.url, _request())
    first, second = server.requests
    assert second.started - first.finished >= 0.25 and result.attempts == 2


def test_retry_after_header_forms():
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert _retry_after(httpx.Headers({"retry-after": "1.5"})) == 1.5
    assert _retry_after(httpx.Headers({"retry-after-ms": "20", "retry-after": "9"})) == 0.02
    assert 25 < _retry_after(httpx.Headers({"retry-after": date})) <= 30
    assert _retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert _retry_after(httpx.Headers({})) is None


def test_a_retry_after_beyond_the_limit_fails_instead_of_stalling(server):
    server.inject("m", "429", retry_after=3600)
    error = _fails(server.url, _request(), ProviderHTTPError)
    assert "3600" in str(error) and len(server.requests) == 1


@pytest.mark.parametrize("status", ["500", "503", "408", "409"])
def test_retryable_status_then_success(server, status):
    server.inject("m", status)
    result, events = _call(server.url, _request())
    assert result.attempts == 2 and result.text
    assert [k for k, _ in events] == ["request_sent", "retry", "request_sent"]


def test_retries_exhausted_reports_status_and_attempts(server):
    server.inject("m", "500", message="upstream exploded", times=3)
    error = _fails(server.url, _request(retries=2), ProviderHTTPError)
    assert error.status == 500 and error.attempts == 3 and len(server.requests) == 3
    assert "upstream exploded" in str(error) and "3 attempts" in str(error) and "'m'" in str(error)


def test_retries_zero_means_one_attempt(server):
    server.inject("m", "500")
    error = _fails(server.url, _request(retries=0), ProviderHTTPError)
    assert error.attempts == 1 and len(server.requests) == 1


@pytest.mark.parametrize("cls", [OpenAIProvider, AnthropicProvider])
def test_400_fails_at_once_with_the_servers_message(server, cls):
    server.inject("m", "400", message="temperature must be at most 1")
    error = _fails(server.url, _request(retries=3), ProviderHTTPError, cls=cls)
    assert "temperature must be at most 1" in str(error) and "HTTP 400" in str(error)
    assert error.status == 400 and error.attempts == 1 and len(server.requests) == 1


def test_hang_times_out_then_gives_up(server):
    server.inject("m", "hang", times=2)
    error = _fails(server.url, _request(timeout=0.2, retries=1), ProviderTimeout)
    assert error.attempts == 2 and "timed out after 0.2 s" in str(error)


def test_hang_then_success(server):
    # The timeout must let the second (instant) answer through on a loaded machine: a generous
    # bound, since it only has to fire once, on the hung first attempt.
    server.inject("m", "hang")
    result, _ = _call(server.url, _request(timeout=2.0))
    assert result.attempts == 2


@pytest.mark.parametrize("stream", [False, True])
def test_reset_before_any_token_is_retried(server, stream):
    server.inject("m", "reset")
    result, _ = _call(server.url, _request(stream=stream))
    assert result.attempts == 2 and result.text


def test_reset_every_time_is_a_connection_error(server):
    server.inject("m", "reset", times=3)
    error = _fails(server.url, _request(retries=2), ProviderConnectionError)
    assert error.attempts == 3


def test_reset_mid_stream_after_tokens_fails_without_duplicating(server):
    server.inject("m", "reset", tokens=3)
    tokens = []
    with pytest.raises(ProviderConnectionError) as info:
        _call(server.url, _request(stream=True), on_token=tokens.append)
    assert len(tokens) == 3 and info.value.attempts == 1 and len(server.requests) == 1


def test_refused_connection_is_a_connection_error():
    with FakeLLMServer() as dead:
        url = dead.url   # the port is free again once the server is closed
    error = _fails(url, _request(retries=1), ProviderConnectionError)
    assert error.attempts == 2


def test_invalid_json_fails_at_once(server):
    server.inject("m", "invalid_json")
    error = _fails(server.url, _request(), ProviderResponseError)
    assert "not JSON" in str(error) and error.attempts == 1


def test_invalid_json_in_a_stream_before_tokens_is_retried(server):
    server.inject("m", "invalid_json")
    result, _ = _call(server.url, _request(stream=True))
    assert result.attempts == 2


def test_bad_shape_is_a_response_error_not_a_key_error(server):
    server.inject("m", "bad_shape")
    _fails(server.url, _request(), ProviderResponseError)


def test_truncated_non_stream_body_is_retried(server):
    server.inject("m", "truncated_stream")
    result, _ = _call(server.url, _request())
    assert result.attempts == 2


def test_truncated_stream_before_tokens_is_retried(server):
    server.inject("m", "truncated_stream", tokens=0)
    tokens = []
    result, _ = _call(server.url, _request(stream=True), on_token=tokens.append)
    assert result.attempts == 2 and "".join(tokens) == result.text


def test_truncated_stream_after_tokens_fails(server):
    server.inject("m", "truncated_stream", tokens=2, times=4)
    tokens = []
    with pytest.raises(ProviderResponseError, match=r"\[DONE\]") as info:
        _call(server.url, _request(stream=True), on_token=tokens.append)
    assert len(tokens) == 2 and info.value.attempts == 1


def test_backoff_grows_is_jittered_and_capped():
    b = Backoff(base_s=1.0, cap_s=4.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (9, 4.0)]:
        delays = {b.delay(attempt) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays) and len(delays) > 1
    assert b.delay(5, retry_after=7.5) == 7.5


def test_the_key_in_a_header_never_reaches_an_error(server):
    server.inject("m", "401", message=f"invalid x-api-key {KEY}")
    error = _fails(server.url, _request(), ProviderHTTPError, cls=AnthropicProvider)
    assert "***" in str(error)
    assert server.requests[0].headers["x-api-key"] == KEY   # it was sent, just never shown


def test_a_key_with_a_stray_cr_is_not_retried_and_not_leaked(server):
    events = []
    bad = KEY + "\r"

    async def main():
        provider = OpenAIProvider(name="fake", base_url=server.url, api_key=bad, backoff=FAST)
        try:
            return await provider.complete(_request(), emit=lambda k, d: events.append((k, d)))
        finally:
            await provider.aclose()

    with pytest.raises(ProviderConnectionError) as info:
        asyncio.run(main())
    assert not any(kind == "retry" for kind, _ in events)
    shown = str(info.value) + repr(events)
    assert "secret-0123456789" not in shown


def test_redact_covers_stripped_and_repr_forms():
    provider = OpenAIProvider(name="fake", base_url="http://127.0.0.1:9", api_key=" sk-redact-me-0123\r\n")
    text = provider._redact("b'Bearer  sk-redact-me-0123\\r\\n' and sk-redact-me-0123 alone")
    assert "sk-redact-me" not in text
    asyncio.run(provider.aclose())
