"""`ReplicatedProvider`: one provider over several replicas of one model server (`base_url` a list).

    provider gpus = openai { base_url = ["http://gpu1:8000/v1", "http://gpu2:8000/v1"] }

The pool builds one HTTP provider per URL, as it would for a single `base_url` (each with its own
connection pool and its own `max_concurrency`: the bound is per replica), and wraps them here. This
module does the routing, the setting aside of dead replicas and the retry loop; each inner provider
makes exactly one attempt per call (`retries=0`) and reports it as it always does.

Routing: each attempt goes to the replica with the fewest calls in flight through this provider
(queued on its `max_concurrency` included), ties in list order; replicas set aside are skipped.

Moves: an attempt that fails because the replica cannot be reached (a connection refused, reset or
dropped, or a timeout: a `ProviderConnectionError` or `ProviderTimeout` that is retryable) sets that
replica aside for `SET_ASIDE_S` seconds and goes again at once, on another replica, without counting
against `retries` and without a backoff wait. A call moves at most once to each replica: when every
replica it has not yet tried is set aside, the failure counts as an ordinary retryable one.

Retries: other retryable failures (408, 409, 429, 5xx, a stream broken before its first token), and
an unreachable replica when there is nowhere left to move, follow the rules of a single provider:
they count against `retries`, back off (`Backoff`, honouring `Retry-After`) through the runner's
`wait=` (which gives the call's slots back), and then go to whichever replica routing picks. If every
replica is set aside, that is the one whose set-aside ends first (a probe: a replica that has come
back is found without waiting out its 30 s). With no retries left the call fails with the last
error, its attempt count and the replicas it tried.

A streamed call that has passed a token on is never moved nor retried: the text would be doubled.
It fails as a single provider's does.

The cache key is the first URL's (`endpoint`), so every replica shares one set of cached answers.
Events: the inner provider's `request_sent` passes through, its `attempt` renumbered across the
whole call and a `replica` added (the URL without credentials or query); a move is reported as a
`retry` with `delay_s` 0 and `moved: true`. A `retry`'s `replica` is the one that failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import AbstractSet, Any, Callable, Sequence
from urllib.parse import urlsplit

from ..errors import ConfigError, ProviderConnectionError, ProviderError, ProviderTimeout
from . import http
from .base import CallRequest, Completion, Emit, OnToken, Wait
from .http import Backoff, Failure, HTTPProvider, TokenGate

__all__ = ["ReplicatedProvider", "SET_ASIDE_S"]

SET_ASIDE_S = 30.0  # how long a replica that cannot be reached is left out of routing (docs/language.md)


class ReplicatedProvider:
    """One provider (one name, one cache endpoint) over `replicas`, HTTP providers of the same kind."""

    def __init__(
        self,
        name: str,
        replicas: Sequence[HTTPProvider],
        *,
        backoff: Backoff | None = None,
        set_aside_s: float = SET_ASIDE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not replicas:
            raise ConfigError(f"provider {name}: base_url is an empty list")
        kinds = {r.kind for r in replicas}
        if len(kinds) != 1:
            raise ConfigError(f"provider {name}: replicas of different kinds ({', '.join(sorted(kinds))})")
        self.name = name
        self.kind = replicas[0].kind
        self.endpoint = replicas[0].endpoint  # the first URL: answers are shared across replicas
        per = replicas[0].max_concurrency
        self.max_concurrency = per * len(replicas) if per else None  # the runner's bound: all replicas' slots
        self._replicas = list(replicas)
        self._shown = [_shown(r.base_url) for r in replicas]
        self._in_flight = [0] * len(replicas)
        self._aside_until = [float("-inf")] * len(replicas)
        self._backoff = backoff or http.DEFAULT_BACKOFF  # read now, as HTTPProvider does
        self._set_aside_s = set_aside_s
        self._clock = clock

    @property
    def replicas(self) -> tuple[str, ...]:
        """The replicas' URLs as shown in messages and events (no credentials, no query)."""
        return tuple(self._shown)

    def in_flight(self) -> tuple[int, ...]:
        return tuple(self._in_flight)

    def set_aside(self) -> tuple[str, ...]:
        """The replicas left out of routing right now."""
        now = self._clock()
        return tuple(u for u, until in zip(self._shown, self._aside_until, strict=True) if until > now)

    # -- the call ---------------------------------------------------------------------------------
    async def complete(
        self, req: CallRequest, *, on_token: OnToken | None = None, emit: Emit | None = None, wait: Wait | None = None
    ) -> Completion:
        gate = TokenGate(on_token)
        one = dataclasses.replace(req, retries=0)  # one attempt per inner call: the loop is here
        retries = max(0, req.retries)
        attempt = 0  # requests sent, across replicas
        counted = 0  # failed attempts counted against `retries`
        moved_from: set[int] = set()  # replicas this call found unreachable (it moves to each at most once)
        tried: list[int] = []
        index = self._route()
        while True:
            attempt += 1
            current = index
            if current not in tried:
                tried.append(current)
            self._in_flight[current] += 1
            try:
                try:
                    completion = await self._replicas[current].complete(
                        one, on_token=gate, emit=self._relay(emit, attempt, current), wait=wait
                    )
                finally:
                    self._in_flight[current] -= 1  # before any backoff wait: a call waiting is not in flight
            except ProviderError as exc:
                if gate.emitted:  # text has reached the user: going again would duplicate it
                    raise self._error(exc, attempt, tried) from exc
                if _unreachable(exc):
                    self._aside_until[current] = self._clock() + self._set_aside_s
                    moved_from.add(current)
                    target = self._ready(avoid=moved_from)
                    if target is not None:
                        if emit is not None:
                            emit(
                                "retry",
                                {
                                    "attempt": attempt,
                                    "delay_s": 0.0,
                                    "moved": True,
                                    "replica": self._shown[current],
                                    "error": f"{_detail(exc, req, self.name)} (replica {self._shown[current]}, "
                                    f"set aside for {self._set_aside_s:g} s)",
                                },
                            )
                        index = target
                        continue
                if not exc.retryable or counted >= retries:
                    raise self._error(exc, attempt, tried) from exc
                retry_after = _retry_after(exc)
                if (retry_after or 0) > self._backoff.max_retry_after_s:
                    raise self._error(exc, attempt, tried) from exc
                counted += 1
                delay = self._backoff.delay(counted, retry_after)
                if emit is not None:
                    emit(
                        "retry",
                        {
                            "attempt": attempt,
                            "replica": self._shown[current],
                            "delay_s": round(delay, 3),
                            "error": f"{_detail(exc, req, self.name)} (replica {self._shown[current]})",
                        },
                    )
                await (wait or asyncio.sleep)(delay)
                index = self._route()
                continue
            if attempt > 1:
                completion = dataclasses.replace(completion, attempts=attempt)
            return completion

    def _route(self) -> int:
        """The replica for the next attempt: the fewest calls in flight among those not set aside (ties
        in list order); every replica being set aside, the one whose set-aside ends first."""
        ready = self._ready()
        if ready is not None:
            return ready
        return min(range(len(self._replicas)), key=lambda i: (self._aside_until[i], i))

    def _ready(self, avoid: AbstractSet[int] = frozenset()) -> int | None:
        """The fewest calls in flight among the replicas not set aside and not in `avoid`, or None."""
        now = self._clock()
        ready = [i for i, until in enumerate(self._aside_until) if until <= now and i not in avoid]
        return min(ready, key=lambda i: (self._in_flight[i], i)) if ready else None

    def _relay(self, emit: Emit | None, attempt: int, index: int) -> Emit | None:
        """The inner provider's events, as this call's: its one `request_sent` is this attempt."""
        if emit is None:
            return None
        replica = self._shown[index]

        def relay(kind: str, data: dict[str, Any]) -> None:
            if kind == "request_sent":
                data = {**data, "attempt": attempt, "replica": replica}
            emit(kind, data)

        return relay

    def _error(self, exc: ProviderError, attempts: int, tried: list[int]) -> ProviderError:
        """The inner provider's error (its message already free of secrets), saying where it went."""
        shown = ", ".join(self._shown[i] for i in tried)
        if attempts > 1:
            text = f"{exc} (gave up after {attempts} attempts; replicas tried: {shown})"
        else:
            text = f"{exc} (replica {shown})"
        error = type(exc)(text, node=exc.node, provider=exc.provider, status=exc.status, retryable=exc.retryable)
        error.attempts = attempts  # as HTTPProvider sets it
        return error

    async def aclose(self) -> None:
        errors = []
        for replica in self._replicas:
            try:
                await replica.aclose()
            except Exception as exc:  # close the rest whatever one does
                errors.append(exc)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:  # never a key, never a URL's credentials
        return f"{type(self).__name__}(name={self.name!r}, replicas={list(self._shown)!r})"


def _unreachable(exc: ProviderError) -> bool:
    """The replica could not be reached: a connection refused, reset or dropped, or a timeout.
    (A non-retryable ProviderConnectionError is our own malformed request: the same anywhere.)"""
    return isinstance(exc, (ProviderConnectionError, ProviderTimeout)) and exc.retryable


def _retry_after(exc: ProviderError) -> float | None:
    """What the server asked us to wait. HTTPProvider raises its ProviderError while handling the
    attempt's `Failure`, which carries it (`__context__`)."""
    failure = exc.__context__
    return failure.retry_after if isinstance(failure, Failure) else None


def _detail(exc: ProviderError, req: CallRequest, name: str) -> str:
    """The inner error's message without the `node: provider P, model 'M': ` it starts with (a retry
    event names the node already), as a single provider's retry event reads."""
    text = str(exc)
    prefix = f"{req.node}: provider {name}, model {req.model!r}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _shown(url: str) -> str:
    """A URL fit for a message: scheme, host, port and path; never a user:password@ or a query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"
