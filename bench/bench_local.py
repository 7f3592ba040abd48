"""Benchmark examples/local.moa on the embedded runtime: wall time against the critical path.

    /work/venv/bin/python bench/bench_local.py [--runs N] [--example PATH] [--query TEXT]

Pulls the built-ins if needed, then runs the example with the response cache off: once cold (the
servers load during the run) and N times warm (servers already up, as in a notebook's later cells).
For each run it prints the wall time, the critical path (the longest dependency chain, weighted by
each node's own call time), their ratio (1.0 = the scheduler adds nothing; the gap is model loading
and contention for the CPU cores), end-to-end tokens/s per model, and the memory of this process
and of its llama.cpp server processes (one per model).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import moa_dsl  # noqa: E402
from moa_dsl.providers.local import registry as models  # noqa: E402

DATA = ROOT / "moa_dsl" / "evaluation" / "datasets" / "alpaca_eval.jsonl"   # shipped with the package


def critical_path(graph: nx.DiGraph, result) -> tuple[float, list[str]]:
    """Longest chain of node call times through the DAG (what no scheduler can beat)."""
    best: dict[str, tuple[float, list[str]]] = {}
    for name in nx.topological_sort(graph):
        node = result.nodes.get(name)
        own = (node.latency_s or 0.0) if node else 0.0
        before = max((best[p] for p in graph.predecessors(name) if p in best), default=(0.0, []))
        best[name] = (before[0] + own, before[1] + [name])
    return best[result.output_node]


def _rss_mb(pid: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb() -> tuple[float, float]:
    """(RSS of this process, RSS of its llama.cpp server processes) in MB, now."""
    from moa_dsl.providers.local import llamacpp as local

    servers = [slot.server.proc.pid for slot in list(local._servers.values())
               if slot.server is not None and slot.server.alive()]
    return _rss_mb("self"), sum(_rss_mb(str(pid)) for pid in servers)


def report(label: str, pipe, result, wall: float) -> None:
    crit, chain = critical_path(pipe.graph, result)
    per_model: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for node in result.nodes.values():
        per_model[node.model][0] += node.completion_tokens
        per_model[node.model][1] += node.latency_s or 0.0
    own, servers = rss_mb()
    print(f"\n[{label}] status {result.status}, wall {wall:.1f} s, critical path {crit:.1f} s "
          f"({' -> '.join(chain)}), wall / critical path = {wall / crit:.2f}")
    for name, node in result.nodes.items():
        print(f"  {name:<20} {node.status:<7} {node.completion_tokens:>4} tok  call {node.latency_s or 0:5.1f} s  "
              f"[{node.started_s or 0:5.1f} .. {node.finished_s or 0:5.1f}]")
    for model, (tokens, seconds) in per_model.items():
        rate = tokens / seconds if seconds else 0.0
        print(f"  {model:<20} {rate:6.1f} tokens/s end to end ({tokens} tokens in {seconds:.1f} s of calls)")
    print(f"  memory: RSS {own:.0f} MB this process + {servers:.0f} MB its llama.cpp server processes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--example", default=str(ROOT / "examples" / "local.moa"))
    ap.add_argument("--runs", type=int, default=2, help="warm runs after the cold one")
    ap.add_argument("--query", help="default: the first AlpacaEval instruction")
    args = ap.parse_args()
    query = args.query or json.loads(DATA.read_text().splitlines()[0])["instruction"]

    t = time.perf_counter()
    models.pull(list(models.BUILTINS), progress=models.stderr_progress())
    print(f"pull (no-op when present): {time.perf_counter() - t:.1f} s")
    pipe = moa_dsl.load(args.example)
    print(f"query: {query[:100]!r}")
    for i in range(args.runs + 1):
        t = time.perf_counter()
        result = pipe.run(query, cache=False)
        report("cold: servers load during the run" if i == 0 else f"warm run {i}", pipe, result,
               time.perf_counter() - t)
    print(f"\nanswer:\n{result.output}")


if __name__ == "__main__":
    main()
