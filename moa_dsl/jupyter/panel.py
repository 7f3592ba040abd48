"""The live run panel of `%%moa`, built only from the run's Event stream.

    panel = RunPanel.for_pipeline(pipe)      # widgets in a Jupyter frontend, printed lines elsewhere
    panel.show()
    ... arun(pipe, query, on_event=panel.handle) ...
    panel.close(result)

`PanelState` is the model: pure bookkeeping over events, no I/O, so it can be tested with synthetic
events. `WidgetView` (ipywidgets) and `TextView` (print) render it. `handle` may be called from any
thread; the notebook driver calls it from the kernel's main thread in batches (see notebook.py).
"""
from __future__ import annotations

import functools
import html
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence, TextIO

if TYPE_CHECKING:  # pragma: no cover - the panel only reads an event's fields
    from ..runtime.events import Event

__all__ = ["has_frontend", "NodeRow", "PanelState", "RunPanel", "STATES", "TextView", "WidgetView"]

STATES = ("waiting", "running", "cached", "done", "failed", "skipped")
_STATE_COLOURS = {
    "waiting": "#9e9e9e", "running": "#1e88e5", "cached": "#8e24aa",
    "done": "#43a047", "failed": "#e53935", "skipped": "#fb8c00",
}
_TEXT_MARKS = {"running": ">", "cached": "=", "done": "+", "failed": "x", "skipped": "-"}


@dataclass
class NodeRow:
    name: str
    model: str = ""
    provider: str = ""
    state: str = "waiting"
    started: float | None = None     # run-clock seconds (Event.t)
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempt: int = 0
    detail: str = ""                 # error, skip reason or retry note

    def elapsed(self, now: float | None) -> float | None:
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else now
        return None if end is None else max(0.0, end - self.started)


@dataclass
class PanelState:
    """What the panel knows, folded from events. `apply` returns the rows it changed."""

    rows: dict[str, NodeRow] = field(default_factory=dict)
    output: str | None = None
    stream: list[str] = field(default_factory=list)
    status: str = "waiting"          # waiting | running | ok | failed | interrupted
    elapsed_s: float | None = None
    usage: dict[str, int] = field(default_factory=dict)
    last_t: float = 0.0

    @classmethod
    def from_graph(cls, graph: Any) -> "PanelState":
        """Rows in dependency order, before any event, so the panel shows the whole plan at once."""
        import networkx as nx

        dead = graph.graph.get("dead", frozenset())
        rows = {n: NodeRow(n, str(graph.nodes[n].get("model", "")), str(graph.nodes[n].get("provider", "")))
                for n in nx.topological_sort(graph) if n not in dead}
        return cls(rows=rows, output=graph.graph.get("output"))

    @property
    def text(self) -> str:
        return "".join(self.stream)

    def row(self, name: str | None) -> NodeRow:
        assert name is not None, "a node event without a node"
        if name not in self.rows:  # a node the graph did not announce: show it rather than drop it
            self.rows[name] = NodeRow(name)
        return self.rows[name]

    def apply(self, ev: Event) -> set[str]:
        self.last_t = max(self.last_t, ev.t)
        handler = getattr(self, f"_on_{ev.kind}", None)
        if handler is None:      # kinds added later are ignored, not fatal
            return set()
        handler(ev)
        return {ev.node} if ev.node else set()

    def _on_run_started(self, ev: Event) -> None:
        self.status = "running"
        self.output = ev.data.get("output", self.output)
        for name in ev.data.get("nodes", ()):
            self.row(name)

    def _on_node_started(self, ev: Event) -> None:
        r = self.row(ev.node)
        r.state, r.started = "running", ev.t
        r.model = ev.data.get("model", r.model)
        r.provider = ev.data.get("provider", r.provider)

    def _on_request_sent(self, ev: Event) -> None:
        self.row(ev.node).attempt = int(ev.data.get("attempt", 1))

    def _on_retry(self, ev: Event) -> None:
        r = self.row(ev.node)
        r.detail = f"retry {ev.data.get('attempt', '?')}: {ev.data.get('error', '')}"

    def _on_token(self, ev: Event) -> None:
        if ev.node == self.output:
            self.stream.append(str(ev.data.get("text", "")))

    def _on_cache_hit(self, ev: Event) -> None:
        r = self.row(ev.node)
        r.state = "cached"
        r.prompt_tokens = int(ev.data.get("prompt_tokens") or 0)
        r.completion_tokens = int(ev.data.get("completion_tokens") or 0)

    def _on_node_finished(self, ev: Event) -> None:
        r = self.row(ev.node)
        r.state = "cached" if ev.data.get("status") == "cached" else "done"
        r.finished, r.detail = ev.t, ""
        if r.started is None:
            r.started = ev.t
        usage = ev.data.get("usage") or {}
        r.prompt_tokens = int(usage.get("prompt_tokens") or r.prompt_tokens)
        r.completion_tokens = int(usage.get("completion_tokens") or r.completion_tokens)

    def _on_node_failed(self, ev: Event) -> None:
        r = self.row(ev.node)
        r.state, r.finished, r.detail = "failed", ev.t, str(ev.data.get("error", ""))

    def _on_node_skipped(self, ev: Event) -> None:
        r = self.row(ev.node)
        r.state, r.detail = "skipped", str(ev.data.get("reason", ""))

    def _on_run_finished(self, ev: Event) -> None:
        self.status = str(ev.data.get("status", "ok"))
        self.elapsed_s = float(ev.data.get("elapsed_s", ev.t))
        self.usage = dict(ev.data.get("usage") or {})

    def interrupt(self) -> None:
        """The user stopped the run: whatever was still running or waiting will not finish."""
        self.status = "interrupted"
        for r in self.rows.values():
            if r.state in ("running", "waiting"):
                r.state, r.detail = "skipped", "interrupted"

    def totals_line(self) -> str:
        """The run's totals in the words RunResult.summary() uses (runtime.report.totals_line)."""
        from ..runtime.report import totals_line

        u = self.usage
        cached = [r for r in self.rows.values() if r.state == "cached"]
        usage = {"calls": u.get("calls", sum(r.state in ("done", "failed") for r in self.rows.values())),
                 "cache_hits": u.get("cache_hits", len(cached)),
                 "prompt_tokens": u.get("prompt_tokens", 0), "completion_tokens": u.get("completion_tokens", 0),
                 "saved_prompt_tokens": sum(r.prompt_tokens for r in cached),
                 "saved_completion_tokens": sum(r.completion_tokens for r in cached)}
        return totals_line(self.status, usage, self.elapsed_s if self.elapsed_s is not None else self.last_t)


def _fmt_elapsed(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.2f}s" if s < 10 else f"{s:.1f}s"


def _fmt_tokens(r: NodeRow) -> str:
    if not (r.prompt_tokens or r.completion_tokens):
        return ""
    return f"{r.prompt_tokens} in / {r.completion_tokens} out"


class TextView:
    """Plain lines for a terminal IPython (or no ipywidgets): one line per state change."""

    def __init__(self, state: PanelState, *, stream: TextIO | None = None):
        self.state = state
        self._out = stream
        self._printed: dict[str, str] = {}
        self._streamed = 0
        self._mid_line = False     # streamed text written without its closing newline

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    def show(self) -> None:
        pass

    def render(self, changed: Iterable[str], now: float | None) -> None:
        # The stream first: the output node's "done" row may come in the same batch as its last
        # tokens, and must not cut its answer in two.
        text = self.state.text
        if len(text) > self._streamed:
            self.out.write(text[self._streamed:])
            self.out.flush()
            self._streamed = len(text)
            self._mid_line = not text.endswith("\n")
        for name in changed:
            r = self.state.rows.get(name)
            if r is None or r.state == "waiting" or self._printed.get(name) == r.state:
                continue
            self._printed[name] = r.state
            bits = [f"{_TEXT_MARKS.get(r.state, ' ')} {r.name:<16} {r.state:<8}"]
            if r.state == "running":
                bits.append(f"{r.provider}:{r.model}")
            else:
                bits += [_fmt_elapsed(r.elapsed(now)), _fmt_tokens(r), r.detail]
            self._end_line()
            print("  ".join(b for b in bits if b).rstrip(), file=self.out)

    def _end_line(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False

    def close(self) -> None:
        self._end_line()
        print(self.state.totals_line(), file=self.out)

    def discard(self) -> None:
        self._end_line()


class WidgetView:
    """ipywidgets: a header, one HTML row per node, the output's stream, the totals."""

    def __init__(self, state: PanelState):
        import ipywidgets as w

        self.state = state
        self.header = w.HTML(self._header_html())
        self.rows = {name: w.HTML(self._row_html(r, None)) for name, r in state.rows.items()}
        self.rows_box = w.VBox(list(self.rows.values()))
        self.stream = w.HTML("")
        self.totals = w.HTML("")
        self.box = _panel_box_class()([self.header, self.rows_box, self.stream, self.totals])
        self.box.summary = f"moa run panel: {len(state.rows)} nodes, output {state.output}"

    def show(self) -> None:
        from IPython.display import display

        display(self.box)

    def render(self, changed: Iterable[str], now: float | None) -> None:
        import ipywidgets as w

        self.header.value = self._header_html()
        new = [n for n in self.state.rows if n not in self.rows]
        for name in new:
            self.rows[name] = w.HTML()
        if new:
            self.rows_box.children = [self.rows[n] for n in self.state.rows]
        for name in set(changed) | set(new) | self._running():
            value = self._row_html(self.state.rows[name], now)
            if self.rows[name].value != value:   # each assignment is a message to the frontend
                self.rows[name].value = value
        text = self.state.text
        if text:
            self.stream.value = ("<pre style='white-space:pre-wrap;margin:4px 0;max-height:24em;"
                                 f"overflow:auto'>{html.escape(text)}</pre>")

    def _running(self) -> set[str]:
        return {n for n, r in self.state.rows.items() if r.state == "running"}

    def close(self) -> None:
        self.render(self.state.rows, None)
        self.stream.value = ""  # the final answer is displayed as Markdown below the panel
        self.totals.value = f"<b>{html.escape(self.state.totals_line())}</b>"

    def discard(self) -> None:
        self.box.close()

    def _header_html(self) -> str:
        s = self.state
        return (f"<b>moa run</b> &middot; {len(s.rows)} nodes &middot; output "
                f"<code>{html.escape(str(s.output))}</code> &middot; {html.escape(s.status)}")

    @staticmethod
    def _row_html(r: NodeRow, now: float | None) -> str:
        colour = _STATE_COLOURS.get(r.state, "#000")
        cells = [
            (f"<code>{html.escape(r.name)}</code>", "14em"),
            (html.escape(f"{r.provider}:{r.model}" if r.provider else r.model), "16em"),
            (f"<span style='color:{colour};font-weight:bold'>{r.state}</span>", "6em"),
            (_fmt_elapsed(r.elapsed(now)), "5em"),
            (html.escape(_fmt_tokens(r)), "11em"),
            (f"<span style='color:#777'>{html.escape(r.detail[:200])}</span>", "auto"),
        ]
        return "<div style='display:flex;gap:8px;font-family:monospace'>" + "".join(
            f"<div style='width:{w}'>{c}</div>" for c, w in cells) + "</div>"


@functools.cache
def _panel_box_class() -> type:
    """Made on first use, so importing this module never needs ipywidgets."""
    import ipywidgets as w

    class PanelBox(w.VBox):
        """A VBox whose plain-text form (a saved notebook seen without widgets) is one line."""

        summary = "moa run panel"

        def __repr__(self) -> str:
            return self.summary

    return PanelBox


def has_frontend() -> bool:
    """True inside a Jupyter kernel with ipywidgets importable; False in a terminal or a script."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class RunPanel:
    """The state plus one view. `handle` is the `on_event` callback; it is safe from any thread."""

    def __init__(self, state: PanelState, *, widgets: bool | None = None, stream: TextIO | None = None):
        self.state = state
        use_widgets = has_frontend() if widgets is None else widgets
        self.view: WidgetView | TextView = WidgetView(state) if use_widgets else TextView(state, stream=stream)
        self._lock = threading.Lock()
        self._wall0: float | None = None

    @classmethod
    def for_pipeline(cls, pipe: Any, **kw: Any) -> "RunPanel":
        return cls(PanelState.from_graph(pipe.graph), **kw)

    @property
    def is_widget(self) -> bool:
        return isinstance(self.view, WidgetView)

    def show(self) -> None:
        self.view.show()

    def now(self) -> float | None:
        """The run clock for rows still running, from the wall clock since `run_started`."""
        return None if self._wall0 is None else time.monotonic() - self._wall0

    def handle(self, ev: Event) -> None:
        self.handle_many([ev])

    def handle_many(self, events: Sequence[Event]) -> None:
        """Fold a batch of events, then render once: a streamed answer is many events."""
        with self._lock:
            changed: set[str] = set()
            for ev in events:
                if ev.kind == "run_started":
                    self._wall0 = time.monotonic() - ev.t
                changed |= self.state.apply(ev)
            self.view.render(changed, self.now())

    def tick(self) -> None:
        """Refresh the elapsed time of running rows (no event arrives while a call is in flight)."""
        with self._lock:
            self.view.render((), self.now())

    def interrupt(self) -> None:
        with self._lock:
            self.state.interrupt()
            self.state.elapsed_s = self.now()

    def close(self) -> None:
        with self._lock:
            self.view.close()

    def discard(self) -> None:
        """The run never started (a missing key, a bad query): the error says it all, hide the panel."""
        with self._lock:
            self.view.discard()
