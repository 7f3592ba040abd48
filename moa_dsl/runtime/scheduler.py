"""The scheduler: one asyncio task per node, each awaiting only its own inputs.

A node starts the moment its last input finishes (never a barrier per layer); calls in flight are
bounded by one global semaphore and, per provider, by its `max_concurrency`. Failures are values: a
node's failed call is recorded in its NodeResult and its dependants decide (`min_inputs`) whether
to run. Only cancellation (Ctrl-C, a cancelled notebook cell) and genuine bugs leave a run early;
cancellation stops every call in flight and is re-raised, and every call that completed before it
is already in the cache.

Beyond propose and aggregate (docs/language.md): a `vote` makes no call; an aggregator with `agree` makes
none when its inputs agree; a `rank` node passes its top K inputs on, in its order, where it stands
in a reader's input list; a `window` aggregator folds its inputs in several calls; a node with
`quorum = K` starts once K inputs succeeded, and the inputs no live node still needs are cancelled
(their calls abandoned, nothing partial cached, reported `cancelled`); a `budget` reserves each
call's worst case before it is sent and skips a call that would pass a cap.

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
from .calls import PreparedCall, prepare_call
from .events import Emitter, EventKind, OnEvent, TraceWriter
from .messages import normalize_query
from .operators import Budget, Reservation, agree, budget_caps, parse_ranking, tally, window_steps
from .result import NodeResult, NodeStatus, RunResult, RunStatus, Usage, price_usd

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

    def __init__(
        self,
        pipe: Topology,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        refresh: bool = False,
        environ: Mapping[str, str] | None = None,
        transport: Any = None,
        pool: Any = None,
        response_cache: Any = None,
        verbose: bool = False,
        limiter: asyncio.Semaphore | None = None,
        budget: Mapping[str, Any] | None = None,
    ):
        self.pipe = pipe
        self.graph = pipe.graph
        self.refresh = refresh
        # `limiter`: a bound shared with other sessions (moa eval: one bound across all topologies).
        self.semaphore = limiter if limiter is not None else asyncio.Semaphore(check_concurrency(concurrency))
        # Cache keys with a call under way: an identical request waits for that answer instead of
        # sampling a second one that the cache could not keep (a rerun would serve one to both).
        self.inflight: dict[str, asyncio.Event] = {}
        self.order = live_nodes(self.graph)
        # The graph's budget with `budget`'s keys replacing its own (moa run --budget-usd ...).
        self.budget = budget_caps(self.graph.graph.get("budget"), budget)
        nodes = self.graph.nodes
        # Only a graph with a quorum needs to know who still waits for what (to cancel the rest).
        self.has_quorum = any(nodes[n]["params"].get("quorum") for n in self.order)
        live = set(self.order)
        self.consumers: dict[str, tuple[str, ...]] = {n: () for n in self.order}
        if self.has_quorum:
            for n in self.order:
                for i in nodes[n]["inputs"]:
                    if i in live and n not in self.consumers[i]:
                        self.consumers[i] += (n,)
        self._owns_pool = pool is None
        if pool is None:
            pool = ProviderPool(
                self.graph.graph["providers"],
                environ=os.environ if environ is None else environ,
                transport=transport,
                verbose=verbose,
            )
        self.pool = pool
        used = sorted({p for n in self.order if (p := self.graph.nodes[n]["provider"]) is not None})
        pool.check_keys(used)  # one ConfigError naming every missing variable, before any call
        self.providers = {name: pool.get(name) for name in used}
        self.provider_slots = {
            name: asyncio.Semaphore(p.max_concurrency)
            for name, p in self.providers.items()
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

    async def run(
        self, query: Any, *, on_event: OnEvent | None = None, trace: Any = None, on_token: OnToken | None = None
    ) -> RunResult:
        conversation = normalize_query(query)
        writer = TraceWriter(trace) if trace is not None else None
        try:
            emitter = Emitter([on_event, writer])
            return await _Run(self, conversation, emitter, on_token, self.budget).run()
        finally:
            if writer is not None:
                writer.close()


class _Acc:
    """What a node's calls (a window makes several) have done so far: usage, attempts, timings.
    A node cancelled half-way still reports what it spent."""

    __slots__ = ("started", "attempts", "made", "hits", "pt", "ct", "spent_pt", "spent_ct", "latency", "key")

    def __init__(self) -> None:
        self.started: float | None = None
        self.attempts = self.made = self.hits = self.pt = self.ct = self.spent_pt = self.spent_ct = 0
        self.latency = 0.0
        self.key: str | None = None


class _Run:
    """One query through the graph. Per-node work is O(inputs): no scans of the whole graph per event."""

    def __init__(
        self,
        session: Session,
        conversation: list[dict[str, str]],
        emitter: Emitter,
        on_token: OnToken | None,
        budget: Mapping[str, float] | None = None,
    ):
        self.s, self.conversation, self.emitter, self.on_token = session, conversation, emitter, on_token
        self.output = session.graph.graph["output"]
        self.results: dict[str, NodeResult] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.usage = Usage()
        # What a ranker passes on, as (node it came from, text): its top K. Any other node that
        # succeeded passes on its own text.
        self.ranked: dict[str, list[tuple[str, str]]] = {}
        # Each node's calls so far, kept only where a node can be cancelled half-way (a quorum graph).
        self.accs: dict[str, _Acc] = {}
        self.budget = Budget(budget) if budget else None
        # Quorum bookkeeping, only for graphs that have one: the live consumers still waiting for each
        # node, the nodes' tasks, finish order, and the waiters to wake when a node finishes.
        self.quorum = session.has_quorum
        self.tasks: dict[str, asyncio.Task] = {}
        self.needed: dict[str, set[str]] = {}
        self.cancelling: dict[str, str] = {}
        self.seq: dict[str, int] = {}
        self.watchers: dict[str, list[asyncio.Event]] = {}

    async def run(self) -> RunResult:
        s, em = self.s, self.emitter
        em.emit("run_started", None, {"nodes": list(s.order), "output": self.output})
        self.done = {n: asyncio.Event() for n in s.order}
        if self.quorum:
            self.needed = {n: set(c) for n, c in s.consumers.items()}
        await gather_or_cancel(self._node(n) for n in s.order)
        out = self.results.get(self.output)
        status: RunStatus = "ok" if out is not None and out.succeeded else "failed"
        elapsed = em.now()
        em.emit("run_finished", None, {"status": status, "elapsed_s": round(elapsed, 6), "usage": self.usage.to_json()})
        nodes = {n: self.results[n] for n in s.order}
        output = None
        if status == "ok":
            ranked = self.ranked.get(self.output)
            output = ranked[0][1] if ranked else (out.text if out is not None else None)
        return RunResult(
            output=output,
            output_node=self.output,
            status=status,
            elapsed_s=elapsed,
            usage=self.usage,
            nodes=nodes,
            events=em.events,
        )

    async def _node(self, name: str) -> None:
        attrs = self.s.graph.nodes[name]
        try:
            if not self.quorum:
                for dep in attrs["inputs"]:
                    await self.done[dep].wait()
                self.results[name] = await self._resolve(name, attrs, attrs["inputs"])
                return
            self.tasks[name] = asyncio.current_task()  # type: ignore[assignment]
            try:
                k = attrs["params"].get("quorum")
                if k:
                    read = await self._quorum(name, attrs["inputs"], k)
                else:
                    for dep in attrs["inputs"]:
                        await self.done[dep].wait()
                    read = attrs["inputs"]
                self.results[name] = await self._resolve(name, attrs, read)
            except asyncio.CancelledError:
                reason = self.cancelling.get(name)
                if reason is None:  # the whole run is being cancelled (Ctrl-C): not ours to absorb
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                self.results[name] = self._cancelled(name, attrs, reason)
        finally:
            self.done[name].set()
            if self.quorum:
                self.seq[name] = len(self.seq)
                for ev in self.watchers.pop(name, ()):
                    ev.set()

    async def _quorum(self, name: str, inputs: tuple[str, ...], k: int) -> tuple[str, ...]:
        """Wait until K inputs succeeded (then read the first K to succeed, in input order, and give
        up on the rest), or until every input finished (then read them all)."""
        arrived = asyncio.Event()
        for i in inputs:
            if not self.done[i].is_set():
                self.watchers.setdefault(i, []).append(arrived)
        while True:
            arrived.clear()
            finished = [i for i in inputs if self.done[i].is_set()]
            ok = [i for i in finished if self.results[i].succeeded]
            if len(ok) >= k:
                first = set(sorted(ok, key=self.seq.__getitem__)[:k])
                self._release(name, inputs)
                return tuple(i for i in inputs if i in first)
            if len(finished) == len(inputs):
                return inputs
            await arrived.wait()

    def _release(self, name: str, inputs: tuple[str, ...]) -> None:
        """`name` no longer waits for `inputs`: cancel those still running that no live node needs."""
        for i in inputs:
            waiting = self.needed.get(i)
            if waiting is None:
                continue
            waiting.discard(name)
            if not waiting and i != self.output and not self.done[i].is_set() and i not in self.cancelling:
                self.cancelling[i] = "quorum"
                self._release(i, self.s.graph.nodes[i]["inputs"])  # what only it needed goes too
                self.tasks[i].cancel()

    async def _resolve(self, name: str, attrs: Mapping[str, Any], read: tuple[str, ...]) -> NodeResult:
        params = attrs["params"]
        role = attrs["role"]
        refs: list[tuple[str, str]] | None = None
        if role != "propose":
            refs, succeeded = [], 0
            results, ranked = self.results, self.ranked
            for i in read:
                r = results[i]
                if r.succeeded and r.text is not None:
                    succeeded += 1
                    if i in ranked:
                        refs.extend(ranked[i])
                    else:
                        refs.append((i, r.text))
            need = params.get("min_inputs", 1)
            if succeeded < need:
                reason = f"{succeeded} of {len(attrs['inputs'])} inputs succeeded, min_inputs is {need}"
                return self._skipped(name, attrs, reason, "min_inputs", read=read)
            if role == "vote":
                return self._vote(name, attrs, refs, read)
            if params.get("agree") and agree(
                [t for _, t in refs], params.get("extract"), params.get("normalize", True)
            ):
                return self._agreed(name, attrs, refs, read)
        provider = self.s.providers[attrs["provider"]]
        acc = _Acc()
        if self.quorum:
            self.accs[name] = acc
        texts = None if refs is None else [t for _, t in refs]
        if role == "rank":
            assert refs is not None  # a rank node always has inputs (E204 otherwise)
            return await self._rank(name, attrs, provider, refs, acc, read)
        steps = window_steps(len(texts), params.get("window")) if texts is not None and role == "aggregate" else [None]
        answer: str | None = None
        for n, step in enumerate(steps):
            if step is None:
                step_refs = texts
            else:
                assert texts is not None  # a window step exists only for an aggregator's inputs
                step_refs = texts[step[0] : step[1]] if answer is None else [answer, *texts[step[0] : step[1]]]
            call = prepare_call(attrs, self.conversation, step_refs, provider)
            out = await self._step(name, attrs, provider, call, acc, stream=name == self.output and n == len(steps) - 1)
            if isinstance(out, NodeResult):
                out.inputs_read = read
                return out
            answer = out
        assert answer is not None
        result = self._finished(name, attrs, acc, answer, agreed=False if params.get("agree") else None)
        result.inputs_read = read
        return result

    async def _rank(
        self,
        name: str,
        attrs: Mapping[str, Any],
        provider: Any,
        refs: list[tuple[str, str]],
        acc: _Acc,
        read: tuple[str, ...],
    ) -> NodeResult:
        n = len(refs)

        def check(reply: str) -> str | None:
            if parse_ranking(reply, n) is None:
                return f"the ranking reply names no candidate [1]..[{n}]: {reply.strip()[:120]!r}"
            return None

        call = prepare_call(attrs, self.conversation, [t for _, t in refs], provider)
        out = await self._step(name, attrs, provider, call, acc, stream=False, check=check)
        if isinstance(out, NodeResult):
            out.inputs_read = read
            return out
        order = parse_ranking(out, n)
        assert order is not None
        top = [refs[i] for i in order[: max(1, int(attrs["params"].get("top_k", 1)))]]
        self.ranked[name] = top
        if name == self.output:
            self._stream(top[0][1])
        result = self._finished(name, attrs, acc, out, selected=[origin for origin, _ in top])
        result.inputs_read = read
        return result

    async def _step(
        self,
        name: str,
        attrs: Mapping[str, Any],
        provider: Any,
        call: PreparedCall,
        acc: _Acc,
        *,
        stream: bool,
        check: Callable[[str], str | None] | None = None,
    ) -> str | NodeResult:
        """One call of the node: from the cache, or made (within the budget). Its text, or the node's
        failed or skipped result."""
        params = attrs["params"]
        cache = self.s.cache if params.get("cache", True) else None
        key = call.key if cache is not None else None
        acc.key = call.key
        if cache is not None and key is not None and not self.s.refresh:
            hit = cache.get(key)
            if hit is None and key in self.s.inflight:
                await self.s.inflight[key].wait()
                hit = cache.get(key)  # None if that call failed: then this node makes its own
            if hit is not None and (check is None or check(hit["text"]) is None):
                self._hit(name, attrs, hit, acc, stream)
                return hit["text"]
        reservation: Reservation | None = None
        if self.budget is not None:
            reserved = self.budget.reserve(call.messages, params)
            if isinstance(reserved, str):
                return self._skipped(name, attrs, reserved, "budget", acc=acc)
            reservation = reserved
        req = CallRequest(
            node=name,
            model=attrs["model"],
            messages=call.messages,
            params=call.body,
            stream=stream,
            timeout=params.get("timeout", DEFAULT_TIMEOUT_S),
            retries=params.get("retries", DEFAULT_RETRIES),
        )
        owner = None
        if key is not None and key not in self.s.inflight:
            owner = self.s.inflight[key] = asyncio.Event()
        em = self.emitter
        sent = False
        pt = ct = 0
        try:  # one coroutine for the lookup and the call: every await of a call resumes each frame
            slots = _Slots(self.s.semaphore, self.s.provider_slots.get(attrs["provider"]))
            await slots.acquire()
            try:
                started = em.now()
                if acc.started is None:
                    acc.started = started
                    em.emit("node_started", name, {"model": attrs["model"], "provider": attrs["provider"]}, t=started)

                def emit(kind: EventKind, data: dict[str, Any]) -> None:
                    if kind == "request_sent":
                        acc.attempts += 1
                    em.emit(kind, name, data)

                on_token = self._stream if req.stream else None
                attempts_before = acc.attempts
                self.usage.calls += 1
                acc.made += 1
                sent = True
                try:
                    done: Completion = await provider.complete(req, on_token=on_token, emit=emit, wait=slots.sleep)
                except MoaError as exc:
                    return self._failed(name, attrs, str(exc), started, acc, call.key)
                except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                    acc.latency += em.now() - started
                    raise
                except Exception as exc:  # a provider bug must not sink the other nodes of a batch
                    return self._failed(name, attrs, f"{type(exc).__name__}: {exc}", started, acc, call.key)
            finally:
                slots.release()
            finished = em.now()
            pt, ct = done.prompt_tokens or 0, done.completion_tokens or 0
            if acc.attempts == attempts_before:  # a provider that does not report its requests
                acc.attempts += done.attempts or 1
            acc.pt += pt
            acc.ct += ct
            acc.spent_pt += pt
            acc.spent_ct += ct
            acc.latency += finished - started
            self.usage.prompt_tokens += pt
            self.usage.completion_tokens += ct
            self._add_cost(attrs, pt, ct)
            problem = check(done.text) if check is not None else None
            if problem is not None:  # an unusable reply is not cached: a rerun asks again
                return self._failed(name, attrs, problem, started, acc, call.key)
            if cache is not None:
                cache.set(
                    call.key,
                    {
                        "text": done.text,
                        "prompt_tokens": done.prompt_tokens,
                        "completion_tokens": done.completion_tokens,
                        "finish_reason": done.finish_reason,
                    },
                )
            return done.text
        finally:
            if owner is not None and key is not None:
                del self.s.inflight[key]
                owner.set()
            if reservation is not None and self.budget is not None:
                self.budget.settle(
                    reservation, sent=sent, prompt_tokens=pt, completion_tokens=ct, price=params.get("price")
                )

    def _add_cost(self, attrs: Mapping[str, Any], pt: int, ct: int) -> None:
        if self.usage.cost_usd is not None:
            cost = price_usd(attrs["params"].get("price"), pt, ct)
            self.usage.cost_usd = None if cost is None else self.usage.cost_usd + cost

    def _stream(self, text: str) -> None:
        self.emitter.emit("token", self.output, {"text": text})
        if self.on_token is not None:
            self.on_token(text)

    def _hit(self, name: str, attrs: Mapping[str, Any], hit: Mapping[str, Any], acc: _Acc, stream: bool) -> None:
        em = self.emitter
        t = em.now()
        pt, ct = hit.get("prompt_tokens") or 0, hit.get("completion_tokens") or 0
        self.usage.cache_hits += 1
        self.usage.saved_prompt_tokens += pt
        self.usage.saved_completion_tokens += ct
        self._add_cost(attrs, 0, 0)
        acc.hits += 1
        acc.pt += pt
        acc.ct += ct
        if acc.started is None:
            acc.started = t
        em.emit("cache_hit", name, {"prompt_tokens": pt, "completion_tokens": ct}, t=t)
        if stream:
            self._stream(hit["text"])

    def _cost(self, attrs: Mapping[str, Any], acc: _Acc | None) -> float | None:
        return price_usd(attrs["params"].get("price"), acc.spent_pt if acc else 0, acc.spent_ct if acc else 0)

    def _finished(self, name: str, attrs: Mapping[str, Any], acc: _Acc, text: str, **extra: Any) -> NodeResult:
        em = self.emitter
        t = em.now()
        status: NodeStatus = "ok" if acc.made else "cached"
        latency = acc.latency if acc.made else 0.0
        started = acc.started if acc.started is not None else t
        result = NodeResult(
            status,
            attrs["model"],
            attrs["provider"],
            text,
            acc.pt,
            acc.ct,
            latency,
            acc.attempts,
            None,
            started,
            t,
            cache_key=acc.key,
            cost_usd=self._cost(attrs, acc),
            calls=acc.made + acc.hits,
            **extra,
        )
        data: dict[str, Any] = {
            "status": status,
            "usage": result.usage,
            "latency_s": round(latency, 6),
            "calls": acc.made,
        }
        if extra:
            data.update({k: v for k, v in extra.items() if v is not None})
        em.emit("node_finished", name, data, t=t)
        return result

    def _vote(
        self, name: str, attrs: Mapping[str, Any], refs: list[tuple[str, str]], read: tuple[str, ...]
    ) -> NodeResult:
        params = attrs["params"]
        votes, first = tally([t for _, t in refs], params.get("extract"), params.get("normalize", True))
        t = self.emitter.now()
        if not votes:
            extract = params.get("extract")
            error = "no input cast a vote" + (f" (none matched extract {extract!r})" if extract else "")
            self.emitter.emit("node_failed", name, {"error": error, "calls": 0}, t=t)
            return NodeResult(
                "failed",
                attrs.get("model"),
                attrs.get("provider"),
                None,
                error=error,
                started_s=t,
                finished_s=t,
                cost_usd=0.0,
                votes={},
                calls=0,
                inputs_read=read,
            )
        winner = max(votes, key=votes.__getitem__)  # the first cast wins a tie
        origin, text = refs[first[winner]]
        if name == self.output:
            self._stream(text)
        result = NodeResult(
            "ok",
            attrs.get("model"),
            attrs.get("provider"),
            text,
            0,
            0,
            0.0,
            0,
            None,
            t,
            t,
            cost_usd=0.0,
            votes=votes,
            calls=0,
            inputs_read=read,
        )
        self.emitter.emit(
            "node_finished",
            name,
            {"status": "ok", "usage": result.usage, "latency_s": 0.0, "calls": 0, "votes": dict(votes)},
            t=t,
        )
        return result

    def _agreed(
        self, name: str, attrs: Mapping[str, Any], refs: list[tuple[str, str]], read: tuple[str, ...]
    ) -> NodeResult:
        t = self.emitter.now()
        text = refs[0][1]
        if name == self.output:
            self._stream(text)
        result = NodeResult(
            "ok",
            attrs["model"],
            attrs["provider"],
            text,
            0,
            0,
            0.0,
            0,
            None,
            t,
            t,
            cost_usd=self._cost(attrs, None),
            agreed=True,
            calls=0,
            inputs_read=read,
        )
        self.emitter.emit(
            "node_finished",
            name,
            {"status": "ok", "usage": result.usage, "latency_s": 0.0, "calls": 0, "agreed": True},
            t=t,
        )
        return result

    def _failed(
        self, name: str, attrs: Mapping[str, Any], error: str, started: float, acc: _Acc, key: str
    ) -> NodeResult:
        t = self.emitter.now()
        self.emitter.emit("node_failed", name, {"error": error, "calls": acc.made}, t=t)
        begun = acc.started if acc.started is not None else started
        return NodeResult(
            "failed",
            attrs["model"],
            attrs["provider"],
            None,
            acc.pt,
            acc.ct,
            t - begun,
            max(acc.attempts, acc.made, 1),
            error,
            begun,
            t,
            cache_key=key,
            cost_usd=self._cost(attrs, acc),
            calls=acc.made + acc.hits,
        )

    def _skipped(
        self,
        name: str,
        attrs: Mapping[str, Any],
        text: str,
        reason: str,
        *,
        acc: _Acc | None = None,
        read: tuple[str, ...] | None = None,
    ) -> NodeResult:
        t = self.emitter.now()
        self.emitter.emit("node_skipped", name, {"reason": text}, t=t)
        return self._ended("skipped", attrs, t, acc, reason, error=text, read=read)

    def _cancelled(self, name: str, attrs: Mapping[str, Any], reason: str) -> NodeResult:
        """Given up (a quorum was reached without it): what it spent before is still reported."""
        t = self.emitter.now()
        acc = self.accs.get(name)
        self.emitter.emit("node_cancelled", name, {"reason": reason, "calls": acc.made if acc else 0}, t=t)
        return self._ended("cancelled", attrs, t, acc, reason)

    def _ended(
        self,
        status: NodeStatus,
        attrs: Mapping[str, Any],
        t: float,
        acc: _Acc | None,
        reason: str,
        *,
        error: str | None = None,
        read: tuple[str, ...] | None = None,
    ) -> NodeResult:
        """A node that ends without an answer of its own (skipped, cancelled), with what it spent."""
        started = acc.started if acc is not None else None
        return NodeResult(
            status,
            attrs.get("model"),
            attrs.get("provider"),
            None,
            acc.pt if acc else 0,
            acc.ct if acc else 0,
            None if started is None else t - started,
            acc.attempts if acc else 0,
            error,
            started,
            t,
            cache_key=acc.key if acc else None,
            reason=reason,
            cost_usd=0.0 if attrs["role"] == "vote" else self._cost(attrs, acc),
            calls=acc.made + acc.hits if acc else 0,
            inputs_read=read,
        )


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
        if self._held:  # never twice: a cancelled retry wait has already given them back
            self._held = False
            self._global.release()
            if self._provider is not None:
                self._provider.release()

    async def sleep(self, seconds: float) -> None:
        self.release()
        await asyncio.sleep(seconds)
        await self.acquire()


async def arun(
    pipe: Topology,
    query: Any,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    on_event: OnEvent | None = None,
    trace: Any = None,
    environ: Mapping[str, str] | None = None,
    transport: Any = None,
    on_token: OnToken | None = None,
    pool: Any = None,
    verbose: bool = False,
    budget: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run `pipe` on one query. Returns the RunResult whatever happened to the nodes (see `.status`,
    `.raise_for_status()`); raises ConfigError before any call for a bad query, bound or missing key.

    `budget`: {"usd", "tokens", "calls"} caps for this query, each replacing the file's `budget` key of
    the same name (None leaves it)."""
    normalize_query(query)  # a bad query is reported before anything is opened
    async with Session(
        pipe,
        concurrency=concurrency,
        cache=cache,
        cache_dir=cache_dir,
        refresh=refresh,
        environ=environ,
        transport=transport,
        pool=pool,
        verbose=verbose,
        budget=budget,
    ) as session:
        return await session.run(query, on_event=on_event, trace=trace, on_token=on_token)


def run_blocking(pipe: Topology, query: Any, **options: Any) -> RunResult:
    """`arun`, from synchronous code: scripts and running loops (Jupyter) alike."""
    return run_sync(lambda: arun(pipe, query, **options))
