"""The new operators' benchmarks (bench/README.md): what a quorum saves in time, and what `agree`
saves in calls.

    quorum      time to the output with `quorum = K` / the same DAG without it, one proposer 10x slower
                than the rest; expected near (K-th fastest + aggregator) / (slowest + aggregator)
    agreement   calls made with `agree = true` / without it, on items where the proposers agree on half

The graphs are built by hand with the attributes the language produces (the ops contract), so the
benchmark measures the runtime alone.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Mapping

import networkx as nx

from moa_dsl.config import REFERENCE_PROMPT, EnvRef, ProviderConfig
from moa_dsl.runtime.pipeline import Pipeline
from moa_dsl.runtime.scheduler import Session, arun

__all__ = ["graph_pipe", "measure_agreement", "measure_quorum"]

ENV = {"K": "sk-bench-dummy"}


def graph_pipe(url: str, nodes: Mapping[str, tuple[str, tuple[str, ...], dict[str, Any]]], output: str) -> Pipeline:
    """{name: (role, inputs, params)}: one model per node, named after it."""
    g = nx.DiGraph()
    for name, (role, inputs, extra) in nodes.items():
        params: dict[str, Any] = {"temperature": 0.7, "max_tokens": 512, "cache": True, "timeout": 120.0,
                                  "retries": 0}
        if role == "aggregate":
            params.update(prompt=REFERENCE_PROMPT, min_inputs=1)
        params.update(extra)
        g.add_node(name, role=role, provider="fake", model=name, model_name=None, sample=None, layer=None,
                   inputs=inputs, params=params, span=None)
        for i in inputs:
            g.add_edge(i, name)
    g.graph.update(output=output, dead=frozenset(), budget={},
                   providers={"fake": ProviderConfig("fake", "openai", url, EnvRef("K"))})
    return Pipeline(graph=g)


def quorum_dag(url: str, n: int, k: int | None) -> Pipeline:
    proposers = [f"p{i}" for i in range(n)]
    nodes: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {p: ("propose", (), {}) for p in proposers}
    nodes["agg"] = ("aggregate", tuple(proposers), {"quorum": k} if k else {})
    return graph_pipe(url, nodes, "agg")


def measure_quorum(make_server: Callable[[dict[str, float], float], Any], unit: float, n: int = 4,
                   k: int = 3) -> dict[str, float]:
    """Seconds to the output with and without `quorum = k`: proposer p{n-1} takes 10 units, the others
    and the aggregator 1. `make_server(latency, default)` is a context manager with `.url`."""
    latency = {f"p{n - 1}": 10 * unit}
    with make_server(latency, unit) as server:
        quorum, plain = quorum_dag(server.url, n, k), quorum_dag(server.url, n, None)
        asyncio.run(arun(plain, "warm up", cache=False, environ=ENV))

        def timed(pipe: Pipeline, query: str) -> float:
            t0 = time.perf_counter()
            result = asyncio.run(arun(pipe, query, cache=False, environ=ENV))
            if result.status != "ok":
                raise RuntimeError(f"the run failed: {result.summary()}")
            return time.perf_counter() - t0

        with_q = timed(quorum, "Why is the sky blue?")
        without = timed(plain, "Why is the sky blue?")
    expected = (unit + unit) / (10 * unit + unit)       # (K-th fastest + aggregator) / (slowest + aggregator)
    return {"quorum_s": with_q, "plain_s": without, "ratio": with_q / without, "expected": expected}


def measure_agreement(items: int = 40) -> dict[str, float]:
    """Calls with `agree = true` / without, 3 proposers and an aggregator per item, the proposers
    giving the same answer on every other item (in-process FakeLLMServer: this counts calls, not time)."""
    from moa_dsl.testing import FakeLLMServer, default_answer

    def respond(model: str, body: dict) -> str:
        question = body["messages"][-1]["content"]
        if model.startswith("p") and question.endswith("(agree)"):
            return "The answer is 42."
        return default_answer(model, body["messages"])

    def dag(url: str, agree: bool) -> Pipeline:
        nodes: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
            p: ("propose", (), {}) for p in ("p1", "p2", "p3")}
        nodes["agg"] = ("aggregate", ("p1", "p2", "p3"), {"agree": True} if agree else {})
        return graph_pipe(url, nodes, "agg")

    async def calls(pipe: Pipeline) -> int:
        async with Session(pipe, cache=False, environ=ENV) as session:
            results = await asyncio.gather(*(session.run(f"question {i}" + (" (agree)" if i % 2 else ""))
                                             for i in range(items)))
        if any(r.status != "ok" for r in results):
            raise RuntimeError("an agreement run failed")
        return sum(r.usage.calls for r in results)

    with FakeLLMServer(responder=respond, record=False) as server:
        with_agree = asyncio.run(calls(dag(server.url, True)))
        without = asyncio.run(calls(dag(server.url, False)))
    return {"agree_calls": with_agree, "plain_calls": without, "ratio": with_agree / without,
            "expected": (items // 2 * 3 + (items - items // 2) * 4) / (items * 4)}
