"""OpenAI's chat-completions API as `moa serve` speaks it: the request checked and turned into a
conversation plus output-node parameters, and the response, chunk and error objects.

Pure functions over dicts (the HTTP side is Starlette's): unit-testable without a server.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from ..runtime import RunResult, failure_reason
from ..runtime.messages import normalize_query

__all__ = [
    "MAX_BODY",
    "ApiError",
    "ChatRequest",
    "chunk",
    "completion",
    "error_body",
    "moa_field",
    "new_id",
    "parse_chat",
    "run_failure",
    "sse",
    "usage_field",
]

MAX_BODY = 4 * 1024 * 1024

# Fields a client may send that change nothing here (accepted and ignored, as OpenAI-compatible servers do).
_IGNORED = {
    "user",
    "metadata",
    "store",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "service_level",
    "service_tier",
    "reasoning_effort",
    "modalities",
    "prediction",
    "audio",
    "web_search_options",
    "safety_identifier",
    "prompt_cache_key",
    "verbosity",
}
_REFUSED = {  # what a topology cannot do: refused by name rather than silently ignored
    "tools": "tools (function calling) are not supported: a topology answers in text",
    "tool_choice": "tool_choice is not supported: a topology answers in text",
    "functions": "functions (function calling) are not supported: a topology answers in text",
    "function_call": "function_call is not supported: a topology answers in text",
    "response_format": "response_format is not supported: a topology answers in plain text",
}


class ApiError(Exception):
    """An error response: the HTTP status and OpenAI's error object."""

    TYPES = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        502: "server_error",
        500: "server_error",
        405: "invalid_request_error",
        503: "server_error",
    }

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.TYPES.get(self.status, "invalid_request_error"), self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class ChatRequest:
    model: str
    conversation: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)  # output-node overrides: temperature, max_tokens, ...
    stream: bool = False
    include_usage: bool = False


def parse_chat(raw: bytes) -> ChatRequest:
    """The body of `POST /v1/chat/completions`, checked; raises ApiError(400) saying what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    for key, why in _REFUSED.items():
        if body.get(key) is not None:
            raise ApiError(400, why, "unsupported_parameter", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required: the name of a topology (see GET /v1/models)", param="model")
    n = body.get("n")
    if n is not None and (_not_int(n) or n != 1):
        raise ApiError(400, f"n must be 1 (a topology gives one answer), not {n!r}", "unsupported_parameter", "n")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    include_usage = bool((options or {}).get("include_usage"))
    return ChatRequest(model, _conversation(body.get("messages")), _params(body), bool(stream), include_usage)


def _not_int(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, int)


def _number(body: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be a number from {lo:g} to {hi:g}, not {v!r}", param=key)
    return float(v)


def _params(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's sampling parameters, for the output node only."""
    out: dict[str, Any] = {}
    for key, hi in (("temperature", 2.0), ("top_p", 1.0)):
        value = _number(body, key, 0.0, hi)
        if value is not None:
            out[key] = value
    given = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    if len(given) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
        raise ApiError(400, "give max_tokens or max_completion_tokens, not two different values", param="max_tokens")
    if given:
        v = body[given[0]]
        if _not_int(v) or v < 1:
            raise ApiError(400, f"'{given[0]}' must be an integer >= 1, not {v!r}", param=given[0])
        out["max_tokens"] = v
    seed = body.get("seed")
    if seed is not None:
        if _not_int(seed):
            raise ApiError(400, f"'seed' must be an integer, not {seed!r}", param="seed")
        out["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
            raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 of them", param="stop")
        if stops:
            out["stop"] = stops
    return out


def _conversation(messages: Any) -> list[dict[str, str]]:
    """OpenAI messages as the runtime's conversation: developer is system, leading system messages are
    joined, text content parts are joined; anything a topology cannot take is refused by name."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param="messages")
        role = msg.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise ApiError(
                400,
                f"messages[{i}]: role {role!r} is not supported (system, developer, user, assistant)",
                param="messages",
            )
        if msg.get("tool_calls") or msg.get("function_call"):
            raise ApiError(400, f"messages[{i}]: tool calls are not supported", param="messages")
        text = _content(msg.get("content"), i)
        if role == "system" and out and out[-1]["role"] == "system" and len(out) == 1:
            out[-1]["content"] += "\n\n" + text
            continue
        out.append({"role": role, "content": text})
    try:
        return normalize_query(out)
    except ConfigError as exc:
        raise ApiError(400, f"messages: {exc}", param="messages") from None


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(
                    400, f"messages[{i}]: content part {kind!r} is not supported (text only)", param="messages"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}]: content must be a string or a list of text parts", param="messages")


# -- responses --------------------------------------------------------------------------------------


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_field(result: RunResult) -> dict[str, int]:
    """Every call the run made, the fan-out included; answers served from the cache count 0."""
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def moa_field(result: RunResult) -> dict[str, Any]:
    return {
        "nodes": {
            name: {
                "status": node.status,
                "model": node.model,
                "latency_s": None if node.latency_s is None else round(node.latency_s, 6),
                "usage": node.usage,
            }
            for name, node in result.nodes.items()
        },
        "cache_hits": result.usage.cache_hits,
        "calls": result.usage.calls,
    }


def completion(cid: str, model: str, result: RunResult) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.output, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage_field(result),
        "moa": moa_field(result),
    }


def chunk(
    cid: str, model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        **extra,
    }


def sse(obj: Any) -> str:
    """One server-sent event carrying JSON (OpenAI's streams use `data:` lines only)."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def run_failure(name: str, result: RunResult) -> ApiError:
    """502: which node did not answer and why, then every failed node's own error (all credential-free:
    provider errors are redacted where they are raised, moa_dsl/errors.py)."""
    parts = [f"topology '{name}': the output node '{result.output_node}' did not answer: {failure_reason(result)}"]
    for node_name, node in result.nodes.items():
        if node.status == "failed" and node_name != result.output_node:
            parts.append(f"node '{node_name}' failed: {node.error}")
    message = "; ".join(parts)
    if len(message) > 4000:
        message = message[:3997] + "..."
    return ApiError(502, message, "topology_failed")
