"""One progress line for a whole evaluation on stderr."""
from __future__ import annotations

import time
from typing import IO, Any

__all__ = ["Progress"]

# --- progress -------------------------------------------------------------------------------------

class Progress:
    """One line on stderr: items done, calls, cache hits, tokens, ETA. Redrawn in a terminal,
    printed every few seconds otherwise (a log file should not get a line per event)."""

    def __init__(self, *, items: int, units: int, stream: IO[str] | None):
        self.items, self.units, self.stream = items, units, stream
        self.items_done = self.units_done = self.calls = self.hits = self.tokens = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def on_event(self, event: Any) -> None:
        if event.kind == "node_finished" and event.data.get("status") == "ok":
            self.calls += 1
            usage = event.data.get("usage", {})
            self.tokens += usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        elif event.kind == "node_failed":
            self.calls += 1
        elif event.kind == "cache_hit":
            self.hits += 1

    def unit(self) -> None:
        self.units_done += 1
        self.draw()

    def item(self) -> None:
        self.items_done += 1
        self.draw()

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        left = self.units - self.units_done
        eta = _duration(elapsed / self.units_done * left) if self.units_done and left else "—"
        return (f"eval: {self.items_done}/{self.items} items, {self.calls} calls, {self.hits} cache hits, "
                f"{self.tokens} tokens, {_duration(elapsed)} elapsed, ETA {eta}")

    def note(self, text: str) -> None:
        """A line of its own (a failed item), above the progress line on a terminal."""
        if self.stream is None:
            return
        self.stream.write(("\r\x1b[K" if self._tty else "") + text + "\n")
        self.stream.flush()

    def draw(self, *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if self._tty:
            self.stream.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
        elif final or now - self._last >= 5.0:
            self.stream.write(self.line() + "\n")
        else:
            return
        self._last = now
        self.stream.flush()


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
