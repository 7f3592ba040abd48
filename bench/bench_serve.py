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
client, the server and the fake server share them, as a real deployment on one machine would. The
full run measures every point three times, the two sides interleaved, and keeps each side's best
(the machine is shared: a burst of someone else's load must not land on one side only); the CPU
seconds of the in-process runs and of the server process per request are printed beside them.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
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
POINTS_FULL = ((1, 30), (16, 240), (128, 768))   # (clients, requests)
POINTS_QUICK = ((1, 10), (16, 64), (128, 256))
ROUNDS = 3                                          # full run: best of 3, interleaved


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


async def measure(fake_url: str, base: str, pid: int, points: tuple[tuple[int, int], ...], rounds: int,
                  tag: str) -> dict[tuple[str, int], list[tuple[float, float, float]]]:
    """Every point, in-process then served, `rounds` times over: {(side, clients): [(wall, mean, cpu)]}.
    Interleaved, so a burst of someone else's load on the shared machine hits both sides alike."""
    from moa_dsl import loads
    from moa_dsl.providers.transport import AiohttpTransport
    from moa_dsl.runtime import Session

    pipe = loads(topology(fake_url), "bench.moa")
    # The client is httpx on the providers' own transport (httpcore's pool costs milliseconds of CPU a
    # request at 128 connections, bench/README.md, which would be measured as the server's).
    transport = AiohttpTransport(max_connections=1024, trust_env=False)
    out: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    async with Session(pipe, concurrency=BOUND, cache=False, environ={"BENCH_FAKE_KEY": KEY}) as session, \
            httpx.AsyncClient(base_url=base, transport=transport, timeout=120, trust_env=False) as http:
        async def local(query: str) -> None:
            result = await session.run(query)
            if not result.ok:
                raise RuntimeError(f"in-process run failed: {result.summary()}")

        async def remote(query: str) -> None:
            r = await http.post("/chat/completions", json={
                "model": "bench", "messages": [{"role": "user", "content": query}]})
            if r.status_code != 200:
                raise RuntimeError(f"moa serve answered {r.status_code}: {r.text[:300]}")

        await local(f"warm-up {tag}")
        await remote(f"warm-up {tag}")
        sides = (("in-process", local, process_cpu), ("served", remote, lambda: process_cpu(pid)))
        for n in range(rounds):
            for clients, requests in points:
                for side, one, cpu in sides:
                    prefix = f"{side} r{n} c{clients}"
                    got = await _clients(clients, requests,
                                         lambda i, f=one, p=prefix: f(f"{p} question {i} {tag}"), cpu)
                    out.setdefault((side, clients), []).append(got)
                    print(f"[serve: round {n + 1}, {clients} clients, {side}: mean {got[1] * 1e3:.1f} ms, "
                          f"{requests / got[0]:.1f}/s]", file=sys.stderr, flush=True)
    return out


class ServeProcess:
    """`moa serve` in a child process. Its stderr (a line per request) goes to a file, not a pipe: a
    thread here draining a pipe would take the GIL from the measuring client once per request."""

    def __init__(self, topology_dir: Path):
        env = {**os.environ, "BENCH_FAKE_KEY": KEY,
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = topology_dir / "serve.log"
        with open(self.log, "w", encoding="utf-8") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "moa_dsl", "serve", str(topology_dir / "bench.moa"),
                                          "--port", "0", "--no-cache", "--concurrency", str(BOUND),
                                          "--max-queue", "4096"],
                                         stderr=err, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = re.search(r" on (http://\S+/v1);", self.log.read_text(encoding="utf-8"))
            if match:
                self.url = match.group(1)
                return
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError(f"moa serve did not start (exit {self.proc.wait()}): {self.log.read_text()[-2000:]}")

    def close(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=60)


def bench_serve(quick: bool = False) -> list[Any]:
    from bench.run import Server, row

    points = POINTS_QUICK if quick else POINTS_FULL
    rounds = 1 if quick else ROUNDS
    with tempfile.TemporaryDirectory() as d, Server(default=LATENCY) as fake:
        (Path(d) / "bench.moa").write_text(topology(fake.url), encoding="utf-8")
        server = ServeProcess(Path(d))
        try:
            got = asyncio.run(measure(fake.url, server.url, server.proc.pid, points, rounds, str(time.time_ns())))
        finally:
            code = server.close()
    if code != 0:
        raise RuntimeError(f"moa serve exited {code} after SIGTERM")
    rows = []
    for clients, requests in points:
        # Best of the rounds on each side (the lowest mean latency): the least disturbed by other load.
        lw, ll, lc = min(got[("in-process", clients)], key=lambda x: x[1])
        rw, rl, rc = min(got[("served", clients)], key=lambda x: x[1])
        goal = "<= 1.10" if clients == 16 else ""
        best = f"best of {rounds}; " if rounds > 1 else ""
        rows.append(row("serve", f"{clients} clients: served / in-process mean latency",
                        f"{best}{requests} requests, 3 calls of {LATENCY * 1e3:.0f} ms each; in-process "
                        f"{ll * 1e3:.1f} ms, served {rl * 1e3:.1f} ms ({(rl - ll) * 1e3:+.1f} ms)",
                        rl / ll, "1.0", goal))
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
