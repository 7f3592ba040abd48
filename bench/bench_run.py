"""How close the runner comes to the ideal, against a FakeLLMServer in its own process on 127.0.0.1.

    python bench/bench_run.py [--latency 0.2] [--calls 10000] [--bound 256]

Prints three ratios (goals in brackets):
  1. makespan / critical path, for non-uniform DAGs with unequal latencies       [<= 1.05]
  2. our wall time / raw httpx doing the same calls at the same bound           [<= 1.3]
  3. a fully cached run / the same run uncached                                  [<= 0.05]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import networkx as nx

from moa_dsl import loads
from moa_dsl.runtime.messages import build_messages
from moa_dsl.runtime.scheduler import Session, arun

KEY = "sk-bench"
SERVER = """
import sys, time, json
from moa_dsl.testing import FakeLLMServer
latency = json.loads(sys.argv[1])
with FakeLLMServer(latency=latency["per_model"], default_latency=latency["default"], record=False) as s:
    print(s.url, flush=True)
    sys.stdin.read()
"""


class Server:
    """The fake server in a child process, so it does not share our GIL."""

    def __init__(self, per_model: dict[str, float], default: float):
        arg = json.dumps({"per_model": per_model, "default": default})
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, arg], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --- 1. makespan over critical path ----------------------------------------------------------------

DAGS = {
    "skip+critic": ("""
node a = propose fake:"fast"
node b = propose fake:"slow"
node c = propose fake:"mid"
node review = aggregate fake:"mid" <- a, c
node deep = aggregate fake:"fast" <- review, a
node final = aggregate fake:"fast" <- deep, b
""", {"fast": 1, "mid": 2, "slow": 5}),
    "ragged-3-layer": ("""
layer l1 = propose [fake:"fast", fake:"slow", fake:"mid" * 2]
node x = aggregate fake:"slow" <- l1.fast
node y = aggregate fake:"fast" <- l1.slow, l1.mid.1
node z = aggregate fake:"mid" <- x, l1.mid.2
node final = aggregate fake:"fast" <- y, z
""", {"fast": 1, "mid": 2, "slow": 4}),
    "moa-paper-uneven": ("""
layer first  = propose [fake:"fast", fake:"mid", fake:"slow", fake:"fast" * 3]
layer second = aggregate [fake:"fast", fake:"mid", fake:"slow"] <- first
node final = aggregate fake:"mid" <- second
""", {"fast": 1, "mid": 2, "slow": 3}),
}


def critical_path(graph: nx.DiGraph, latency: dict[str, float]) -> float:
    longest: dict[str, float] = {}
    for n in nx.topological_sort(graph):
        longest[n] = latency[graph.nodes[n]["model"]] + max((longest[p] for p in graph.predecessors(n)), default=0.0)
    return max(longest.values())


def bench_makespan(unit: float) -> list[tuple[str, float, float]]:
    rows = []
    for name, (body, units) in DAGS.items():
        latency = {m: u * unit for m, u in units.items()}
        with Server(latency, unit) as server:
            pipe = loads(f'provider fake = openai {{ base_url = "{server.url}", api_key = env("K") }}\n' + body)
            asyncio.run(arun(pipe, "warm up", cache=False, environ={"K": KEY}))  # connections, imports
            result = asyncio.run(arun(pipe, "Why is the sky blue?", cache=False, environ={"K": KEY}))
            assert result.status == "ok", result.to_json()
            rows.append((name, result.elapsed_s, critical_path(pipe.graph, latency)))
    return rows


# --- 2. overhead against raw httpx -----------------------------------------------------------------

LITE = """
provider fake = openai {{ base_url = "{url}", api_key = env("K"), retries = 0 }}
layer first = propose [fake:"a", fake:"b", fake:"c"]
node final = aggregate fake:"agg" <- first
"""


async def ours(url: str, queries: list[str], bound: int, cache_dir: str | None) -> float:
    pipe = loads(LITE.format(url=url))
    t0 = time.perf_counter()
    async with Session(pipe, concurrency=bound, cache=cache_dir is not None, cache_dir=cache_dir,
                       environ={"K": KEY}) as session:
        results = await asyncio.gather(*(session.run(q) for q in queries))
    assert all(r.status == "ok" for r in results)
    return time.perf_counter() - t0


async def raw(url: str, queries: list[str], bound: int) -> float:
    """The same requests, dependency for dependency, with nothing but httpx and a semaphore."""
    sem = asyncio.Semaphore(bound)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=120) as client:
        async def call(model: str, messages: list[dict], stream: bool = False) -> str:
            body = {"model": model, "messages": messages, "temperature": 0.7, "max_tokens": 512}
            async with sem:
                if not stream:
                    r = await client.post("/chat/completions", json=body)
                    return r.json()["choices"][0]["message"]["content"]
                parts = []
                body.update(stream=True, stream_options={"include_usage": True})
                async with client.stream("POST", "/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            choices = json.loads(line[6:]).get("choices") or [{}]
                            parts.append(choices[0].get("delta", {}).get("content") or "")
                return "".join(parts)

        async def one(q: str) -> str:
            conv = [{"role": "user", "content": q}]
            refs = await asyncio.gather(*(call(m, conv) for m in ("a", "b", "c")))
            return await call("agg", build_messages(conv, refs=refs), stream=True)

        await asyncio.gather(*(one(q) for q in queries))
    return time.perf_counter() - t0


def bench_overhead(calls: int, bound: int, latency: float) -> dict[str, float]:
    queries = [f"question number {i}" for i in range(calls // 4)]
    with Server({}, latency) as server:
        asyncio.run(raw(server.url, queries[:50], bound))  # warm both paths
        asyncio.run(ours(server.url, queries[:50], bound, None))
        t_raw = asyncio.run(raw(server.url, queries, bound))
        t_ours = asyncio.run(ours(server.url, queries, bound, None))
        with tempfile.TemporaryDirectory() as d:
            t_cached_write = asyncio.run(ours(server.url, queries, bound, d))
    n = len(queries) * 4
    return {"calls": n, "raw_s": t_raw, "ours_s": t_ours, "ours_with_cache_writes_s": t_cached_write}


async def scheduler_only(calls: int, bound: int) -> float:
    """Seconds per call spent by the runner itself: an in-process provider that answers at once."""
    from moa_dsl.providers.base import Completion

    class Instant:
        kind, endpoint, name, max_concurrency = "openai", "http://instant.invalid/v1", "fake", None

        async def complete(self, req, *, on_token=None, emit=None):
            if emit:
                emit("request_sent", {"attempt": 1})
            await asyncio.sleep(0)
            if on_token:
                on_token("ok")
            return Completion(text="ok", prompt_tokens=1, completion_tokens=1)

        async def aclose(self):
            pass

    class Pool:
        def check_keys(self, names):
            pass

        def get(self, name):
            return Instant()

        async def aclose(self):
            pass

    pipe = loads(LITE.format(url="http://instant.invalid/v1"))
    t0 = time.perf_counter()
    async with Session(pipe, concurrency=bound, cache=False, pool=Pool()) as session:
        await asyncio.gather(*(session.run(f"q{i}") for i in range(calls // 4)))
    return (time.perf_counter() - t0) / (calls // 4 * 4)


# --- 3. cached over uncached -------------------------------------------------------------------------

def bench_cached(latency: float) -> tuple[float, float]:
    body, units = DAGS["moa-paper-uneven"]
    with Server({m: u * latency for m, u in units.items()}, latency) as server, \
            tempfile.TemporaryDirectory() as d:
        pipe = loads(f'provider fake = openai {{ base_url = "{server.url}", api_key = env("K") }}\n' + body)
        cold = asyncio.run(arun(pipe, "cache me", cache_dir=d, environ={"K": KEY}))
        warm = asyncio.run(arun(pipe, "cache me", cache_dir=d, environ={"K": KEY}))
        assert warm.usage.calls == 0 and warm.output == cold.output
        return cold.elapsed_s, warm.elapsed_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.2, help="seconds per latency unit (makespan, cache)")
    p.add_argument("--call-latency", type=float, default=0.05, help="seconds per call (overhead)")
    p.add_argument("--calls", type=int, default=10000)
    p.add_argument("--bound", type=int, default=256)
    args = p.parse_args()
    os.environ.setdefault("MOA_CACHE_DIR", tempfile.mkdtemp())
    print("1. makespan / critical path   [goal <= 1.05]")
    for name, wall, cp in bench_makespan(args.latency):
        print(f"   {name:<18} {wall:6.3f}s / {cp:6.3f}s = {wall / cp:.3f}")
    o = bench_overhead(args.calls, args.bound, args.call_latency)
    print(f"2. ours / raw httpx, {o['calls']} calls at bound {args.bound}   [goal <= 1.3]")
    print(f"   raw {o['raw_s']:.2f}s, ours {o['ours_s']:.2f}s = {o['ours_s'] / o['raw_s']:.3f} "
          f"(with cache writes {o['ours_with_cache_writes_s']:.2f}s = {o['ours_with_cache_writes_s'] / o['raw_s']:.3f})")
    per_call = asyncio.run(scheduler_only(args.calls, args.bound))
    print(f"   the runner alone (in-process provider, {args.calls} calls): {per_call * 1e6:.0f} us per call   [goal < 1 ms]")
    cold, warm = bench_cached(args.latency)
    print(f"3. cached / uncached   [goal <= 0.05]\n   {warm:.4f}s / {cold:.3f}s = {warm / cold:.4f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
