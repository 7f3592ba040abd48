"""Any OpenAI-compatible `POST {base_url}/chat/completions`: OpenAI, Together, Groq, OpenRouter,
Ollama, llama.cpp's server (the embedded runtime), vLLM.

Streams are SSE (framed by httpx-sse): `data: {chunk}` events, then `data: [DONE]`. We ask for usage in the last chunk
(`stream_options.include_usage`) and read it from any chunk that carries it, as servers differ.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx
from httpx_sse import ServerSentEvent

from ..errors import ProviderResponseError
from .base import CallRequest, Completion
from .http import Failure, HTTPProvider, TokenGate, request_params

__all__ = ["OpenAIProvider"]


class OpenAIProvider(HTTPProvider):
    kind = "openai"
    path = "/chat/completions"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def build_body(self, req: CallRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": req.model, "messages": req.messages, **request_params(req)}
        if req.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def parse_body(self, data: Any) -> Completion:
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError(f"choices[0].message.content is {type(text).__name__}, not text")
        usage = data.get("usage") or {}
        return Completion(
            text, usage.get("prompt_tokens"), usage.get("completion_tokens"), finish_reason=choice.get("finish_reason")
        )

    async def read_stream(
        self, response: httpx.Response, events: AsyncIterator[ServerSentEvent], gate: TokenGate
    ) -> Completion:
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish_reason = None
        async for event in events:
            payload = event.data  # kept whole: str.strip() would eat U+2028, U+0085 and U+001C-U+001F
            if not payload or payload.isspace():
                continue
            if payload.strip(" \t") == "[DONE]":
                return Completion(
                    "".join(parts),
                    usage.get("prompt_tokens"),
                    usage.get("completion_tokens"),
                    finish_reason=finish_reason,
                )
            chunk = self._chunk(payload, gate)
            for choice in chunk.get("choices") or ():
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    parts.append(delta)
                    gate(delta)
                finish_reason = choice.get("finish_reason") or finish_reason
            if chunk.get("usage"):
                usage = chunk["usage"]
        raise Failure(
            ProviderResponseError,
            "the stream ended before `data: [DONE]`",
            status=response.status_code,
            retryable=not gate.emitted,
        )

    def _chunk(self, payload: str, gate: TokenGate) -> dict[str, Any]:
        chunk = self.stream_json(payload, gate, "chunk")
        error = chunk.get("error")
        if error:  # some servers report a failure mid-stream as a chunk
            message = error.get("message") if isinstance(error, dict) else error
            raise Failure(
                ProviderResponseError,
                f"the server reported an error mid-stream: {self._quote(str(message))}",
                retryable=not gate.emitted,
            )
        return chunk
