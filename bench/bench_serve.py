"""What `moa serve` adds over calling the same topology in-process, at 1, 16 and 128 concurrent clients.

    python -m bench --only serve          # a section of the main table (bench/run.py)
    python bench/bench_serve.py [--quick] # this section alone

The topology is two proposers and an aggregator, every call 50 ms at the fake server (a child
process, loopback). In-process: `C` clients, each running requests one after another through one
`Session` (`await session.run(query)`). Served: the same `C` clients as httpx coroutines posting to
a `moa serve` subprocess (`/v1/chat/completions`, not streamed) on the same fake server, with httpx
on the providers' `AiohttpTransport` (the in-process runs use it too). Both with
the cache off and a bound on calls in flight high enough (512) that the bound is not what is
measured. Per point: mean request latency (served / in-process: the added latency, goal < 1.10 at
16 clients) and requests per second (served / in-process). All in one run, on the same cores: the
client, the server and the fake server share them, as a real deployment on one machine would.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

LATENCY = 0.05
BOUND = 512
KEY = "sk-bench-dummy"
POINTS_FULL = ((1, 40), (16, 320), (128, 1024))   # (clients, requests)
POINTS_QUICK = ((1, 10), (16, 64), (128, 256))


def topology(url: str) -> str:
    return (f'provider fake = openai {{ base_url = "{url}", api_key = env("BENCH_FAKE_KEY"), retries = 0 }}\n'
            'node a = propose fake:"model-a"\nnode b = propose fake:"model-b"\n'
            'node agg = aggregate fake:"model-agg" <- a, b\n')


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of `pid` (from /proc: Linux)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _clients(clients: int, requests: int, one: Any, cpu: Any) -> tuple[float, float, float]:
    """(wall seconds, mean latency, CPU seconds of `cpu()`) of `requests` requests made by `clients`
    sequential workers."""
    latencies: list[float] = []
    queue = iter(range(requests))

    async def worker() -> None:
        for i in queue:
            t0 = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - t0)

    t0, c0 = time.perf_counter(), cpu()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return wall, sum(latencies) / len(latencies), cpu() - c0


async def in_process(url: str, points: tuple[tuple[int, int], ...], tag: str) -> dict[int, tuple[float, ...]]:
    from moa_dsl import loads
    from moa_dsl.runtime import Session

    pipe = loads(topology(url), "bench.moa")
    out = {}
    async with Session(pipe, concurrency=BOUND, cache=False, environ={"BENCH_FAKE_KEY": KEY}) as session:
        async def one(i: int, prefix: str = "") -> None:
            result = await session.run(f"{prefix}question {i} {tag}")
            if not result.ok:
                raise RuntimeError(f"in-process run failed: {result.summary()}")

        await one(0, "warm-up")
        for clients, requests in points:
            out[clients] = await _clients(clients, requests, lambda i, c=clients: one(i, f"c{c} "), process_cpu)
    return out


async def served(base: str, pid: int, points: tuple[tuple[int, int], ...], tag: str) -> dict[int, tuple[float, ...]]:
    from moa_dsl.providers.transport import AiohttpTransport

    # The client is httpx on the providers' own transport: httpcore's pool costs milliseconds of CPU a
    # request at 128 connections (bench/README.md), which would be measured as the server's.
    transport = AiohttpTransport(max_connections=1024, trust_env=False)
    out = {}
    async with httpx.AsyncClient(base_url=base, transport=transport, timeout=120, trust_env=False) as http:
        async def one(i: int, prefix: str = "") -> None:
            r = await http.post("/chat/completions", json={
                "model": "bench", "messages": [{"role": "user", "content": f"{prefix}question {i} {tag}"}]})
            if r.status_code != 200:
                raise RuntimeError(f"moa serve answered {r.status_code}: {r.text[:300]}")

        await one(0, "warm-up")
        for clients, requests in points:
            out[clients] = await _clients(clients, requests, lambda i, c=clients: one(i, f"c{c} "),
                                          lambda: process_cpu(pid))
    return out


class ServeProcess:
    def __init__(self, topology_dir: Path):
        env = {**os.environ, "BENCH_FAKE_KEY": KEY,
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "moa_dsl", "serve", str(topology_dir), "--port", "0",
                                      "--no-cache", "--concurrency", str(BOUND), "--max-queue", "4096"],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                                     cwd=ROOT)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(r" on (http://\S+/v1);", line)
            if match:
                self.url = match.group(1)
                break
        else:
            raise RuntimeError(f"moa serve did not start (exit {self.proc.wait()})")
        # Drain its per-request log so the pipe never fills (and count the lines).
        self.lines = 0

        def drain() -> None:
            assert self.proc.stderr is not None
            for _ in self.proc.stderr:
                self.lines += 1

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()

    def close(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self._drain.join(timeout=10)
        return code


def bench_serve(quick: bool = False) -> list[Any]:
    from bench.run import Server, row

    points = POINTS_QUICK if quick else POINTS_FULL
    tag = str(time.time_ns())
    with tempfile.TemporaryDirectory() as d, Server(default=LATENCY) as fake:
        (Path(d) / "bench.moa").write_text(topology(fake.url), encoding="utf-8")
        local = asyncio.run(in_process(fake.url, points, tag))
        server = ServeProcess(Path(d))
        try:
            remote = asyncio.run(served(server.url, server.proc.pid, points, tag))
        finally:
            code = server.close()
    if code != 0:
        raise RuntimeError(f"moa serve exited {code} after SIGTERM")
    rows = []
    for clients, requests in points:
        (lw, ll, lc), (rw, rl, rc) = local[clients], remote[clients]
        goal = "<= 1.10" if clients == 16 else ""
        rows.append(row("serve", f"{clients} clients: served / in-process mean latency",
                        f"{requests} requests, 3 calls of {LATENCY * 1e3:.0f} ms each; in-process {ll * 1e3:.1f} ms, "
                        f"served {rl * 1e3:.1f} ms ({(rl - ll) * 1e3:+.1f} ms)", rl / ll, "1.0", goal))
        rows.append(row("serve", f"{clients} clients: served / in-process requests per second",
                        f"in-process {requests / lw:.1f}/s, served {requests / rw:.1f}/s; CPU a request: "
                        f"in-process {lc / requests * 1e3:.2f} ms, server process {rc / requests * 1e3:.2f} ms",
                        lw / rw, "1.0"))
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench.run import print_table

    ap = argparse.ArgumentParser(prog="bench_serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print_table(bench_serve(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
