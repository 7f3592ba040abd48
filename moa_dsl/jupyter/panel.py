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

__all__ = [
    "has_frontend",
    "NodeRow",
    "panel_html",
    "panel_text",
    "PanelState",
    "RunPanel",
    "STATES",
    "TextView",
    "WidgetView",
]

# `agreed`: an aggregator whose inputs gave the same answer (no call); `cancelled`: an input a quorum
# no longer needed (its call abandoned).
STATES = ("waiting", "running", "cached", "done", "agreed", "failed", "skipped", "cancelled")
# JupyterLab's theme variables, so a state reads in the light and the dark theme alike; the fallbacks
# are for frontends without them (classic Notebook < 7, VS Code, a saved file seen elsewhere).
_MUTED = "var(--jp-ui-font-color2, #757575)"
_STATE_COLOURS = {
    "waiting": _MUTED,
    "running": "var(--jp-brand-color1, #1976d2)",
    "cached": "#ab47bc",
    "done": "var(--jp-success-color1, #388e3c)",
    "failed": "var(--jp-error-color1, #d32f2f)",
    "skipped": "var(--jp-warn-color1, #f57c00)",
    "cancelled": _MUTED,
    "agreed": "#26a69a",
    "interrupted": "var(--jp-warn-color1, #f57c00)",
}
_STATUS_COLOURS = {  # the run's status in the panel's header
    "waiting": _MUTED,
    "running": _STATE_COLOURS["running"],
    "ok": _STATE_COLOURS["done"],
    "failed": _STATE_COLOURS["failed"],
    "error": _STATE_COLOURS["failed"],
    "interrupted": _STATE_COLOURS["skipped"],
}
_TEXT_MARKS = {
    "running": ">",
    "cached": "=",
    "done": "+",
    "failed": "x",
    "skipped": "-",
    "cancelled": "~",
    "agreed": "=",
    "interrupted": "!",
}


@dataclass
class NodeRow:
    name: str
    model: str = ""
    provider: str = ""
    state: str = "waiting"
    started: float | None = None  # run-clock seconds (Event.t)
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempt: int = 0
    detail: str = ""  # error, skip reason or retry note
    price: tuple[float, float] | None = None  # USD per million prompt / completion tokens, if priced

    @property
    def cost_usd(self) -> float | None:
        """What this row's call cost; a row served by the cache (or not called) cost nothing."""
        if self.price is None:
            return None
        if self.state not in ("done", "failed"):
            return 0.0
        return (self.prompt_tokens * self.price[0] + self.completion_tokens * self.price[1]) / 1e6

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
    status: str = "waiting"  # waiting | running | ok | failed | interrupted
    elapsed_s: float | None = None
    usage: dict[str, int] = field(default_factory=dict)
    last_t: float = 0.0
    answer: str | None = None  # the run's final answer (also when the output came from the cache)

    @classmethod
    def from_graph(cls, graph: Any) -> "PanelState":
        """Rows in dependency order, before any event, so the panel shows the whole plan at once."""
        import networkx as nx

        dead = graph.graph.get("dead", frozenset())

        def row(n: str) -> NodeRow:
            a = graph.nodes[n]
            if a.get("role") == "vote":  # no model, no call
                return NodeRow(n, "(vote)", "")
            return NodeRow(n, str(a.get("model") or ""), str(a.get("provider") or ""), price=_price(a))

        rows = {n: row(n) for n in nx.topological_sort(graph) if n not in dead}
        return cls(rows=rows, output=graph.graph.get("output"))

    @property
    def text(self) -> str:
        return "".join(self.stream)

    @property
    def shown_answer(self) -> str:
        """The answer as the panel shows it: the final one once known, the stream until then."""
        return self.answer if self.answer is not None else self.text

    @property
    def cost_usd(self) -> float | None:
        """The run's cost when every called node is priced, else None (a partial sum would mislead)."""
        costs = [r.cost_usd for r in self.rows.values() if r.state in ("done", "failed")]
        if not costs or any(c is None for c in costs):
            return None
        return sum(c for c in costs if c is not None)

    def row(self, name: str | None) -> NodeRow:
        assert name is not None, "a node event without a node"
        if name not in self.rows:  # a node the graph did not announce: show it rather than drop it
            self.rows[name] = NodeRow(name)
        return self.rows[name]

    def apply(self, ev: Event) -> set[str]:
        self.last_t = max(self.last_t, ev.t)
        handler = getattr(self, f"_on_{ev.kind}", None)
        if handler is None:  # kinds added later are ignored, not fatal
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
        d = ev.data
        r.state = "agreed" if d.get("agreed") else "cached" if d.get("status") == "cached" else "done"
        r.finished, r.detail = ev.t, ""
        if d.get("selected"):
            r.detail = "selected " + ", ".join(d["selected"])
        elif d.get("votes"):
            r.detail = "votes " + ", ".join(f"{a[:40]!r} {n}" for a, n in d["votes"].items())
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

    def _on_node_cancelled(self, ev: Event) -> None:
        r = self.row(ev.node)
        r.state, r.finished, r.detail = "cancelled", ev.t, f"cancelled: {ev.data.get('reason', '')}"

    def _on_run_finished(self, ev: Event) -> None:
        self.status = str(ev.data.get("status", "ok"))
        self.elapsed_s = float(ev.data.get("elapsed_s", ev.t))
        self.usage = dict(ev.data.get("usage") or {})

    def interrupt(self, now: float | None = None) -> None:
        """The user stopped the run: a call in flight was cut short (its time so far is kept), a node
        still waiting never started."""
        self.status = "interrupted"
        for r in self.rows.values():
            if r.state == "running":
                r.state, r.detail = "interrupted", "the call was cancelled by the interrupt"
                r.finished = now if now is not None else self.last_t
            elif r.state == "waiting":
                r.state, r.detail = "skipped", "not started: the run was interrupted"

    def totals_line(self) -> str:
        """The run's totals in the words RunResult.summary() uses (runtime.report.totals_line)."""
        from ..runtime.report import totals_line

        u = self.usage
        cached = [r for r in self.rows.values() if r.state == "cached"]
        called = [r for r in self.rows.values() if r.state in ("done", "failed")]
        usage = {
            "calls": u.get("calls", sum(r.state in ("done", "failed") for r in self.rows.values())),
            "cache_hits": u.get("cache_hits", len(cached)),
            "prompt_tokens": u.get("prompt_tokens", sum(r.prompt_tokens for r in called)),
            "completion_tokens": u.get("completion_tokens", sum(r.completion_tokens for r in called)),
            "cost_usd": u.get("cost_usd"),
            "saved_prompt_tokens": sum(r.prompt_tokens for r in cached),
            "saved_completion_tokens": sum(r.completion_tokens for r in cached),
        }
        return totals_line(self.status, usage, self.elapsed_s if self.elapsed_s is not None else self.last_t)


def _price(attrs: dict) -> tuple[float, float] | None:
    price = (attrs.get("params") or {}).get("price")
    try:
        return (float(price[0]), float(price[1])) if price is not None else None
    except (TypeError, ValueError, IndexError):
        return None


def _fmt_cost(usd: float | None) -> str:
    if usd is None:
        return ""
    return "$0" if usd == 0 else f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"


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
        self._mid_line = False  # streamed text written without its closing newline

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
            self.out.write(text[self._streamed :])
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


# -- the panel as HTML and as text: pure functions of the state, shared by the live view and the record --

# One table with fixed layout: the fixed-width columns keep their width, node and model share what is
# left and cut long names with an ellipsis (the full text is in the cell's title). Under its min-width
# the wrapper scrolls instead of cutting columns off. Inline styles only: a frontend that strips
# <style> blocks (an untrusted notebook) still shows a plain table.
_CELL = "padding:2px 6px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;text-align:left"
_NUM = _CELL.replace("text-align:left", "text-align:right") + ";font-variant-numeric:tabular-nums"
_COLUMNS = (  # (heading, width, cell style)
    ("node", "24%", _CELL),
    ("model", None, _CELL),
    ("status", "6.5em", _CELL),
    ("time", "4.8em", _NUM),
    ("tokens", "7.6em", _NUM),
    ("cost", "5.4em", _NUM),
)
_BORDER = "var(--jp-border-color2, #e0e0e0)"


def _td(text: str, style: str, *, inner: str | None = None, title: bool = True) -> str:
    tip = f" title='{html.escape(text, quote=True)}'" if title and text else ""
    return f"<td style='{style}'{tip}>{inner if inner is not None else html.escape(text)}</td>"


def _status_html(status: str, colours: dict[str, str]) -> str:
    return f"<span style='color:{colours.get(status, 'inherit')};font-weight:bold'>{html.escape(status)}</span>"


def _row_html(r: NodeRow, now: float | None, priced: bool) -> str:
    model = f"{r.provider}:{r.model}" if r.provider else r.model
    cells = [
        _td(r.name, _CELL, inner=f"<code>{html.escape(r.name)}</code>"),
        _td(model, _CELL),
        _td(r.state, _CELL, inner=_status_html(r.state, _STATE_COLOURS), title=False),
        _td(_fmt_elapsed(r.elapsed(now)), _NUM, title=False),
        _td(f"{r.prompt_tokens} / {r.completion_tokens}" if _fmt_tokens(r) else "", _NUM, title=False),
    ]
    if priced:
        cells.append(_td(_fmt_cost(r.cost_usd), _NUM, title=False))
    muted = "opacity:0.65;" if r.state in ("waiting", "cancelled", "skipped") else ""
    out = f"<tr data-moa-node='{html.escape(r.name, quote=True)}' style='{muted}border-top:1px solid {_BORDER}'>"
    out += "".join(cells) + "</tr>"
    if r.detail:  # an error or a reason reads as a sentence under its row, wrapped, not cut off
        colour = _STATE_COLOURS["failed"] if r.state == "failed" else _MUTED
        out += (
            f"<tr data-moa-detail='{html.escape(r.name, quote=True)}'><td colspan='{len(cells)}' "
            f"style='text-align:left;padding:0 6px 3px 2em;white-space:pre-wrap;overflow-wrap:anywhere;color:{colour};"
            f"font-size:0.92em' title='{html.escape(r.detail, quote=True)}'>"
            f"\u21b3 {html.escape(_cut(r.detail, 400))}</td></tr>"
        )
    return out


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _footer(state: PanelState, now: float | None) -> str:
    if state.status in ("waiting", "running"):
        rows = state.rows.values()
        finished = sum(r.state not in ("waiting", "running") for r in rows)
        clock = _fmt_elapsed(now if now is not None else state.last_t)
        return f"{finished} of {len(state.rows)} nodes finished" + (f" \u00b7 {clock}" if clock else "")
    line = state.totals_line()
    cost = state.cost_usd
    return line + (f", {_fmt_cost(cost)}" if cost is not None else "")


def panel_html(state: PanelState, now: float | None = None) -> str:
    """The whole panel (header, column headings, one row per node, totals) as one HTML string.

    The live widget shows it while the run goes; when the run ends the same string (with the
    totals) replaces the widget in the notebook, so the saved file keeps what the user saw."""
    priced = any(r.price is not None for r in state.rows.values())
    columns = [c for c in _COLUMNS if priced or c[0] != "cost"]
    cols = "".join(f"<col style='width:{w}'>" if w else "<col>" for _, w, _ in columns)
    tips = {"tokens": " title='prompt / completion tokens'", "time": " title='seconds from start to answer'"}
    heads = "".join(
        f"<th style='{st};font-weight:600;color:{_MUTED}'{tips.get(h, '')}>{h}</th>" for h, _, st in columns
    )
    rows = "".join(_row_html(r, now, priced) for r in state.rows.values())
    header = (
        f"<div style='margin-bottom:4px'><b>moa run</b> \u00b7 {len(state.rows)} nodes \u00b7 output "
        f"<code>{html.escape(str(state.output))}</code> \u00b7 {_status_html(state.status, _STATUS_COLOURS)}"
        "</div>"
    )
    footer = f"<div data-moa-totals='' style='margin-top:4px;font-weight:600'>{html.escape(_footer(state, now))}</div>"
    return (
        "<div class='moa-panel' style='box-sizing:border-box;max-width:100%;min-width:0;overflow-x:auto;"
        "font-family:var(--jp-ui-font-family, system-ui, sans-serif);font-size:var(--jp-ui-font-size1, 13px);"
        "line-height:1.45;color:var(--jp-ui-font-color1, inherit);padding:4px 0'>"
        f"{header}<table style='table-layout:fixed;width:100%;min-width:30em;border-collapse:collapse;"
        f"margin:0'><colgroup>{cols}</colgroup><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table>"
        f"{footer}</div>"
    )


def panel_text(state: PanelState, now: float | None = None) -> str:
    """The panel as plain text: the fallback of the saved record (and what a terminal would show)."""
    width = max([len(r.name) for r in state.rows.values()] + [4])
    lines = [f"moa run: {len(state.rows)} nodes, output {state.output}, {state.status}"]
    for r in state.rows.values():
        model = f"{r.provider}:{r.model}" if r.provider else r.model
        bits = [
            f"{_TEXT_MARKS.get(r.state, ' ')} {r.name:<{width}}",
            f"{r.state:<9}",
            model,
            _fmt_elapsed(r.elapsed(now)),
            _fmt_tokens(r),
            _fmt_cost(r.cost_usd) if r.price else "",
            r.detail.replace("\n", " ")[:200],
        ]
        lines.append("  ".join(b for b in bits if b).rstrip())
    lines.append(_footer(state, now))
    return "\n".join(lines)


# The answer is refreshed (as rendered Markdown, in its final place) at most this often while it
# streams: rendering Markdown on every token would make the frontend work harder than the run.
ANSWER_REFRESH_S = 0.3


class WidgetView:
    """ipywidgets while the run goes; a static HTML + text record in the same place when it ends.

    Two outputs, in this order: the panel (a widget in a display handle) and the answer (a display
    handle updated with the Markdown streamed so far, so it renders where it will stay). `close`
    replaces the widget with `panel_html`/`panel_text` and closes the widget's model: a saved and
    reopened notebook shows the record, never "model not found"."""

    def __init__(self, state: PanelState):
        import ipywidgets as w

        self.state = state
        self.html = w.HTML(panel_html(state), layout=w.Layout(width="100%", min_width="0"))
        self.box = _panel_box_class()([self.html], layout=w.Layout(width="100%", min_width="0"))
        self.box.summary = f"moa run panel: {len(state.rows)} nodes, output {state.output}"
        self.answer = ""  # the answer as last sent to the frontend
        self._panel_handle: Any = None
        self._answer_handle: Any = None
        self._answer_sent_at = 0.0

    def show(self) -> None:
        from IPython.display import display

        self._panel_handle = display(self.box, display_id=True)
        self._answer_handle = display({"text/plain": ""}, raw=True, display_id=True)

    def render(self, changed: Iterable[str], now: float | None) -> None:
        value = panel_html(self.state, now)
        if self.html.value != value:  # each assignment is a message to the frontend
            self.html.value = value
        if time.monotonic() - self._answer_sent_at >= ANSWER_REFRESH_S:
            self._send_answer()

    def _send_answer(self) -> None:
        text = self.state.shown_answer
        if text == self.answer:
            return
        self.answer, self._answer_sent_at = text, time.monotonic()
        if self._answer_handle is not None:
            self._answer_handle.update({"text/markdown": text, "text/plain": text}, raw=True)

    def record(self) -> dict[str, str]:
        """The static bundle that stands in the panel's place once the run has ended."""
        return {"text/html": panel_html(self.state), "text/plain": panel_text(self.state)}

    def close(self) -> None:
        self.html.value = panel_html(self.state)
        self._send_answer()
        if self._panel_handle is not None:
            self._panel_handle.update(self.record(), raw=True)
            self.box.close()  # the output no longer refers to the model: nothing to lose on reopen

    def discard(self) -> None:
        if self._panel_handle is not None:
            self._panel_handle.update({"text/plain": ""}, raw=True)
        self.box.close()


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
            self.state.interrupt(self.now())
            self.state.elapsed_s = self.now()

    def close(self, answer: str | None = None) -> None:
        """The run ended: `answer` is its output (which did not stream when it came from the cache)."""
        with self._lock:
            if answer is not None:
                self.state.answer = answer
            self.view.close()

    @property
    def shows_answer(self) -> bool:
        """True when the panel has put the answer in the notebook itself (the widget view, shown)."""
        return isinstance(self.view, WidgetView) and self.view._answer_handle is not None

    def discard(self) -> None:
        """The run never started (a missing key, a bad query): the error says it all, hide the panel."""
        with self._lock:
            self.view.discard()
