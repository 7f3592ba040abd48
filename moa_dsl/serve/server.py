"""Start `moa serve`: load and check everything, bind, run uvicorn until SIGTERM/SIGINT, exit 0.

uvicorn does the HTTP and the graceful stop: on SIGTERM or SIGINT it stops accepting, lets the
requests in flight finish (up to `GRACE_S`), then runs the app's lifespan shutdown (the shared
provider clients and the cache are closed). It then re-raises the signal it caught so the process
dies of it; `moa serve` is meant to exit 0 after a clean stop, so the handlers it restores are no-ops.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Sequence

from ..errors import ConfigError
from .app import ServeState, build_app
from .topologies import load_topologies

__all__ = ["GRACE_S", "serve"]

GRACE_S = 30
KEEP_ALIVE_S = 75  # nginx's default
EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def serve(
    paths: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    concurrency: int = 16,
    max_queue: int = 256,
    cache_dir: str | None = None,
    no_cache: bool = False,
) -> int:
    """`moa serve`'s whole life; returns the exit code. Usage problems raise ConfigError (exit 2)."""
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, not {concurrency}")
    if max_queue < 1:
        raise ConfigError(f"--max-queue must be >= 1, not {max_queue}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0-65535, not {port}")
    api_key = None
    if api_key_env:
        api_key = (os.environ.get(api_key_env) or "").strip()
        if not api_key:
            raise ConfigError(f"--api-key-env {api_key_env}: the variable is not set (or empty) in the environment")
    report = load_topologies(paths)
    for warning in report.warnings:
        print(warning.render(color=sys.stderr.isatty()), file=sys.stderr)
    if report.errors:
        for err in report.errors:
            print(err.render(color=sys.stderr.isatty()), file=sys.stderr)
        print(
            f"moa serve: {len(report.errors)} file{'s' if len(report.errors) != 1 else ''} with errors; not serving",
            file=sys.stderr,
        )
        return EXIT_INVALID
    sock = _listen(host, port)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"moa serve: warning: listening on {host} without --api-key-env: anyone who can reach this port "
            "can run the topologies on your provider keys",
            file=sys.stderr,
        )
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    state = ServeState(
        paths,
        pipes=report.pipes,
        concurrency=concurrency,
        max_queue=max_queue,
        cache=not no_cache,
        cache_dir=cache_dir,
        api_key=api_key,
        listening=f"http://{shown}:{bound[1]}/v1",
    )
    import uvicorn

    # Keep-alive longer than clients keep idle connections (httpx 5 s, aiohttp 15 s): at uvicorn's 5 s
    # default a client reusing a connection the server is just closing gets "Server disconnected" on a
    # POST it must not retry (seen in bench_serve after 10 s of idle).
    config = uvicorn.Config(
        build_app(state),
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACE_S,
        timeout_keep_alive=KEEP_ALIVE_S,
        server_header=False,
        date_header=True,
    )
    server = uvicorn.Server(config)
    with _exit_quietly():
        server.run(sockets=[sock])
    return EXIT_OK if server.started else EXIT_INVALID


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so the real port is known (`--port 0`) before uvicorn starts.

    Created with proto=IPPROTO_TCP on purpose: asyncio sets TCP_NODELAY on accepted connections only
    when the socket says it is TCP (`base_events._set_nodelay` checks `sock.proto`), and
    `socket.create_server` leaves proto 0. Without it a response's head and body wait on the
    client's delayed ACK: ~40 ms a request on a kept-alive connection (measured, bench_serve)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class _exit_quietly:
    """uvicorn restores the handlers it found and re-raises the caught SIGTERM/SIGINT after its graceful
    stop: make the handlers it finds no-ops, so a stop by signal ends in `return 0`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> None:
        self._old = {sig: signal.signal(sig, _ignore) for sig in self.SIGNALS}

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _ignore(signum: int, frame: Any) -> None:
    pass
