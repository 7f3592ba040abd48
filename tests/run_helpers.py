"""Helpers for the runner's tests: graphs built by hand (docs/architecture.md's attribute contract)
and an in-process provider with scripted latency and failures, spying on what runs when."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping

import networkx as nx

from moa_dsl.config import REFERENCE_PROMPT, EnvRef, ProviderConfig
from moa_dsl.errors import ConfigError, ProviderHTTPError
from moa_dsl.runtime.pipeline import Pipeline
from moa_dsl.providers.base import CallRequest, Completion


# The ranking instruction the hand-built rank nodes use (the language half's config.RANK_PROMPT is
# what a `.moa` file gets; these graphs stand in for it).
RANK_PROMPT = "Rank the candidate responses from best to worst; answer with their numbers, like [2] > [1] > [3]."


def node(role: str, inputs: Iterable[str] = (), *, provider: str | None = "fake", model: str | None = None,
         **params: Any) -> dict[str, Any]:
    """One node of a hand-built graph (ops contract: a vote has provider and model None)."""
    if role == "vote":
        provider = None
    return {"role": role, "inputs": tuple(inputs), "provider": provider, "model": model, "params": params}


def make_pipe(nodes: Mapping[str, Mapping[str, Any]], output: str, *, dead: Iterable[str] = (),
              providers: Mapping[str, ProviderConfig] | None = None,
              budget: Mapping[str, Any] | None = None) -> Pipeline:
    g = nx.DiGraph()
    for name, spec in nodes.items():
        params = {"temperature": 0.7, "max_tokens": 512, "cache": True, "timeout": 120.0, "retries": 3}
        if spec["role"] == "aggregate":
            params.update(prompt=REFERENCE_PROMPT, min_inputs=1)
        elif spec["role"] == "rank":
            params.update(prompt=RANK_PROMPT, min_inputs=1, top_k=1)
        elif spec["role"] == "vote":   # only its own keys: no model parameters
            params = {"min_inputs": 1, "normalize": True}
        params.update(spec["params"])
        model = None if spec["role"] == "vote" else spec["model"] or f"m-{name}"
        g.add_node(name, role=spec["role"], provider=spec["provider"], model=model,
                   model_name=None, sample=None, layer=None, inputs=spec["inputs"], params=params, span=None)
    for name, spec in nodes.items():
        for i in spec["inputs"]:
            g.add_edge(i, name)
    g.graph["output"] = output
    g.graph["dead"] = frozenset(dead)
    g.graph["budget"] = dict(budget or {})
    g.graph["providers"] = dict(providers or {"fake": ProviderConfig("fake", "openai", "http://fake.invalid/v1")})
    return Pipeline(graph=g)


def served(nodes: Mapping[str, Mapping[str, Any]], output: str, url: str, **kw: Any) -> Pipeline:
    """`make_pipe` with provider "fake" pointing at a FakeLLMServer (api key from $FAKE_KEY)."""
    provider = ProviderConfig("fake", "openai", url, EnvRef("FAKE_KEY"))
    return make_pipe(nodes, output, providers={"fake": provider}, **kw)


class FakeProvider:
    """Sleeps `latency[node]` (or `default_latency`) seconds, then answers "answer of NODE".

    Records, per node, the start and finish times (time.perf_counter) and the request; counts calls in
    flight (`max_running`). Nodes in `fail` raise a non-retryable ProviderHTTPError. `hold(node)`, if
    given, is awaited while the call counts as running: a test's ordering without a clock.
    """

    kind = "openai"
    endpoint = "http://fake.invalid/v1"

    def __init__(self, *, name: str = "fake", latency: Mapping[str, float] | None = None,
                 default_latency: float = 0.0, fail: Iterable[str] = (), max_concurrency: int | None = None,
                 stream_chunks: int = 3, hold: Callable[[str], Awaitable[None]] | None = None):
        self.name = name
        self.latency = dict(latency or {})
        self.default_latency = default_latency
        self.fail = set(fail)
        self.max_concurrency = max_concurrency
        self.stream_chunks = stream_chunks
        self.hold = hold
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.requests: dict[str, CallRequest] = {}
        self.running = 0
        self.max_running = 0
        self.cancelled: list[str] = []

    async def complete(self, req: CallRequest, *, on_token=None, emit=None, wait=None) -> Completion:
        if emit:
            emit("request_sent", {"attempt": 1})
        self.requests[req.node] = req
        self.started[req.node] = time.perf_counter()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.hold is not None:
                await self.hold(req.node)
            await asyncio.sleep(self.latency.get(req.node, self.default_latency))
        except asyncio.CancelledError:
            self.cancelled.append(req.node)
            raise
        finally:
            self.running -= 1
            self.finished[req.node] = time.perf_counter()
        if req.node in self.fail:
            raise ProviderHTTPError(f"HTTP 400 from {self.name}: scripted failure of {req.node}",
                                    node=req.node, provider=self.name, status=400)
        text = f"answer of {req.node}"
        if req.stream and on_token:
            step = max(1, len(text) // self.stream_chunks)
            for i in range(0, len(text), step):
                on_token(text[i:i + step])
        return Completion(text=f"  {text}\n", prompt_tokens=10, completion_tokens=5)

    async def aclose(self) -> None:
        pass


class FakePool:
    def __init__(self, *providers: FakeProvider, missing_keys: Iterable[str] = ()):
        self.providers = {p.name: p for p in providers}
        self.missing_keys = set(missing_keys)
        self.closed = False

    def check_keys(self, names: Iterable[str]) -> None:
        missing = sorted(set(names) & self.missing_keys)
        if missing:
            raise ConfigError(f"missing API key for {', '.join(missing)}")

    def get(self, name: str) -> FakeProvider:
        return self.providers[name]

    async def aclose(self) -> None:
        self.closed = True
