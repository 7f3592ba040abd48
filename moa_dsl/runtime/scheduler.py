"""The scheduler: one asyncio task per node, each awaiting only its own inputs.

A node starts the moment its last input finishes (never a barrier per layer); calls in flight are
bounded by one global semaphore and, per provider, by its `max_concurrency`. Failures are values: a
node's failed call is recorded in its NodeResult and its dependants decide (`min_inputs`) whether
to run. Only cancellation (Ctrl-C, a cancelled notebook cell) and genuine bugs leave a run early;
cancellation stops every call in flight and is re-raised, and every call that completed before it
is already in the cache.

    result = await arun(pipe, "Why is the sky blue?")
    result = run_blocking(pipe, query)          # scripts and running loops (Jupyter) alike

A `Session` holds what several runs can share (provider clients, the cache, the global bound):
`moa run --input` runs a whole batch through one session so the bound is global across items.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Iterable, Mapping

import networkx as nx

from ..config import DEFAULT_CONCURRENCY, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S
from ..config import cache_dir as default_cache_dir
from ..errors import ConfigError, MoaError
from ..language.topology import Topology
from ..providers.base import CallRequest, Completion
from ..providers.pool import ProviderPool
from .bridge import run_sync
from .cache import ResponseCache
from .calls import prepare_call
from .events import Emitter, EventKind, OnEvent, TraceWriter
from .messages import normalize_query
from .result import NodeResult, RunResult, RunStatus, Usage

__all__ = ["Session", "arun", "check_concurrency", "gather_or_cancel", "live_nodes", "run_blocking"]

OnToken = Callable[[str], None]


def check_concurrency(concurrency: Any) -> int:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer >= 1, not {concurrency!r}")
    return concurrency


async def gather_or_cancel(coroutines: Iterable[Any], *, step: int | None = None) -> list[Any]:
    """Run them all as tasks. On cancellation (or a bug) stop every one still in flight and let it
    unwind before re-raising, so no call outlives the run that made it.

    `step`: start them `step` at a time, letting the loop run in between. For a batch of runs: the
    first runs' calls go out while later ones are still being set up, instead of after all of them
    (805 AlpacaEval items through MoA-Lite: 70 ms of setup before the first call, otherwise).
    """
    tasks: list[asyncio.Future] = []
    try:
        for c in coroutines:
            tasks.append(asyncio.ensure_future(c))
            if step and len(tasks) % step == 0:
                await asyncio.sleep(0)
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def live_nodes(graph: nx.DiGraph) -> list[str]:
    """The nodes a run calls, in dependency order: everything but the dead ones."""
    dead = graph.graph.get("dead", frozenset())
    return [n for n in nx.topological_sort(graph) if n not in dead]


class Session:
    """Provider clients, the response cache and the global bound, shared by the runs made through it.

    Create it inside the event loop that runs it; `async with` closes what it opened.
    """

    def __init__(self, pipe: Topology, *, concurrency: int = DEFAULT_CONCURRENCY, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, refresh: bool = False,
                 environ: Mapping[str, str] | None = None, transport: Any = None,
                 pool: Any = None, response_cache: Any = None, verbose: bool = False,
                 limiter: asyncio.Semaphore | None = None):
        self.pipe = pipe
        self.graph = pipe.graph
        self.refresh = refresh
        # `limiter`: a bound shared with other sessions (moa eval: one bound across all topologies).
        self.semaphore = limiter if limiter is not None else asyncio.Semaphore(check_concurrency(concurrency))
        # Cache keys with a call under way: an identical request waits for that answer instead of
        # sampling a second one that the cache could not keep (a rerun would serve one to both).
        self.inflight: dict[str, asyncio.Event] = {}
        self.order = live_nodes(self.graph)
        self._owns_pool = pool is None
        if pool is None:
            pool = ProviderPool(self.graph.graph["providers"], environ=os.environ if environ is None else environ,
                                transport=transport, verbose=verbose)
        self.pool = pool
        used = sorted({self.graph.nodes[n]["provider"] for n in self.order})
        pool.check_keys(used)  # one ConfigError naming every missing variable, before any call
        self.providers = {name: pool.get(name) for name in used}
        self.provider_slots = {
            name: asyncio.Semaphore(p.max_concurrency) for name, p in self.providers.items()
            if getattr(p, "max_concurrency", None)
        }
        self._owns_cache = response_cache is None and cache
        if response_cache is None and cache:
            response_cache = ResponseCache(default_cache_dir(cache_dir))
        self.cache = response_cache if cache else None

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            if self._owns_pool:
                await self.pool.aclose()
        finally:
            if self._owns_cache and self.cache is not None:
                self.cache.close()

    async def run(self, query: Any, *, on_event: OnEvent | None = None, trace: Any = None,
                  on_token: OnToken | None = None) -> RunResult:
        conversation = normalize_query(query)
        writer = TraceWriter(trace) if trace is not None else None
        try:
            emitter = Emitter([on_event, writer])
            return await _Run(self, conversation, emitter, on_token).run()
        finally:
            if writer is not None:
                writer.close()


class _Run:
    """One query through the graph. Per-node work is O(inputs): no scans of the whole graph per event."""

    def __init__(self, session: Session, conversation: list[dict[str, str]], emitter: Emitter,
                 on_token: OnToken | None):
        self.s, self.conversation, self.emitter, self.on_token = session, conversation, emitter, on_token
        self.output = session.graph.graph["output"]
        self.results: dict[str, NodeResult] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.usage = Usage()

    async def run(self) -> RunResult:
        s, em = self.s, self.emitter
        em.emit("run_started", None, {"nodes": list(s.order), "output": self.output})
        self.done = {n: asyncio.Event() for n in s.order}
        await gather_or_cancel(self._node(n) for n in s.order)
        out = self.results.get(self.output)
        status: RunStatus = "ok" if out is not None and out.succeeded else "failed"
        elapsed = em.now()
        em.emit("run_finished", None, {"status": status, "elapsed_s": round(elapsed, 6),
                                       "usage": self.usage.to_json()})
        nodes = {n: self.results[n] for n in s.order}
        return RunResult(output=out.text if out is not None and status == "ok" else None, output_node=self.output,
                         status=status, elapsed_s=elapsed, usage=self.usage, nodes=nodes,
                         events=em.events)

    async def _node(self, name: str) -> None:
        attrs = self.s.graph.nodes[name]
        try:
            for dep in attrs["inputs"]:
                await self.done[dep].wait()
            self.results[name] = await self._resolve(name, attrs)
        finally:
            self.done[name].set()

    async def _resolve(self, name: str, attrs: Mapping[str, Any]) -> NodeResult:
        params = attrs["params"]
        refs = None
        if attrs["role"] == "aggregate":
            inputs = attrs["inputs"]
            refs = [r.text for r in (self.results[i] for i in inputs) if r.succeeded and r.text is not None]
            need = params.get("min_inputs", 1)
            if len(refs) < need:
                reason = f"{len(refs)} of {len(inputs)} inputs succeeded, min_inputs is {need}"
                return self._skipped(name, attrs, reason)
        provider = self.s.providers[attrs["provider"]]
        call = prepare_call(attrs, self.conversation, refs, provider)
        cache = self.s.cache if params.get("cache", True) else None
        key = call.key if cache is not None else None
        # The key for NodeResult.cache_key: computed now only if the cache needs it, else at first read.
        node_key: Any = key if key is not None else call.compute_key
        if cache is not None and key is not None and not self.s.refresh:
            hit = cache.get(key)
            if hit is None and key in self.s.inflight:
                await self.s.inflight[key].wait()
                hit = cache.get(key)  # None if that call failed: then this node makes its own
            if hit is not None:
                return self._cached(name, attrs, hit, key)
        req = CallRequest(node=name, model=attrs["model"], messages=call.messages, params=call.body,
                          stream=name == self.output, timeout=params.get("timeout", DEFAULT_TIMEOUT_S),
                          retries=params.get("retries", DEFAULT_RETRIES))
        owner = None
        if key is not None and key not in self.s.inflight:
            owner = self.s.inflight[key] = asyncio.Event()
        try:
            return await self._call(name, attrs, provider, req, cache, node_key)
        finally:
            if owner is not None and key is not None:
                del self.s.inflight[key]
                owner.set()

    async def _call(self, name: str, attrs: Mapping[str, Any], provider: Any, req: CallRequest,
                    cache: ResponseCache | None, key: Any) -> NodeResult:
        em = self.emitter
        slots = _Slots(self.s.semaphore, self.s.provider_slots.get(attrs["provider"]))
        await slots.acquire()
        try:
            started = em.now()
            em.emit("node_started", name, {"model": attrs["model"], "provider": attrs["provider"]}, t=started)
            attempts = 0

            def emit(kind: EventKind, data: dict[str, Any]) -> None:
                nonlocal attempts
                if kind == "request_sent":
                    attempts += 1
                em.emit(kind, name, data)

            on_token = self._stream if req.stream else None
            self.usage.calls += 1
            try:
                done: Completion = await provider.complete(req, on_token=on_token, emit=emit, wait=slots.sleep)
            except MoaError as exc:
                return self._failed(name, attrs, str(exc), started, max(attempts, 1), key)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # a provider bug must not sink the other nodes of a batch
                return self._failed(name, attrs, f"{type(exc).__name__}: {exc}", started, max(attempts, 1), key)
        finally:
            slots.release()
        finished = em.now()
        pt, ct = done.prompt_tokens or 0, done.completion_tokens or 0
        if cache is not None:
            cache.set(key, {"text": done.text, "prompt_tokens": done.prompt_tokens,
                            "completion_tokens": done.completion_tokens, "finish_reason": done.finish_reason})
        self.usage.prompt_tokens += pt
        self.usage.completion_tokens += ct
        result = NodeResult("ok", attrs["model"], attrs["provider"], done.text, pt, ct, finished - started,
                            attempts or done.attempts, None, started, finished, cache_key=key)
        em.emit("node_finished", name, {"status": "ok", "usage": result.usage,
                                        "latency_s": round(finished - started, 6)}, t=finished)
        return result

    def _stream(self, text: str) -> None:
        self.emitter.emit("token", self.output, {"text": text})
        if self.on_token is not None:
            self.on_token(text)

    def _cached(self, name: str, attrs: Mapping[str, Any], hit: Mapping[str, Any], key: str) -> NodeResult:
        em = self.emitter
        t = em.now()
        pt, ct = hit.get("prompt_tokens") or 0, hit.get("completion_tokens") or 0
        self.usage.cache_hits += 1
        self.usage.saved_prompt_tokens += pt
        self.usage.saved_completion_tokens += ct
        em.emit("cache_hit", name, {"prompt_tokens": pt, "completion_tokens": ct}, t=t)
        if name == self.output:
            self._stream(hit["text"])
        result = NodeResult("cached", attrs["model"], attrs["provider"], hit["text"], pt, ct, 0.0, 0, None, t, t,
                            cache_key=key)
        em.emit("node_finished", name, {"status": "cached", "usage": result.usage, "latency_s": 0.0}, t=t)
        return result

    def _failed(self, name: str, attrs: Mapping[str, Any], error: str, started: float,
                attempts: int, key: Any) -> NodeResult:
        t = self.emitter.now()
        self.emitter.emit("node_failed", name, {"error": error}, t=t)
        return NodeResult("failed", attrs["model"], attrs["provider"], None, 0, 0, t - started, attempts,
                          error, started, t, cache_key=key)

    def _skipped(self, name: str, attrs: Mapping[str, Any], reason: str) -> NodeResult:
        t = self.emitter.now()
        self.emitter.emit("node_skipped", name, {"reason": reason}, t=t)
        return NodeResult("skipped", attrs["model"], attrs["provider"], None, error=reason, started_s=None,
                          finished_s=t)


class _Slots:
    """The global slot and the provider's slot one call holds, given back while it waits to retry
    (a call sleeping off a 429 is not in flight: other calls, of any provider, use its slots)."""

    __slots__ = ("_global", "_provider", "_held")

    def __init__(self, global_slots: asyncio.Semaphore, provider_slots: asyncio.Semaphore | None):
        self._global, self._provider, self._held = global_slots, provider_slots, False

    async def acquire(self) -> None:
        # The provider's own slot first: a call queued on a busy provider must not hold a global slot.
        if self._provider is not None:
            await self._provider.acquire()
        try:
            await self._global.acquire()
        except BaseException:
            if self._provider is not None:
                self._provider.release()
            raise
        self._held = True

    def release(self) -> None:
        if self._held:       # never twice: a cancelled retry wait has already given them back
            self._held = False
            self._global.release()
            if self._provider is not None:
                self._provider.release()

    async def sleep(self, seconds: float) -> None:
        self.release()
        await asyncio.sleep(seconds)
        await self.acquire()


async def arun(pipe: Topology, query: Any, *, concurrency: int = DEFAULT_CONCURRENCY, cache: bool = True,
               cache_dir: str | os.PathLike | None = None, refresh: bool = False,
               on_event: OnEvent | None = None, trace: Any = None, environ: Mapping[str, str] | None = None,
               transport: Any = None, on_token: OnToken | None = None, pool: Any = None,
               verbose: bool = False) -> RunResult:
    """Run `pipe` on one query. Returns the RunResult whatever happened to the nodes (see `.status`,
    `.raise_for_status()`); raises ConfigError before any call for a bad query, bound or missing key."""
    normalize_query(query)  # a bad query is reported before anything is opened
    async with Session(pipe, concurrency=concurrency, cache=cache, cache_dir=cache_dir, refresh=refresh,
                       environ=environ, transport=transport, pool=pool, verbose=verbose) as session:
        return await session.run(query, on_event=on_event, trace=trace, on_token=on_token)


def run_blocking(pipe: Topology, query: Any, **options: Any) -> RunResult:
    """`arun`, from synchronous code: scripts and running loops (Jupyter) alike."""
    return run_sync(lambda: arun(pipe, query, **options))
