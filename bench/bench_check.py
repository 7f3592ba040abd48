"""How `moa check` (load + validate) scales with the topology's size.

    python bench/bench_check.py [--sizes 300,3000,10000,30000]

Generates two shapes: `layers`, layers of width 10 with `* N` samples, each reading the
previous layer whole and one member two layers back (11 edges a node); and `chain`, one
`node` statement per node reading the two before it and one far back. Prints per size: wall time, peak traced memory, and the growth ratio per node against the smallest size
(1.0 = linear). Goal: 3,000 nodes well under 3 s, 30,000 under 10 s.
"""
from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import moa_dsl

WIDTH = 10


def topology(nodes: int) -> str:
    """About `nodes` graph nodes: layers of WIDTH, the first of them proposers."""
    lines = ['model m = together:"Qwen/Qwen2.5-72B-Instruct-Turbo" { price = [1, 1] }',
             'prompt p = "Synthesize."', "defaults { temperature = 0.5, max_tokens = 256 }"]
    layers = max(2, nodes // WIDTH)
    lines.append(f"layer l0 = propose [m * {WIDTH}] {{ seed = 1 }}")
    for i in range(1, layers - 1):
        skip = f", l{i - 2}.m.3" if i >= 2 else ""
        members = f"[m * {WIDTH // 2}, openai:\"gpt-4o-mini\" * {WIDTH // 2}]" if i % 2 else f"[m * {WIDTH}]"
        lines.append(f"layer l{i} = aggregate {members} <- l{i - 1}{skip} {{ prompt = p }}")
    lines.append(f"node final = aggregate m <- l{layers - 2}")
    return "\n".join(lines) + "\n"


def chain(nodes: int) -> str:
    """One statement per node: a long chain where each node reads the previous two and one far back,
    so the parser, not the layer expansion, does most of the work."""
    lines = ['model m = openai:"gpt-4o-mini"', "node n0 = propose m", "node n1 = propose m { seed = 1 }"]
    for i in range(2, nodes - 1):
        far = f", n{i // 2}" if i > 10 else ""
        lines.append(f"node n{i} = aggregate m <- n{i - 1}, n{i - 2}{far} {{ max_tokens = {i % 500 + 1} }}")
    lines.append(f"node final = aggregate m <- n{nodes - 2}")
    return "\n".join(lines) + "\n"


SHAPES = {"layers": topology, "chain": chain}


def measure(text: str) -> tuple[float, float, int]:
    gc.collect()
    start = time.perf_counter()
    pipe = moa_dsl.loads(text)
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    moa_dsl.loads(text)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / 2**20, len(pipe.graph)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="300,3000,10000,30000")
    sizes = [int(s) for s in ap.parse_args().sizes.split(",")]
    moa_dsl.loads(topology(20))  # grammar load and imports are not part of the measure
    print(f"{'shape':>7} {'nodes':>7} {'lines':>6} {'time_s':>8} {'peak_MiB':>9} {'us/node':>8} {'growth':>7}")
    for shape, make in SHAPES.items():
        base = None
        for size in sizes:
            text = make(size)
            elapsed, peak, n = measure(text)
            per_node = elapsed / n
            base = base or per_node
            print(f"{shape:>7} {n:>7} {text.count(chr(10)):>6} {elapsed:>8.3f} {peak:>9.1f} "
                  f"{per_node * 1e6:>8.1f} {per_node / base:>7.2f}")


if __name__ == "__main__":
    main()
