"""The ASGI application: Starlette routes for OpenAI's `/v1/models` and `/v1/chat/completions`.

Per request: the key is checked (every route), the body is read with a 4 MiB limit counted as it
arrives, the topology is looked up, the run is admitted or refused (429 past `--max-queue`), then it
runs through the topology's shared Session. A client that goes away cancels its run (the calls only
it was waiting for stop; the scheduler's in-flight table hands a call it shared to the other
request, which makes it itself). One line per request goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
import sys
import time
import traceback
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import MoaError
from ..runtime import Event, RunResult
from .protocol import (
    MAX_BODY,
    ApiError,
    ChatRequest,
    chunk,
    completion,
    moa_field,
    new_id,
    parse_chat,
    run_failure,
    sse,
    usage_field,
)
from .topologies import Served, Shared, load_topologies

__all__ = ["ServeState", "build_app"]

_LOG_KEY = "moa.log"


class ServeState:
    """What the app serves: the topologies (swapped whole on reload), the shared parts, the limits."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        pipes: Mapping[str, Any],
        concurrency: int,
        max_queue: int,
        cache: bool,
        cache_dir: str | None,
        api_key: str | None = None,
        listening: str = "",
        log: Callable[[str], None] | None = None,
    ):
        self.paths, self.concurrency, self.max_queue = list(paths), concurrency, max_queue
        self.cache, self.cache_dir, self.api_key, self.listening = cache, cache_dir, api_key, listening
        self._pipes = dict(pipes)
        self.shared: Shared | None = None
        self.topologies: dict[str, Served] = {}
        self.active = 0  # chat requests admitted and not finished: running or waiting
        self.log = log or _stderr

    async def start(self) -> None:
        self.shared = Shared(concurrency=self.concurrency, cache=self.cache, cache_dir=self.cache_dir)
        self.topologies = {name: Served(name, pipe, self.shared) for name, pipe in self._pipes.items()}
        names = ", ".join(self.topologies)
        self.log(
            f"moa serve: {len(self.topologies)} topolog{'y' if len(self.topologies) == 1 else 'ies'} "
            f"({names}) on {self.listening}; concurrency {self.concurrency}, max queue {self.max_queue}, "
            f"cache {'on' if self.cache else 'off'}; SIGHUP reloads, SIGTERM stops"
        )

    async def stop(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()

    def reload(self) -> None:
        """SIGHUP: load every path again; on any error keep serving what was served before."""
        assert self.shared is not None
        try:
            report = load_topologies(self.paths)
        except MoaError as exc:
            self.log(f"moa serve: reload failed, still serving the previous topologies: {exc}")
            return
        if report.errors:
            for err in report.errors:
                self.log(err.render())
            self.log("moa serve: reload failed, still serving the previous topologies")
            return
        try:
            fresh = {name: Served(name, pipe, self.shared) for name, pipe in report.pipes.items()}
        except MoaError as exc:
            self.log(f"moa serve: reload failed, still serving the previous topologies: {exc}")
            return
        self.topologies = fresh  # requests in flight keep the Session they started with
        self.log(f"moa serve: reloaded {len(fresh)} topologies ({', '.join(fresh)})")


def _stderr(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def build_app(state: ServeState) -> ASGIApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        loop = asyncio.get_running_loop()
        hup = hasattr(signal, "SIGHUP")
        if hup:
            try:
                loop.add_signal_handler(signal.SIGHUP, state.reload)
            except (RuntimeError, ValueError):  # not the main thread (an embedding test): no reload
                hup = False
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            await state.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = "no such route: " + request.url.path if exc.status_code == 404 else str(exc.detail)
        return _error(ApiError(exc.status_code, message, "not_found" if exc.status_code == 404 else None))

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc)

    async def internal_error(request: Request, exc: Exception) -> Response:
        traceback.print_exc(file=sys.stderr)
        return _error(ApiError(500, f"internal error ({type(exc).__name__}); see the server's log"))

    routes = [
        Route("/v1/models", _models, methods=["GET"]),
        Route("/v1/models/{model:path}", _model, methods=["GET"]),
        Route("/v1/chat/completions", _chat, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, ApiError: api_error, Exception: internal_error},
    )
    app.state.moa = state
    return _Front(app, state)


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


class _Front:
    """Outermost ASGI layer: the key check on every route, and the one log line per request.

    Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would sit between a stream and the
    client's disconnect."""

    def __init__(self, app: ASGIApp, state: ServeState):
        self.app, self.state = app, state
        self._key = state.api_key.encode() if state.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        scope[_LOG_KEY] = info
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._key is not None and not self._authorized(scope):
                await _error(
                    ApiError(
                        401, "invalid or missing API key: send it as 'Authorization: Bearer KEY'", "invalid_api_key"
                    )
                )(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        finally:
            self.state.log(
                _log_line(scope, info, 499 if info.get("disconnected") else status, time.perf_counter() - t0)
            )

    def _authorized(self, scope: Scope) -> bool:
        assert self._key is not None
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Constant time whatever was sent: compare_digest on bytes of any length.
        return hmac.compare_digest(given, self._key) and bool(given)


def _log_line(scope: Scope, info: Mapping[str, Any], status: int, elapsed: float) -> str:
    """`moa serve: POST /v1/chat/completions 200 topology=lite calls=4 cache_hits=0 tokens=812 0.412s`:
    the method, path, status and numbers only (never a header, a body or a key)."""
    parts = [f"moa serve: {scope.get('method', '?')} {scope.get('path', '?')} {status or '-'}"]
    if "topology" in info:
        parts.append(f"topology={info['topology']}")
    if "calls" in info:
        parts.append(f"calls={info['calls']} cache_hits={info['cache_hits']} tokens={info['tokens']}")
    if info.get("stream"):
        parts.append("stream")
    if info.get("disconnected"):
        parts.append("client-disconnected")
    parts.append(f"{elapsed:.3f}s")
    return " ".join(parts)


def _state(request: Request) -> ServeState:
    return request.app.state.moa


async def _models(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({"object": "list", "data": [_model_obj(s) for s in state.topologies.values()]})


async def _model(request: Request) -> Response:
    served = _state(request).topologies.get(request.path_params["model"])
    if served is None:
        raise _unknown(request.path_params["model"], _state(request))
    return JSONResponse(_model_obj(served))


def _model_obj(served: Served) -> dict[str, Any]:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "moa-dsl"}


def _unknown(model: str, state: ServeState) -> ApiError:
    known = ", ".join(state.topologies) or "none"
    return ApiError(
        404, f"the model {model!r} does not exist: the topologies served are {known}", "model_not_found", "model"
    )


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 past MAX_BODY: a declared Content-Length at once, a chunked body as soon
    as the bytes received pass the limit (never more than the limit is kept)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "the Content-Length header is not a number") from None
        if size > MAX_BODY:
            raise ApiError(413, f"the body is {size} bytes; the limit is {MAX_BODY} (4 MiB)", "request_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY:
            raise ApiError(413, f"the body is over the limit of {MAX_BODY} bytes (4 MiB)", "request_too_large")
        chunks.append(part)
    return b"".join(chunks)


async def _chat(request: Request) -> Response:
    state = _state(request)
    info = request.scope.setdefault(_LOG_KEY, {})
    try:
        raw = await _read_body(request)
    except ClientDisconnect:
        info["disconnected"] = True
        return Response(status_code=400)
    req = parse_chat(raw)
    info["topology"] = req.model
    served = state.topologies.get(req.model)
    if served is None:
        raise _unknown(req.model, state)
    if state.active >= state.max_queue:
        raise ApiError(
            429,
            f"the server is at its limit of {state.max_queue} requests running or waiting; retry later",
            "server_busy",
        )
    session = served.session_for(req.params)
    run = _Run(state, served.name, session, req, info)
    try:
        return await (run.stream(request) if req.stream else run.answer(request))
    except BaseException:
        await run.stop()
        raise


class _Run:
    """One request's run: the task, its counts for the log, the tokens for a stream."""

    _END = object()

    def __init__(self, state: ServeState, name: str, session: Any, req: ChatRequest, info: dict[str, Any]):
        self.state, self.name, self.req, self.info = state, name, req, info
        self.id, self.created = new_id(), int(time.time())
        self.tokens: asyncio.Queue[Any] = asyncio.Queue()
        self.first = asyncio.Event()
        self.calls = self.hits = self.spent = 0
        info.update(stream=req.stream, calls=0, cache_hits=0, tokens=0)
        state.active += 1
        on_token = self._token if req.stream else None
        self.task = asyncio.ensure_future(session.run(req.conversation, on_event=self._event, on_token=on_token))
        self.task.add_done_callback(self._finished)

    def _event(self, event: Event) -> None:  # the log's counts, right even for a cancelled run
        if event.kind == "node_started":
            self.calls += 1
        elif event.kind == "cache_hit":
            self.hits += 1
        elif event.kind == "node_finished" and event.data.get("status") == "ok":
            usage = event.data.get("usage") or {}
            self.spent += int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        self.info.update(calls=self.calls, cache_hits=self.hits, tokens=self.spent)

    def _token(self, text: str) -> None:
        if text:
            self.tokens.put_nowait(text)
            self.first.set()

    def _finished(self, task: asyncio.Future) -> None:
        self.state.active -= 1
        self.tokens.put_nowait(self._END)
        self.first.set()

    async def stop(self) -> None:
        """Cancel the run if it is still going and wait until it has unwound (its calls cancelled),
        even from inside a cancelled scope (Starlette cancels a stream's scope on disconnect)."""
        if not self.task.done():
            self.task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([self.task])

    async def _until(self, request: Request, waiter: "asyncio.Future[Any]") -> bool:
        """Wait for `waiter`; False if the client went away first (then the run is stopped)."""
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait([waiter, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if waiter in done:
            return True
        self.info["disconnected"] = True
        waiter.cancel()
        await self.stop()
        return False

    def _result(self) -> RunResult:
        result: RunResult = self.task.result()  # a bug in the runtime propagates: 500, logged
        return result

    async def answer(self, request: Request) -> Response:
        if not await self._until(request, self.task):
            return Response(status_code=499)
        result = self._result()
        if not result.ok:
            return _error(run_failure(self.name, result))
        return JSONResponse(completion(self.id, self.name, result))

    async def stream(self, request: Request) -> Response:
        # The head waits for the first token: a run that fails before any answer is a plain 502.
        if not await self._until(request, asyncio.ensure_future(self.first.wait())):
            return Response(status_code=499)
        if self.task.done() and self.tokens.qsize() <= 1:
            result = self._result()
            if not result.ok:
                return _error(run_failure(self.name, result))
        return _RunStream(self, self._events())

    async def _events(self) -> AsyncIterator[str]:
        base = (self.id, self.name, self.created)
        yield sse(chunk(*base, {"role": "assistant", "content": ""}))
        while True:
            batch = [await self.tokens.get()]
            while not self.tokens.empty():
                batch.append(self.tokens.get_nowait())
            end = batch[-1] is self._END
            texts = batch[:-1] if end else batch
            if texts:
                yield "".join(sse(chunk(*base, {"content": t})) for t in texts)
            if end:
                break
        result = self._result()
        if not result.ok:  # after the head went out: one error event, and no [DONE]
            failure = run_failure(self.name, result)
            yield sse(failure.body())
            return
        tail = sse(chunk(*base, {}, "stop", moa=moa_field(result)))
        if self.req.include_usage:
            tail += sse(chunk(*base, None, usage=usage_field(result)))
        yield tail + "data: [DONE]\n\n"


class _RunStream(StreamingResponse):
    """The SSE response of a run; whatever ends it (the last event, a disconnect, a bug), the run is
    stopped before the request is logged."""

    def __init__(self, run: _Run, content: AsyncIterator[str]):
        super().__init__(
            content, media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"}
        )
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.run.task.done():
                self.run.info["disconnected"] = True
            await self.run.stop()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is read by now: the next message is that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
