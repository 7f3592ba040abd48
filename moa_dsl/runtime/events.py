"""What a run reports while it happens: `Event`s, handed to callbacks and to the `--trace` writer.

Kinds, in the order they can happen for a node (docs/architecture.md, "Events"):
run_started, node_started, request_sent, retry, token, cache_hit, node_finished, node_failed,
node_skipped, node_cancelled, run_finished. `node_skipped` and `node_cancelled` carry `reason` (in
words; a budget's starts "budget: "); `node_finished` may carry `agreed`, `selected` and `votes`.
Event data never holds a header, a key or any other credential: the runner only puts model names,
counts, timings, texts and error messages (already credential-free, errors.py) in it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Literal, Protocol, get_args

__all__ = ["Emitter", "Event", "EVENT_KINDS", "EventKind", "OnEvent", "TraceWriter", "UNTRACED"]

EventKind = Literal[
    "run_started",
    "node_started",
    "request_sent",
    "retry",
    "token",
    "cache_hit",
    "node_finished",
    "node_failed",
    "node_skipped",
    "node_cancelled",
    "run_finished",
]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    t: float  # seconds since the run started
    node: str | None
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "t": round(self.t, 6), "node": self.node, "data": self.data}


UNTRACED = frozenset({"token"})  # kinds TraceWriter does not write

OnEvent = Callable[[Event], None]


class TextSink(Protocol):
    """Where a trace goes: an open text file, or anything that writes and flushes like one."""

    def write(self, text: str, /) -> Any: ...
    def flush(self) -> Any: ...


class TraceWriter:
    """Appends events as JSON lines, each with a wall-clock `ts` and the run-relative `t`.

    Accepts a path (opened in append mode, closed by `close`) or an open text stream (left open).
    Each line is flushed, so a killed run leaves a readable trace up to its last event. `token`
    events are left out: the trace is the run's lifecycle (the README), and a line plus a flush
    per streamed token would swamp it; on_event callbacks still get them.
    """

    def __init__(self, target: str | os.PathLike | TextSink):
        self._fh: TextSink
        self._owned: IO[str] | None = None  # a file this writer opened, and so closes
        if isinstance(target, (str, os.PathLike)):
            self._fh = self._owned = open(target, "a", encoding="utf-8")
        else:
            self._fh = target

    def __call__(self, event: Event) -> None:
        self.write(event)

    def write(self, event: Event, **extra: Any) -> None:
        """One line; `extra` fields (a batch's item index) go beside the event's own."""
        if event.kind in UNTRACED:
            return
        # Events are written as they happen, so the wall clock now is the event's wall-clock time.
        line = {"ts": round(time.time(), 6), **extra, **event.to_json()}
        self._fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()


class Emitter:
    """Stamps events with the run clock and hands them to every listener; keeps them for RunResult.

    Cheap on purpose (one dataclass and a list append per event): it sits on every call's path.
    """

    def __init__(self, listeners: Iterable[OnEvent | None] = (), *, keep: bool = True):
        self.t0 = time.perf_counter()
        self.wall_t0 = time.time()
        self.listeners: list[OnEvent] = [f for f in listeners if f is not None]
        self.events: list[Event] = []
        self._keep = keep

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def emit(
        self, kind: EventKind, node: str | None = None, data: dict[str, Any] | None = None, *, t: float | None = None
    ) -> Event:
        event = Event(kind, self.now() if t is None else t, node, data if data is not None else {})
        if self._keep:
            self.events.append(event)
        for listener in self.listeners:
            listener(event)
        return event
