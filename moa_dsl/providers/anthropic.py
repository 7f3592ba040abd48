"""Anthropic's Messages API, `POST {base_url}/messages`.

Differences from OpenAI handled here: the key goes in `x-api-key` with an `anthropic-version`;
system messages move to a top-level `system` (several joined by a blank line); `max_tokens` is
required; `stop` is `stop_sequences`; `seed` does not exist and is not sent. Streams are typed
events: message_start (input usage), content_block_delta (text_delta), message_delta (output usage,
stop_reason), message_stop; an `error` event fails the attempt.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx
from httpx_sse import ServerSentEvent

from ..config import BUILTIN_PARAMS
from ..errors import ProviderResponseError
from .base import CallRequest, Completion
from .http import Failure, HTTPProvider, TokenGate, request_params

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic's own transient error types (https://docs.anthropic.com/en/api/errors).
_RETRYABLE_STREAM_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})


class AnthropicProvider(HTTPProvider):
    kind = "anthropic"
    path = "/messages"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def build_body(self, req: CallRequest) -> dict[str, Any]:
        params = request_params(req)
        params.pop("seed", None)
        stop = params.pop("stop", None)
        system = [m["content"] for m in req.messages if m.get("role") == "system"]
        body: dict[str, Any] = {
            "model": req.model,
            "messages": [m for m in req.messages if m.get("role") != "system"],
            **params,
        }
        body.setdefault("max_tokens", BUILTIN_PARAMS["max_tokens"])
        if system:
            body["system"] = "\n\n".join(system)
        if stop is not None:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if req.stream:
            body["stream"] = True
        return body

    def parse_body(self, data: Any) -> Completion:
        content = data["content"]
        if not isinstance(content, list):
            raise TypeError("content is not a list")
        texts = [block["text"] for block in content if block.get("type") == "text"]
        # An empty list is a real (empty) answer, e.g. stop_reason "end_turn" at once; blocks but
        # no text among them is not something we can read.
        if (content and not texts) or not all(isinstance(t, str) for t in texts):
            raise KeyError("content[].text")
        usage = data.get("usage") or {}
        return Completion(
            "".join(texts), usage.get("input_tokens"), usage.get("output_tokens"), finish_reason=data.get("stop_reason")
        )

    async def read_stream(
        self, response: httpx.Response, events: AsyncIterator[ServerSentEvent], gate: TokenGate
    ) -> Completion:
        parts: list[str] = []
        prompt_tokens = completion_tokens = finish_reason = None
        async for sse in events:
            payload = sse.data  # kept whole: str.strip() would eat U+2028, U+0085 and U+001C-U+001F
            if not payload or payload.isspace():
                continue
            event = self.stream_json(payload, gate, "event")
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    parts.append(delta["text"])
                    gate(delta["text"])
            elif kind == "message_start":
                usage = (event.get("message") or {}).get("usage") or {}
                prompt_tokens = usage.get("input_tokens", prompt_tokens)
                completion_tokens = usage.get("output_tokens", completion_tokens)
            elif kind == "message_delta":
                usage = event.get("usage") or {}
                completion_tokens = usage.get("output_tokens", completion_tokens)
                finish_reason = (event.get("delta") or {}).get("stop_reason") or finish_reason
            elif kind == "message_stop":
                return Completion("".join(parts), prompt_tokens, completion_tokens, finish_reason=finish_reason)
            elif kind == "error":
                error = event.get("error") or {}
                raise Failure(
                    ProviderResponseError,
                    f"the stream reported {self._quote(str(error.get('type', 'an error')), 100)}: "
                    f"{self._quote(str(error.get('message', '')))}",
                    retryable=error.get("type") in _RETRYABLE_STREAM_ERRORS and not gate.emitted,
                )
        raise Failure(
            ProviderResponseError,
            "the stream ended before message_stop",
            status=response.status_code,
            retryable=not gate.emitted,
        )
