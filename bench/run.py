"""One table of ratios against the physical limits, all measured in this run, on loopback only.

    python -m bench [--quick] [--json PATH] [--profile]

Starts its own FakeLLMServer in a child process (127.0.0.1, so it does not share our GIL) and
measures, each against what no orchestrator could beat (bench/README.md says what each row means):

  makespan / critical path       ours, and a per-layer barrier like the reference implementation
  first token / (critical path to the output's start + server time to first token)
  ours / raw httpx               the same N calls at the same bound, httpx on the same transport
  ours / aiohttp alone           1,001 zero-latency calls at bound 64, best of 5 each
  cached / uncached, cache hits per second
  quorum: time to the output with quorum / without, one proposer 10x slower
  agreement: calls with `agree` / without, proposers agreeing on half the items
  moa check time and peak memory for 300 / 3,000 / 30,000 nodes
  AlpacaEval batch (805 prompts) through MoA-Lite: ideal time / ours
  moa serve / the same topology in-process, at 1, 16 and 128 concurrent clients
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "moa_dsl" / "evaluation" / "datasets"   # the shipped datasets
if str(ROOT) not in sys.path:   # `python bench/run.py` from anywhere
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import networkx as nx  # noqa: E402

from bench import bench_check, bench_ops, bench_run, bench_serve  # noqa: E402
from moa_dsl import loads  # noqa: E402
from moa_dsl.config import REFERENCE_PROMPT  # noqa: E402
from moa_dsl.config import request_params  # noqa: E402
from moa_dsl.runtime.messages import build_messages, normalize_query  # noqa: E402
from moa_dsl.providers.base import CallRequest  # noqa: E402
from moa_dsl.providers.transport import MAX_CONNECTIONS, AiohttpTransport  # noqa: E402
from moa_dsl.providers.pool import ProviderPool  # noqa: E402
from moa_dsl.runtime.scheduler import Session, arun  # noqa: E402

KEY = "sk-bench-dummy"
ENV = {"K": KEY}

# --- the server ------------------------------------------------------------------------------------

_SERVER = """
import json, sys, time
from moa_dsl.testing import FakeLLMServer
cfg = json.loads(sys.argv[1])
with FakeLLMServer(latency=cfg["latency"], default_latency=cfg["default"], token_delay=cfg["token_delay"],
                   record=False) as s:
    print(s.url, flush=True)
    sys.stdin.read()
    print(json.dumps({"max_in_flight": s.max_in_flight, "cpu_s": time.process_time()}), flush=True)
"""


class Server:
    """FakeLLMServer in a child process; `stats` (max_in_flight, the server's CPU seconds) after exit."""

    def __init__(self, latency: dict[str, float] | None = None, default: float = 0.05, token_delay: float = 0.0):
        cfg = json.dumps({"latency": latency or {}, "default": default, "token_delay": token_delay})
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, cfg], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.proc.kill()
            raise RuntimeError("the fake server did not start")
        self.stats: dict[str, Any] = {}

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=30)
        self.stats = json.loads(line) if line.strip() else {}


# --- the table -------------------------------------------------------------------------------------

@dataclass
class Row:
    section: str
    name: str
    measured: str          # the raw numbers, human-readable
    ratio: float | None    # the number the goal judges (a ratio, or microseconds, or seconds)
    limit: str             # the physical limit of `ratio`
    goal: str              # e.g. "<= 1.03"; "" when the row is for comparison only
    ok: bool | None = None

    def verdict(self) -> str:
        return "" if self.ok is None else ("pass" if self.ok else "MISS")


def judge(value: float, goal: str) -> bool:
    op, bound = goal.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def row(section: str, name: str, measured: str, ratio: float | None, limit: str, goal: str = "") -> Row:
    ok = judge(ratio, goal) if goal and ratio is not None else None
    return Row(section, name, measured, ratio, limit, goal, ok)


def print_table(rows: list[Row], out: Any = sys.stdout) -> None:
    head = ("section", "row", "measured", "value", "limit", "goal", "")
    cells = [head] + [(r.section, r.name, r.measured, "" if r.ratio is None else f"{r.ratio:.3f}",
                       r.limit, r.goal, r.verdict()) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for i, c in enumerate(cells):
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)


# --- 1. makespan and first token -------------------------------------------------------------------

def fake_pipe(url: str, body: str, retries: int = 0):
    return loads(f'provider fake = openai {{ base_url = "{url}", api_key = env("K"), retries = {retries} }}\n'
                 + body)


def path_to_start(graph: nx.DiGraph, latency: dict[str, float], node: str) -> float:
    """The longest chain of latencies that must finish before `node` can start."""
    longest: dict[str, float] = {}
    for n in nx.topological_sort(graph):
        longest[n] = latency[graph.nodes[n]["model"]] + max((longest[p] for p in graph.predecessors(n)),
                                                             default=0.0)
    return max((longest[p] for p in graph.predecessors(node)), default=0.0)


async def barrier_run(pipe: Any, query: str) -> float:
    """The reference implementation's schedule: a generation starts only when the previous one has
    finished (asyncio.gather per layer), through the same provider code as ours."""
    graph = pipe.graph
    pool = ProviderPool(graph.graph["providers"], environ=ENV)
    output, conversation = graph.graph["output"], normalize_query(query)
    texts: dict[str, str] = {}

    async def call(n: str) -> None:
        a = graph.nodes[n]
        refs = [texts[i] for i in a["inputs"]] if a["role"] == "aggregate" else None
        messages = build_messages(conversation, system=a["params"].get("system"), refs=refs,
                                  prompt=a["params"].get("prompt"))
        req = CallRequest(node=n, model=a["model"], messages=messages, params=request_params(a["params"]),
                          stream=n == output, retries=0)
        texts[n] = (await pool.get(a["provider"]).complete(req, on_token=(lambda t: None))).text

    try:
        t0 = time.perf_counter()
        for generation in nx.topological_generations(graph):
            await asyncio.gather(*(call(n) for n in generation))
        return time.perf_counter() - t0
    finally:
        await pool.aclose()


async def first_token(pipe: Any, query: str) -> tuple[float, float]:
    """(seconds to the output node's first token, makespan), both from the run's own clock."""
    tokens: list[float] = []

    def on_event(e: Any) -> None:
        if e.kind == "token" and e.data.get("text") and not tokens:
            tokens.append(e.t)

    result = await arun(pipe, query, cache=False, environ=ENV, on_event=on_event)
    if result.status != "ok" or not tokens:
        raise RuntimeError(f"the run failed: {result.summary()}")
    return tokens[0], result.elapsed_s


def bench_dags(unit: float, token_delay: float) -> list[Row]:
    rows = []
    for name, (body, units) in bench_run.DAGS.items():
        latency = {m: u * unit for m, u in units.items()}
        with Server(latency, unit, token_delay) as server:
            pipe = fake_pipe(server.url, body)
            graph = pipe.graph
            asyncio.run(arun(pipe, "warm up", cache=False, environ=ENV))   # imports, first connections
            ours = asyncio.run(arun(pipe, "Why is the sky blue?", cache=False, environ=ENV))
            barrier = asyncio.run(barrier_run(pipe, "Why is the sky blue?"))
            ttft, _ = asyncio.run(first_token(pipe, "Why do leaves fall?"))
        if ours.status != "ok":
            raise RuntimeError(f"{name}: {ours.summary()}")
        output = graph.graph["output"]
        tail = stream_tail(token_delay, ours.nodes[output].completion_tokens)   # the output node's own
        cp = bench_run.critical_path(graph, latency) + tail
        # The server sends the role chunk at its latency, then the first token one token_delay later.
        ideal_ttft = path_to_start(graph, latency, output) + latency[graph.nodes[output]["model"]] + token_delay
        rows += [
            row("makespan", f"{name}: ours", f"{ours.elapsed_s:.3f}s / {cp:.3f}s", ours.elapsed_s / cp,
                "1.0", "<= 1.03"),
            row("makespan", f"{name}: layer barrier", f"{barrier:.3f}s / {cp:.3f}s", barrier / cp, "1.0"),
            row("first token", name, f"{ttft:.3f}s / {ideal_ttft:.3f}s", ttft / ideal_ttft, "1.0", "<= 1.03"),
        ]
    return rows


def stream_tail(token_delay: float, tokens: int) -> float:
    """How long the output's stream lasts after its latency, as the fake server sends it: it sleeps
    `token_delay` after every event it writes (moa_dsl/testing.py: `_stream`), and an OpenAI stream
    is the role chunk, `tokens` tokens, the finish chunk, the usage chunk and `data: [DONE]`, then the
    chunked body's terminator. The response ends -- and a client that keeps its connection alive can
    only be done -- after tokens + 4 delays (the usage a run reports arrives in the fourth-to-last)."""
    return token_delay * (tokens + 4)


# --- 2. ours over raw httpx ------------------------------------------------------------------------

ONE_CALL = 'node final = propose fake:"m"\n'


def wide(n: int) -> str:
    """A layer of n proposers (samples are capped at 1,000 a member: m0, m1, ... share them out)."""
    members = ", ".join(f'fake:"m{i}" * {min(1000, n - i * 1000)}' for i in range(-(-n // 1000)))
    return f"layer wide = propose [{members}]\nnode final = aggregate fake:\"agg\" <- wide\n"


async def ours_wide(url: str, n: int, bound: int) -> float:
    """N calls through us: one run of a layer of N - 1 proposers and the aggregator reading them all."""
    pipe = fake_pipe(url, wide(n - 1))
    result = await arun(pipe, "Why is the sky blue?", concurrency=bound, cache=False, environ=ENV)
    if result.status != "ok" or result.usage.calls != n:
        raise RuntimeError(f"the wide run failed: {result.summary()}")
    return result.elapsed_s


def raw_client(httpcore: bool = False) -> httpx.AsyncClient:
    """A plain httpx client: on the providers' transport (AiohttpTransport, same bound, trust_env off as
    for a loopback provider), or on httpx's default transport (httpcore) for comparison."""
    transport = None if httpcore else AiohttpTransport(trust_env=False, max_connections=MAX_CONNECTIONS)
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    return httpx.AsyncClient(transport=transport, limits=limits, headers={"authorization": f"Bearer {KEY}"},
                             trust_env=False)


def _proposal(i: int) -> dict[str, Any]:
    return {"model": f"m{i // 1000}", "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "temperature": 0.7, "max_tokens": 512}


def _aggregation(refs: list[str]) -> dict[str, Any]:
    conversation = [{"role": "user", "content": "Why is the sky blue?"}]
    return {"model": "agg", "messages": build_messages(conversation, refs=refs, prompt=REFERENCE_PROMPT),
            "temperature": 0.7, "max_tokens": 512, "stream": True, "stream_options": {"include_usage": True}}


def _delta(line: str) -> str:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return ""
    return "".join((c.get("delta") or {}).get("content") or "" for c in json.loads(line[6:]).get("choices") or ())


async def raw_wide(url: str, n: int, bound: int, *, httpcore: bool = False) -> float:
    """The same N requests, dependency for dependency, with httpx and a semaphore, nothing else: all
    proposers under the bound, then the streaming aggregator. `httpcore`: httpx's default transport."""
    client = raw_client(httpcore)
    target, timeout = url + "/chat/completions", httpx.Timeout(120.0)
    sem = asyncio.Semaphore(bound)

    async def propose(i: int) -> str:
        async with sem:
            response = await client.post(target, json=_proposal(i), timeout=timeout)
        response.raise_for_status()
        return json.loads(response.content)["choices"][0]["message"]["content"]

    async def aggregate(refs: list[str]) -> str:
        async with sem:
            async with client.stream("POST", target, json=_aggregation(refs), timeout=timeout) as response:
                response.raise_for_status()
                return "".join([_delta(line) async for line in response.aiter_lines()])

    try:
        t0 = time.perf_counter()
        await aggregate(await asyncio.gather(*(propose(i) for i in range(n - 1))))
        return time.perf_counter() - t0
    finally:
        await client.aclose()


async def aiohttp_wide(url: str, n: int, bound: int) -> float:
    """The same N requests with aiohttp alone (one session, same bound): the floor under our transport."""
    target = url + "/chat/completions"
    sem = asyncio.Semaphore(bound)
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, headers={"authorization": f"Bearer {KEY}"},
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        async def propose(i: int) -> str:
            async with sem:
                async with session.post(target, json=_proposal(i)) as response:
                    response.raise_for_status()
                    data = await response.read()
            return json.loads(data)["choices"][0]["message"]["content"]

        async def aggregate(refs: list[str]) -> str:
            async with sem:
                async with session.post(target, json=_aggregation(refs)) as response:
                    response.raise_for_status()
                    return "".join([_delta(line.decode().rstrip("\r\n")) async for line in response.content])

        t0 = time.perf_counter()
        await aggregate(await asyncio.gather(*(propose(i) for i in range(n - 1))))
        return time.perf_counter() - t0


def bench_over_aiohttp(n: int, bound: int, runs: int) -> list[Row]:
    """Our whole run (scheduler, events, providers, httpx over AiohttpTransport) over aiohttp alone, the
    same N zero-latency calls to the same server, best of `runs` each, alternated."""
    ours: list[float] = []
    floor: list[float] = []
    with Server({}, 0.0) as server:
        asyncio.run(aiohttp_wide(server.url, 64, 64))   # imports and the server's first connections
        asyncio.run(ours_wide(server.url, 64, 64))
        for _ in range(runs):
            floor.append(asyncio.run(aiohttp_wide(server.url, n, bound)))
            ours.append(asyncio.run(ours_wide(server.url, n, bound)))
    spread = (f"ours {min(ours):.2f}-{max(ours):.2f}s, aiohttp {min(floor):.2f}-{max(floor):.2f}s over {runs} runs; "
              f"server max in flight {server.stats.get('max_in_flight')}")
    return [row("overhead", f"N={n} bound={bound}, zero latency: ours / aiohttp alone (best of {runs})",
                f"{min(ours):.2f}s / {min(floor):.2f}s; {spread}", min(ours) / min(floor), "1.0", "<= 1.2")]


async def ours_batch(url: str, n: int, bound: int, *, cache_dir: str | None = None) -> float:
    """N one-node runs in one Session sharing the bound (`moa run --input`); for the cache rows."""
    pipe = fake_pipe(url, ONE_CALL)
    t0 = time.perf_counter()
    async with Session(pipe, concurrency=bound, cache=cache_dir is not None, cache_dir=cache_dir,
                       environ=ENV) as session:
        results = await asyncio.gather(*(session.run(f"question {i}") for i in range(n)))
    elapsed = time.perf_counter() - t0
    bad = [r for r in results if r.status != "ok"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {n} runs failed, e.g. {bad[0].summary()}")
    return elapsed


def bench_overhead(grid: list[tuple[int, int]], latency: float) -> list[Row]:
    rows = []
    with Server({}, latency) as server:
        asyncio.run(raw_wide(server.url, 64, 64))      # imports and the server's first connections
        asyncio.run(ours_wide(server.url, 64, 64))
        for k, (n, bound) in enumerate(grid):
            if k == 0:   # what aiohttp saves, at the first grid point only (httpcore is slow)
                t_one = asyncio.run(raw_wide(server.url, n, bound, httpcore=True))
            c0 = time.process_time()
            t_raw = asyncio.run(raw_wide(server.url, n, bound))
            c1 = time.process_time()
            t_ours = asyncio.run(ours_wide(server.url, n, bound))
            c2 = time.process_time()
            ideal = (-(-(n - 1) // bound) + 1) * latency   # full waves of proposers, then the aggregator
            per_call_us = (t_ours - t_raw) / n * 1e6
            rows += [
                row("overhead", f"N={n} bound={bound}: ours / raw httpx",
                    f"{t_ours:.2f}s / {t_raw:.2f}s (ideal {ideal:.2f}s)", t_ours / t_raw, "1.0", "<= 1.2"),
                row("overhead", f"N={n} bound={bound}: our CPU / raw CPU", f"{c2 - c1:.2f}s / {c1 - c0:.2f}s",
                    (c2 - c1) / (c1 - c0), "1.0"),
                row("overhead", f"N={n} bound={bound}: us per call", f"({t_ours:.2f}-{t_raw:.2f})s / {n}",
                    per_call_us, "0", "<= 1000"),
                row("overhead", f"N={n} bound={bound}: raw httpx / ideal", f"{t_raw:.2f}s / {ideal:.2f}s",
                    t_raw / ideal, "1.0"),
            ]
            if k == 0:
                rows += [
                    row("overhead", f"N={n} bound={bound}: raw httpx on httpcore (its default transport) / ideal",
                        f"{t_one:.2f}s / {ideal:.2f}s", t_one / ideal, "1.0"),
                ]
    return rows


# --- 3. the cache ----------------------------------------------------------------------------------

def bench_cache(unit: float, hits: int) -> list[Row]:
    cold, warm = bench_run.bench_cached(unit)
    with Server({}, 0.01) as server, tempfile.TemporaryDirectory() as d:
        asyncio.run(ours_batch(server.url, hits, 64, cache_dir=d))      # fills the cache
        t_hits = asyncio.run(ours_batch(server.url, hits, 64, cache_dir=d))
    return [
        row("cache", "fully cached / uncached (moa-paper-uneven)", f"{warm * 1e3:.1f}ms / {cold:.3f}s",
            warm / cold, "0", "<= 0.02"),
        row("cache", f"cache hits per second ({hits} one-node runs, one Session)",
            f"{hits} hits in {t_hits:.2f}s", hits / t_hits, "-"),
    ]


# --- 4. moa check ----------------------------------------------------------------------------------

def bench_check_sizes(sizes: list[int]) -> list[Row]:
    moa_check_warm = bench_check.topology(20)
    loads(moa_check_warm)   # the grammar's load and imports are not part of the measure
    rows = []
    for size in sizes:
        elapsed, peak, nodes = bench_check.measure(bench_check.topology(size))
        goal = "<= 10" if size >= 30000 else ""
        rows.append(row("moa check", f"{nodes} nodes (layers shape)", f"peak {peak:.0f} MiB", elapsed, "-",
                        goal))
    return rows


# --- 5. the AlpacaEval batch through MoA-Lite ------------------------------------------------------

# Per-model seconds to first byte: unequal on purpose (a batch must not wait for its slowest model).
LITE_LATENCY = {
    "Qwen/Qwen1.5-110B-Chat": 1.5, "Qwen/Qwen1.5-72B-Chat": 1.0, "microsoft/WizardLM-2-8x22B": 2.0,
    "meta-llama/Llama-3-70b-chat-hf": 1.0, "mistralai/Mixtral-8x22B-Instruct-v0.1": 1.25,
    "databricks/dbrx-instruct": 0.75,
}


def lite_topology(workdir: Path, url: str) -> Path:
    """examples/moa-lite.moa with `together` pointed at the loopback server (a provider statement
    of a built-in's name replaces it), its include copied beside it."""
    (workdir / "lib").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "examples" / "lib" / "open-models.moa", workdir / "lib" / "open-models.moa")
    text = (ROOT / "examples" / "moa-lite.moa").read_text(encoding="utf-8")
    path = workdir / "moa-lite.moa"
    path.write_text(f'provider together = openai {{ base_url = "{url}", api_key = env("TOGETHER_API_KEY") }}\n'
                    + text, encoding="utf-8")
    return path


def bench_batch(unit: float, limit: int | None, bound: int, profile: bool) -> tuple[list[Row], str]:
    from moa_dsl.cli import main as moa

    lines = (DATA / "alpaca_eval.jsonl").read_text(encoding="utf-8").splitlines()
    lines = [ln for ln in lines if ln.strip()][:limit]
    latency = {m: u * unit for m, u in LITE_LATENCY.items()}
    hot = ""
    with tempfile.TemporaryDirectory() as d, Server(latency, unit) as server:
        work = Path(d)
        topology = lite_topology(work, server.url)
        (work / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.environ["TOGETHER_API_KEY"] = KEY
        argv = ["run", str(topology), "--input", str(work / "in.jsonl"), "--output", str(work / "out.jsonl"),
                "--concurrency", str(bound), "--no-cache", "--quiet"]
        profiler = cProfile.Profile() if profile else None
        t0, c0 = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        code = moa(argv)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out = [json.loads(x) for x in (work / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    if code != 0 or len(out) != len(lines) or any(r["status"] != "ok" for r in out):
        raise RuntimeError(f"the batch failed (exit {code})")
    calls = sum(r["usage"]["calls"] for r in out)
    pipe_graph_models = list(latency.values())
    per_item = sum(latency[m] for m in latency) + latency["Qwen/Qwen1.5-72B-Chat"]   # six proposers + qwen72
    critical = max(pipe_graph_models) + latency["Qwen/Qwen1.5-72B-Chat"]
    ideal = max(per_item * len(out) / bound, critical)
    if profiler:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(12)
        hot = buf.getvalue()
    rows = [row("batch", f"{len(out)} AlpacaEval prompts, MoA-Lite, concurrency {bound}: ideal / ours",
                f"{calls} calls; ideal {ideal:.2f}s, ours {wall:.2f}s; client CPU {cpu / calls * 1e3:.2f} ms "
                f"a call; server max in flight {server.stats.get('max_in_flight')}", ideal / wall, "1.0",
                ">= 0.95")]
    return rows, hot


# --- main ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    unit: float            # latency unit of the makespan DAGs (seconds)
    token_delay: float
    call_latency: float    # per call, overhead rows
    grid: tuple[tuple[int, int], ...]
    cache_hits: int
    check_sizes: tuple[int, ...]
    batch_unit: float
    batch_limit: int | None
    aiohttp_runs: int      # best of this many, ours and aiohttp alone each


FULL = Plan(0.2, 0.01, 0.1, ((1000, 64), (1000, 256), (10000, 256)), 2000, (300, 3000, 30000), 0.1, None, 5)
QUICK = Plan(0.05, 0.005, 0.05, ((200, 64),), 200, (300, 3000), 0.05, 100, 2)


def bench_quorum(unit: float) -> list[Row]:
    m = bench_ops.measure_quorum(lambda latency, default: Server(latency, default), unit)
    return [row("quorum", "time to output: quorum = 3 of 4 / no quorum (one proposer 10x slower)",
                f"{m['quorum_s']:.3f}s vs {m['plain_s']:.3f}s; expected {m['expected']:.3f}",
                m["ratio"], f"{m['expected']:.3f}", f"<= {m['expected'] * 1.15:.3f}")]


def bench_agreement(items: int) -> list[Row]:
    m = bench_ops.measure_agreement(items)
    return [row("agreement", "calls: agree = true / without (proposers agree on half the items)",
                f"{m['agree_calls']} vs {m['plain_calls']} calls over {items} items",
                m["ratio"], f"{m['expected']:.3f}", f"<= {m['expected'] + 1e-9:.3f}")]


def _loadavg() -> str:
    """The machine is shared: other processes' load is printed beside the numbers."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine() -> dict[str, Any]:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 2**20   # GiB
    except (OSError, ValueError, IndexError):
        pass
    return {"loadavg_before": _loadavg(), "cpus": os.cpu_count(), "memory_gib": mem, "python": sys.version.split()[0],
            "date": datetime.date.today().isoformat()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a fast smoke version (about a minute)")
    ap.add_argument("--json", metavar="PATH", help="also save the rows as JSON")
    ap.add_argument("--profile", action="store_true", help="cProfile the batch row and print its hot spots")
    ap.add_argument("--only", metavar="SECTIONS",
                    help="comma list: dags,overhead,cache,quorum,agreement,batch,serve,check")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    only = (set(args.only.split(",")) if args.only
            else {"dags", "overhead", "cache", "quorum", "agreement", "batch", "serve", "check"})
    os.environ.setdefault("MOA_CACHE_DIR", tempfile.mkdtemp(prefix="moa-bench-"))
    # `check` runs last: parsing 30,000 nodes leaves glibc's heap fragmented, and a batch run after it
    # in the same process measured 0.93 of ideal instead of 0.96 (malloc_trim(0) restored it). In
    # use, `moa check` and a batch are separate processes.
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("dags", lambda: bench_dags(plan.unit, plan.token_delay)),
        ("overhead", lambda: bench_overhead(list(plan.grid), plan.call_latency)
         + bench_over_aiohttp(1001, 64, plan.aiohttp_runs)),
        ("cache", lambda: bench_cache(plan.unit, plan.cache_hits)),
        ("quorum", lambda: bench_quorum(plan.unit)),
        ("agreement", lambda: bench_agreement(40)),
        ("batch", lambda: bench_batch(plan.batch_unit, plan.batch_limit, 64, args.profile)),
        ("serve", lambda: bench_serve.bench_serve(quick=args.quick)),
        ("check", lambda: bench_check_sizes(list(plan.check_sizes))),
    ]
    rows: list[Row] = []
    hot = ""
    info = machine()
    started = time.perf_counter()
    for name, step in steps:
        if name not in only:
            continue
        t0 = time.perf_counter()
        got = step()
        if name == "batch":
            got, hot = got
        rows += got
        print(f"[{name}: {time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)
    info.update(loadavg_after=_loadavg())
    print(f"\nmoa-dsl bench ({'quick' if args.quick else 'full'}), {info['date']}, {info['cpus']} cores, "
          f"{info['memory_gib']} GiB, Python {info['python']}, {time.perf_counter() - started:.0f}s in all; "
          f"load average {info['loadavg_before']} before, {info['loadavg_after']} after\n")
    print_table(rows)
    if hot:
        print("\nbatch hot spots (cProfile, by own time):\n" + hot)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "quick": args.quick,
                                               "rows": [asdict(r) for r in rows]}, indent=2) + "\n",
                                   encoding="utf-8")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
