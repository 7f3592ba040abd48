"""The `local` provider: built-in or user GGUF models on llama.cpp, through the OpenAI code path.

Each model gets one llama.cpp server (xllamacpp) listening on a free loopback port, in a child
process of its own (`child.py` says why: a load holds the GIL for seconds, a crash in
llama.cpp must not take the caller down). Servers are shared by the whole process: started on first
use, reused by every later run (a notebook keeps them warm between cells), started again if one has
died, and stopped at exit; a server never outlives the process that started it. Requests go through
`OpenAIProvider`, exactly as a remote model's would; only starting the server and naming the model
are local.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

from ...errors import ConfigError, LocalModelError, ProviderConnectionError, ProviderHTTPError
from ..base import CallRequest, Completion, Emit, OnToken, Wait
from . import registry as models

__all__ = [
    "check_gguf",
    "endpoint_for",
    "exit_code",
    "GGUF_MAGIC",
    "LocalProvider",
    "N_CTX",
    "N_PARALLEL",
    "require_runtime",
    "resolve",
    "running",
    "serve",
    "shutdown",
    "verbose",
]

N_PARALLEL = 4  # slots per server: a layer sampling one model several times runs them at once
N_CTX = 16384  # tokens of KV cache per server, shared by its slots (unified), so one long
#                       aggregator prompt may use all of it while short proposer calls share it
GGUF_MAGIC = b"GGUF"
_CONTEXT_ERROR = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")


_verbose_requested = False  # set by LocalProvider(verbose=True), i.e. `moa run --verbose`


def verbose() -> bool:
    """llama.cpp's own log is shown only on request: `--verbose`, or MOA_VERBOSE=1."""
    return _verbose_requested or os.environ.get("MOA_VERBOSE", "") not in ("", "0")


def require_runtime() -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        raise ConfigError("local models need the embedded llama.cpp runtime: pip install 'moa-dsl[local]'")


# -- resolving a model id to a file -----------------------------------------------------------------

_pull_lock = threading.Lock()  # two nodes needing the same missing model download it once


def resolve(model: str) -> Path:
    """A built-in name (pulled first if missing, saying so on stderr) or a path to a GGUF file."""
    if model in models.BUILTINS:
        with _pull_lock:
            if not models.is_present(models.BUILTINS[model]):
                say = models.stderr_progress()
                say(
                    f"local model {model} is not downloaded yet: pulling it once "
                    f"({models.BUILTINS[model].size / 1e6:.0f} MB) into {models.model_path(model).parent}"
                )
                models.pull([model], progress=say, on_bytes=models.default_byte_progress())
        return models.model_path(model)
    if not _looks_like_path(model):
        models.lookup(model)  # raises ConfigError: unknown name, did you mean ...
    return check_gguf(Path(model).expanduser())


def _looks_like_path(model: str) -> bool:
    return "/" in model or os.sep in model or model.lower().endswith(".gguf") or model.startswith(("~", "."))


def check_gguf(path: Path) -> Path:
    path = path.resolve()
    if not path.is_file():
        raise LocalModelError(
            f"no such model file: {path}"
            + ("" if path.exists() else f" (built-in models: {', '.join(models.BUILTINS)})")
        )
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise LocalModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    if magic != GGUF_MAGIC:
        raise LocalModelError(f"{path} is not a GGUF model file (llama.cpp reads only GGUF)")
    return path


def endpoint_for(model: str) -> str:
    """Cache-key endpoint for one model: the weights' identity, so new weights never hit old answers.

    Built-ins are pinned by SHA-256. A file is identified by its absolute path, size and mtime (two
    different files at one path never share entries; hashing gigabytes per run would be too slow).
    """
    builtin = models.BUILTINS.get(model)
    if builtin is not None:
        return f"local:sha256:{builtin.sha256}"
    path = Path(model).expanduser().resolve()
    try:
        st = path.stat()
    except OSError:
        return f"local:file:{path}"
    return f"local:file:{path}:{st.st_size}:{st.st_mtime_ns}"


# -- the process-wide servers ----------------------------------------------------------------------


class _Slot:
    """One model's server; `lock` makes concurrent first calls start it once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.server: Any = None
        self.url: str | None = None


_servers: dict[Path, _Slot] = {}
_servers_lock = threading.Lock()
_STOP_WAIT_S = 10.0


def serve(path: Path) -> str:
    """Blocking: the base URL (`http://127.0.0.1:PORT/v1`) of the server for `path`, started if needed
    (again, if the last one has died)."""
    with _servers_lock:
        slot = _servers.setdefault(path, _Slot())
    with slot.lock:
        if slot.server is not None and not slot.server.alive():
            slot.server.stop()
            slot.server = slot.url = None
        if slot.server is None:
            slot.server = _start(path)
            slot.url = slot.server.url.rstrip("/") + "/v1"
        return slot.url  # type: ignore[return-value]


def exit_code(path: Path) -> int | None:
    """The exit code of the server for `path` if it has died, else None (alive, or never started)."""
    with _servers_lock:
        slot = _servers.get(path)
    server = slot.server if slot is not None else None
    return None if server is None or server.alive() else server.returncode


class _ServerProcess:
    """A running `child.py` child: its URL, whether it is alive, and how to stop it."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        """Close its stdin (it exits at once), then wait; kill it if it does not."""
        assert self.proc.stdin is not None  # _start opens it with stdin=PIPE
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _start(path: Path) -> _ServerProcess:
    require_runtime()
    config = {
        "model": str(path),
        "n_parallel": N_PARALLEL,
        "n_ctx": N_CTX,
        "threads": os.cpu_count() or 1,
        "verbosity": 3 if verbose() else 0,
    }
    script = Path(__file__).with_name("child.py")
    try:
        # Its own session: a Ctrl-C meant for this process (a REPL, a kernel) does not kill the server.
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            start_new_session=True,
            env=_server_env(),
        )
    except OSError as exc:
        raise LocalModelError(f"could not start llama.cpp's server process: {exc}") from exc
    hint = "" if verbose() else " (set MOA_VERBOSE=1 to see llama.cpp's log)"
    assert proc.stdout is not None  # stdout=PIPE above
    try:
        line = proc.stdout.readline()  # blocks while the weights load; ends if the child dies
    finally:
        proc.stdout.close()
    from .child import MARK

    reply = json.loads(line[len(MARK) :]) if line.startswith(MARK) else {}
    if "url" in reply:
        return _ServerProcess(proc, reply["url"])
    _ServerProcess(proc, "").stop()
    if "error" in reply:
        raise LocalModelError(f"llama.cpp could not load {path}: {reply['error']}{hint}")
    raise LocalModelError(
        f"llama.cpp's server process for {path} exited while loading it (exit code {proc.returncode}){hint}"
    )


def _server_env() -> dict[str, str]:
    """The environment of a server process: ours, with OpenMP's threads sleeping at barriers instead of
    spinning (llama.cpp's CPU backend uses OpenMP). Each model has its own process, so spinning threads
    of one model would steal the cores another model's threads are waiting for: two models answering at
    once measured 80-370 s instead of 2 s on 2 cores. A value the user set is kept."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def running() -> dict[Path, str]:
    """The servers alive in this process: model file -> base URL."""
    with _servers_lock:
        return {p: s.url for p, s in _servers.items() if s.url and s.server is not None and s.server.alive()}


def shutdown() -> None:
    """Stop every server (at exit; the next use starts them again)."""
    with _servers_lock:
        slots = list(_servers.values())
        _servers.clear()
    for slot in slots:
        with slot.lock:
            if slot.server is not None:
                slot.server.stop()
            slot.server = slot.url = None


atexit.register(shutdown)


# -- the provider ----------------------------------------------------------------------------------

_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def server_slots(path: Path) -> asyncio.Semaphore:
    """At most N_PARALLEL requests in flight to one model's server, across every run of this loop.

    Past its slots llama.cpp queues a request inside the server, where the request's `timeout` (start
    to last byte) is already running: a sweep or a batch with 16 calls to one small model on 2 cores
    would time out while waiting its turn. Here the wait is before the request starts.
    """
    per_loop = _SLOTS.setdefault(asyncio.get_running_loop(), {})
    slots = per_loop.get(path)
    if slots is None:
        slots = per_loop[path] = asyncio.Semaphore(N_PARALLEL)
    return slots


class _Bounds:
    """The provider's own `max_concurrency` (if any), then the server's slots, held together."""

    __slots__ = ("_provider", "_server")

    def __init__(self, provider: asyncio.Semaphore | None, server: asyncio.Semaphore):
        self._provider, self._server = provider, server

    async def __aenter__(self) -> None:
        if self._provider is not None:
            await self._provider.acquire()
        try:
            await self._server.acquire()
        except BaseException:
            if self._provider is not None:
                self._provider.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._server.release()
        if self._provider is not None:
            self._provider.release()


class LocalProvider:
    """`local` models. One OpenAIProvider per model server, owned by this (per-run) provider."""

    kind = "local"

    def __init__(self, *, name: str = "local", max_concurrency: int | None = None, verbose: bool = False):
        global _verbose_requested
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"provider {name}: max_concurrency must be at least 1, not {max_concurrency}")
        require_runtime()
        _verbose_requested = _verbose_requested or verbose  # for servers started from now on
        self.name = name
        self.endpoint = "local"
        self.max_concurrency = max_concurrency
        # Shared by the per-model clients, which hold it per attempt (never across a retry wait).
        self._semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._clients: dict[str, Any] = {}
        self._retired: list[Any] = []  # clients of a server that died: closed with this provider
        self._locks: dict[str, asyncio.Lock] = {}

    def endpoint_for(self, model: str) -> str:
        return endpoint_for(model)

    async def complete(
        self, req: CallRequest, *, on_token: OnToken | None = None, emit: Emit | None = None, wait: Wait | None = None
    ) -> Completion:
        client = await self._client(req.model)
        try:
            return await client.complete(req, on_token=on_token, emit=emit, wait=wait)
        except ProviderHTTPError as exc:
            raise (_explain_context(exc, req) or exc) from None
        except ProviderConnectionError as exc:
            path = resolve(req.model)
            if running().get(path) == client.base_url:
                raise  # its server is alive: an ordinary connection failure
            # Its server died (or another run already replaced it): the next call gets a live one.
            # The client is retired, not closed: other calls may still be retrying on it.
            if self._clients.get(req.model) is client:
                del self._clients[req.model]
                self._retired.append(client)
            code = exit_code(path)
            state = (
                f"stopped (exit code {code}); the next call starts it again"
                if code is not None
                else "stopped during this call; the next call uses a running one"
            )
            raise LocalModelError(f"{req.node}: llama.cpp's server for local model {req.model!r} {state}") from exc

    async def _client(self, model: str) -> Any:
        # One client per model even when a layer's samples all start at once; other models don't wait.
        async with self._locks.setdefault(model, asyncio.Lock()):
            client = self._clients.get(model)
            if client is None:
                path = resolve(model)
                url = await asyncio.to_thread(lambda: serve(path))
                from ..openai import OpenAIProvider

                client = self._clients[model] = OpenAIProvider(
                    name=self.name,
                    base_url=url,
                    endpoint=endpoint_for(model),
                    semaphore=_Bounds(self._semaphore, server_slots(path)),
                )
            return client

    async def aclose(self) -> None:
        """Closes this run's HTTP clients; the servers stay warm for the next run (see `shutdown`)."""
        clients, self._clients = list(self._clients.values()) + self._retired, {}
        self._retired = []
        for client in clients:
            await client.aclose()

    def __repr__(self) -> str:
        return f"LocalProvider(name={self.name!r})"


def _explain_context(exc: ProviderHTTPError, req: CallRequest) -> ProviderHTTPError | None:
    """llama.cpp's 400 for an over-long prompt, said in terms the user can act on."""
    match = _CONTEXT_ERROR.search(str(exc))
    if exc.status != 400 or match is None:
        return None
    tokens, limit = match.groups()
    return ProviderHTTPError(
        f"{req.node}: the prompt is too long for local model {req.model!r}: {tokens} tokens, but its "
        f"context holds {limit} (shared by {N_PARALLEL} parallel requests). Nothing was truncated; "
        "lower max_tokens on this node's inputs, give it fewer inputs, or shorten the query.",
        node=req.node,
        provider=exc.provider,
        status=400,
    )
