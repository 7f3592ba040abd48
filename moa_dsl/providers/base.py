"""What the runner asks of a provider, and what it gets back.

The runner builds a CallRequest per node (messages already built, parameters resolved) and awaits
`Provider.complete`. Retries, backoff, timeouts, streaming and the translation of httpx errors into
`moa_dsl.errors.ProviderError` all happen inside the provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from ..config import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S

__all__ = ["CallRequest", "Completion", "Emit", "OnToken", "Provider", "Wait"]

# emit(kind, data): "request_sent" {"attempt": n}; "retry" {"attempt": n, "error": str, "delay_s": x}
Emit = Callable[[str, dict[str, Any]], None]
OnToken = Callable[[str], None]
# wait(seconds): how a provider sleeps before a retry (default asyncio.sleep). The runner's gives the
# call's slots back meanwhile: a call waiting to retry is not in flight.
Wait = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class CallRequest:
    node: str  # graph node name, for error messages
    model: str  # the provider's model id
    messages: list[dict[str, str]]  # exactly what is sent
    params: dict[str, Any]  # only REQUEST_PARAMS that are set: temperature, max_tokens, top_p, seed, stop
    stream: bool = False
    timeout: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 1
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str
    kind: str  # "openai" | "anthropic" | "local"
    endpoint: str  # part of the cache key: base URL, or "local:<model>"; never a credential
    max_concurrency: int | None

    async def complete(
        self, req: CallRequest, *, on_token: OnToken | None = None, emit: Emit | None = None, wait: Wait | None = None
    ) -> Completion: ...

    async def aclose(self) -> None: ...
