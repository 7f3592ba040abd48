"""The run panel: its state folded from events (synthetic ones first, then a real run against a
loopback FakeLLMServer), the ipywidgets view and the plain-text fallback."""
from __future__ import annotations

import io
import re
import threading

import networkx as nx
import pytest

from moa_dsl.runtime.events import Event
from moa_dsl.jupyter.panel import PanelState, RunPanel, TextView, WidgetView, has_frontend, panel_html, panel_text


def row_html(html: str, name: str) -> str:
    """One node's row of the panel's HTML (with the reason line under it, if any)."""
    m = re.search(rf"<tr data-moa-node='{re.escape(name)}'.*?</tr>(?:<tr data-moa-detail='{re.escape(name)}'.*?</tr>)?",
                  html)
    assert m, f"no row for {name!r} in the panel"
    return m.group(0)


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for name, model in [("final", "m3"), ("a", "m1"), ("b", "m2"), ("orphan", "m4")]:
        g.add_node(name, model=model, provider="fake")
    g.add_edge("a", "final")
    g.add_edge("b", "final")
    g.graph.update(output="final", dead=frozenset({"orphan"}))
    return g


def _events() -> list[Event]:
    """A run where `a` is called, `b` comes from the cache and the output streams in two pieces."""
    usage = {"prompt_tokens": 10, "completion_tokens": 5}
    return [
        Event("run_started", 0.0, None, {"nodes": ["a", "b", "final"], "output": "final"}),
        Event("node_started", 0.01, "a", {"model": "m1", "provider": "fake"}),
        Event("request_sent", 0.01, "a", {"attempt": 1}),
        Event("cache_hit", 0.02, "b", {"prompt_tokens": 7, "completion_tokens": 3}),
        Event("node_finished", 0.02, "b", {"status": "cached", "usage": {"prompt_tokens": 7, "completion_tokens": 3},
                                          "latency_s": 0.0}),
        Event("retry", 0.5, "a", {"attempt": 1, "error": "HTTP 429", "delay_s": 0.1}),
        Event("node_finished", 1.0, "a", {"status": "ok", "usage": usage, "latency_s": 0.99}),
        Event("node_started", 1.0, "final", {"model": "m3", "provider": "fake"}),
        Event("token", 1.1, "final", {"text": "Blue "}),
        Event("token", 1.2, "final", {"text": "light."}),
        Event("node_finished", 1.5, "final", {"status": "ok", "usage": usage, "latency_s": 0.5}),
        Event("run_finished", 1.5, None, {"status": "ok", "elapsed_s": 1.5,
                                          "usage": {"prompt_tokens": 20, "completion_tokens": 10,
                                                    "calls": 2, "cache_hits": 1}}),
    ]


def test_rows_come_from_the_graph_in_dependency_order_without_dead_nodes():
    state = PanelState.from_graph(_graph())
    assert list(state.rows)[-1] == "final"
    assert set(state.rows) == {"a", "b", "final"}
    assert all(r.state == "waiting" for r in state.rows.values())
    assert state.rows["a"].model == "m1"


def test_states_follow_the_events():
    state = PanelState.from_graph(_graph())
    seen = []
    for ev in _events():
        state.apply(ev)
        seen.append((ev.kind, {n: r.state for n, r in state.rows.items()}))
    assert dict(seen)["request_sent"] == {"a": "running", "b": "waiting", "final": "waiting"}
    assert dict(seen)["cache_hit"]["b"] == "cached"
    assert {n: r.state for n, r in state.rows.items()} == {"a": "done", "b": "cached", "final": "done"}
    assert state.rows["a"].elapsed(None) == pytest.approx(0.99)
    assert state.rows["a"].detail == ""  # the retry note goes once the node succeeds
    assert (state.rows["b"].prompt_tokens, state.rows["b"].completion_tokens) == (7, 3)
    assert state.text == "Blue light."
    assert state.status == "ok"
    assert state.totals_line() == ("ok: 2 calls, 1 cache hits, 20 prompt + 10 completion tokens "
                                   "(10 saved by the cache), 1.50s")   # RunResult.summary()'s words


def test_only_the_output_node_streams_and_unknown_kinds_are_ignored():
    state = PanelState.from_graph(_graph())
    state.apply(Event("token", 0.1, "a", {"text": "not the output"}))
    state.apply(Event("some_future_kind", 0.2, "a", {}))
    assert state.text == ""
    assert state.rows["a"].state == "waiting"


def test_failed_and_skipped_rows_keep_their_reason():
    state = PanelState.from_graph(_graph())
    state.apply(Event("node_started", 0.0, "a", {"model": "m1", "provider": "fake"}))
    state.apply(Event("node_failed", 0.3, "a", {"error": "HTTP 400: bad request"}))
    state.apply(Event("node_skipped", 0.3, "final", {"reason": "0 of 2 inputs succeeded"}))
    assert (state.rows["a"].state, state.rows["a"].detail) == ("failed", "HTTP 400: bad request")
    assert (state.rows["final"].state, state.rows["final"].detail) == ("skipped", "0 of 2 inputs succeeded")


def test_interrupt_marks_unfinished_rows():
    state = PanelState.from_graph(_graph())
    state.apply(Event("node_started", 0.0, "a", {"model": "m1", "provider": "fake"}))
    state.apply(Event("node_finished", 0.2, "b", {"status": "ok", "usage": {}, "latency_s": 0.2}))
    state.interrupt()
    assert {n: r.state for n, r in state.rows.items()} == {"a": "interrupted", "b": "done", "final": "skipped"}
    assert state.status == "interrupted"


def test_text_view_prints_one_line_per_change_and_the_stream():
    out = io.StringIO()
    panel = RunPanel(PanelState.from_graph(_graph()), widgets=False, stream=out)
    assert isinstance(panel.view, TextView) and not panel.is_widget
    for ev in _events():
        panel.handle(ev)
    panel.close()
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == [">", "a", "running"]
    assert [ln.split()[1:3] for ln in lines if ln.split()[1:2] == ["b"]] == [["b", "cached"]]
    assert "Blue light." in lines
    assert lines[-1].startswith("ok: 2 calls, 1 cache hits")
    assert sum("final" in ln and "done" in ln for ln in lines) == 1


def test_text_view_never_cuts_the_answer_when_its_end_and_done_arrive_together():
    """A fast server: the last tokens and the output's "done" reach the panel in one batch."""
    out = io.StringIO()
    panel = RunPanel(PanelState.from_graph(_graph()), widgets=False, stream=out)
    events = _events()
    first_token = next(i for i, ev in enumerate(events) if ev.kind == "token")
    for ev in events[:first_token + 1]:
        panel.handle(ev)
    panel.handle_many(events[first_token + 1:])
    panel.close()
    assert "Blue light." in out.getvalue().splitlines()


def test_widget_view_rows_show_each_state():
    panel = RunPanel(PanelState.from_graph(_graph()), widgets=True)
    assert isinstance(panel.view, WidgetView)
    view = panel.view
    events = _events()
    panel.handle_many(events[:3])
    assert ">running<" in row_html(view.html.value, "a") and ">waiting<" in row_html(view.html.value, "final")
    assert "0 of 3 nodes finished" in view.html.value
    panel.handle_many(events[3:10])
    assert view.answer == "Blue light."           # the first batch of tokens is sent at once
    panel.handle_many(events[10:])
    panel.close()
    value = view.html.value
    assert ">done<" in row_html(value, "a") and ">cached<" in row_html(value, "b")
    assert "0.99s" in row_html(value, "a") and "10 / 5" in row_html(value, "a")
    assert "ok: 2 calls, 1 cache hits" in value
    assert [h for h in re.findall(r"<th[^>]*>([^<]*)</th>", value)] == [
        "node", "model", "status", "time", "tokens"]   # no cost column: nothing is priced


def test_the_record_left_behind_holds_every_row_and_the_totals():
    panel = RunPanel(PanelState.from_graph(_graph()), widgets=True)
    panel.handle_many(_events())
    panel.close(answer="Blue light.")
    record = panel.view.record()
    assert set(record) == {"text/html", "text/plain"}
    html, text = record["text/html"], record["text/plain"]
    for name, state in [("a", "done"), ("b", "cached"), ("final", "done")]:
        assert f">{state}<" in row_html(html, name)
        assert any(line.split()[1:3] == [name, state] for line in text.splitlines()), text
    assert "0.99s" in html and "0.99s" in text and "10 in / 5 out" in text
    assert "ok: 2 calls, 1 cache hits" in html and "ok: 2 calls, 1 cache hits" in text
    assert "widget" not in html                    # nothing in it needs a widget model


def test_long_model_ids_are_cut_with_an_ellipsis_and_a_tooltip():
    g = _graph()
    g.nodes["a"]["model"] = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    html = panel_html(PanelState.from_graph(g))
    row = row_html(html, "a")
    cell = re.search(r"<td style='([^']*)' title='fake:meta-llama/Llama-3.3-70B-Instruct-Turbo'>", row)
    assert cell, row
    assert "white-space:nowrap" in cell.group(1) and "text-overflow:ellipsis" in cell.group(1)
    assert "table-layout:fixed" in html and "overflow-x:auto" in html


def test_a_priced_model_gets_a_cost_column_and_a_total():
    g = _graph()
    for n in g:
        g.nodes[n]["params"] = {"price": [1.0, 2.0]}
    panel = RunPanel(PanelState.from_graph(g), widgets=True)
    panel.handle_many(_events())
    panel.close()
    html = panel.view.html.value
    assert "<th" in html and ">cost</th>" in html
    assert "$0.0000" in row_html(html, "a") or "$0.00002" in row_html(html, "a")   # 10*1 + 5*2 per million
    assert ">$0<" in row_html(html, "b")                                           # from the cache: free
    assert panel.state.cost_usd == pytest.approx(2 * 20 / 1e6)
    assert "$0.0000" in panel_text(panel.state)


def test_failed_skipped_and_interrupted_rows_say_why_under_the_row():
    panel = RunPanel(PanelState.from_graph(_graph()), widgets=True)
    panel.handle(Event("run_started", 0.0, None, {"nodes": ["a", "b", "final"], "output": "final"}))
    panel.handle(Event("node_failed", 0.1, "a", {"error": "HTTP 400: bad request"}))
    panel.handle(Event("node_started", 0.1, "b", {"model": "m2", "provider": "fake"}))
    panel.interrupt()
    panel.close()
    html = panel.view.html.value
    assert ">failed<" in row_html(html, "a") and "HTTP 400: bad request" in row_html(html, "a")
    assert ">interrupted<" in row_html(html, "b") and "cancelled by the interrupt" in row_html(html, "b")
    assert ">skipped<" in row_html(html, "final") and "not started" in row_html(html, "final")
    assert ">interrupted<" in html.split("<table")[0]       # the header says how the run ended


def test_widget_view_escapes_html():
    panel = RunPanel(PanelState.from_graph(_graph()), widgets=True)
    panel.handle(Event("node_failed", 0.1, "a", {"error": "<script>x</script>"}))
    assert "<script>" not in panel.view.html.value
    assert "&lt;script&gt;" in row_html(panel.view.html.value, "a")


def test_an_unannounced_node_gets_a_row():
    panel = RunPanel(PanelState.from_graph(_graph()), widgets=True)
    panel.handle(Event("node_started", 0.1, "extra", {"model": "m9", "provider": "fake"}))
    assert "extra" in panel.state.rows
    assert ">running<" in row_html(panel.view.html.value, "extra")


def test_no_frontend_outside_a_kernel():
    assert has_frontend() is False


def test_widgets_in_a_kernel_and_text_without_ipywidgets(monkeypatch):
    import sys
    import types

    import IPython

    kernel_shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setattr(IPython, "get_ipython", lambda: kernel_shell)
    assert has_frontend() is True
    assert RunPanel(PanelState.from_graph(_graph())).is_widget
    monkeypatch.setitem(sys.modules, "ipywidgets", None)   # as if it were not installed
    assert has_frontend() is False
    assert not RunPanel(PanelState.from_graph(_graph())).is_widget


# -- a real run: the panel fed by the runner, against a loopback server -------------------------------

TOPOLOGY = """
provider fake = openai {{ base_url = "{url}", api_key = env("MOA_WIDGET_TEST_KEY"), retries = 0 }}
node a     = propose fake:"ma"
node b     = propose fake:"mb"
node both  = aggregate fake:"mc" <- a, b {{ min_inputs = 2 }}
node final = aggregate fake:"md" <- a, both
"""


class SpyPanel(RunPanel):
    """Records every row's state after each batch the driver hands over; `a_running` is set once a
    batch has shown node a running."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[dict[str, str]] = []
        self.a_running = threading.Event()

    def handle_many(self, events):
        super().handle_many(events)
        self.seen.append({n: r.state for n, r in self.state.rows.items()})
        if self.seen[-1].get("a") == "running":
            self.a_running.set()


def test_panel_after_a_run_with_a_failed_and_a_skipped_node(monkeypatch):
    from moa_dsl import loads
    from moa_dsl.jupyter.magics import run_with_panel
    from moa_dsl.testing import FakeLLMServer, default_answer

    monkeypatch.setenv("MOA_WIDGET_TEST_KEY", "sk-widget")
    panels: list[SpyPanel] = []

    def answer_once_the_panel_showed_a_running(model, body):
        # Not a latency long enough to be seen: a's answer waits until a panel batch has shown a
        # running (on the server's thread; b's fault and the others do not need it)
        panels[0].a_running.wait(30)
        return default_answer(model, body["messages"])

    with FakeLLMServer(responder={"ma": answer_once_the_panel_showed_a_running, "*": lambda m, b:
                                  default_answer(m, b["messages"])}, latency={"md": 0.2}, token_delay=0.01) as server:
        server.inject("mb", "400", message="bad request for mb")
        pipe = loads(TOPOLOGY.format(url=server.url))
        panel = SpyPanel.for_pipeline(pipe, widgets=True)
        panels.append(panel)
        result = run_with_panel(pipe, "Why is the sky blue?", panel=panel, cache=False)

    states = {n: r.state for n, r in panel.state.rows.items()}
    assert states == {"a": "done", "b": "failed", "both": "skipped", "final": "done"}
    assert {n: r.status for n, r in result.nodes.items()} == {
        "a": "ok", "b": "failed", "both": "skipped", "final": "ok"}
    assert any(s["a"] == "running" for s in panel.seen)        # it was live, not painted at the end
    assert "bad request for mb" in panel.state.rows["b"].detail
    assert "min_inputs is 2" in panel.state.rows["both"].detail
    view = panel.view
    assert ">failed<" in row_html(view.html.value, "b") and ">skipped<" in row_html(view.html.value, "both")
    a = panel.state.rows["a"]
    assert a.completion_tokens == result.nodes["a"].completion_tokens > 0
    assert a.elapsed(None) == pytest.approx(result.nodes["a"].latency_s, abs=1e-3)
    assert panel.state.text == result.output                   # the output node streamed in
    assert panel.state.usage == result.usage.to_json()
    assert "ok: 3 calls, 0 cache hits" in view.html.value
    assert view.answer == result.output


# -- the states of the operators beyond propose and aggregate -------------------------------------------

def test_cancelled_and_agreed_rows_show_their_state_colour_and_mark():
    from moa_dsl.jupyter.panel import STATES, _STATE_COLOURS, _TEXT_MARKS

    assert {"cancelled", "agreed"} <= set(STATES) <= set(_STATE_COLOURS)
    assert set(STATES) - {"waiting"} <= set(_TEXT_MARKS)
    zero = {"prompt_tokens": 0, "completion_tokens": 0}
    state = PanelState.from_graph(_graph())
    out = io.StringIO()
    view = TextView(state, stream=out)
    events = [
        Event("node_started", 0.1, "a", {"model": "m1", "provider": "fake"}),
        Event("node_cancelled", 0.3, "a", {"reason": "quorum"}),
        Event("node_finished", 0.3, "b", {"status": "ok", "usage": zero, "latency_s": 0.0, "agreed": True}),
        Event("node_finished", 0.4, "final", {"status": "ok", "usage": zero, "latency_s": 0.2,
                                              "selected": ["b"]}),
    ]
    changed = set()
    for ev in events:
        changed |= state.apply(ev)
    view.render(changed, None)
    rows = state.rows
    assert (rows["a"].state, rows["a"].detail, rows["a"].finished) == ("cancelled", "cancelled: quorum", 0.3)
    assert rows["b"].state == "agreed" and rows["final"].detail == "selected b"
    text = out.getvalue()
    assert f"{_TEXT_MARKS['cancelled']} a" in text and "cancelled" in text
    assert f"{_TEXT_MARKS['agreed']} b" in text and "agreed" in text
    widget = RunPanel(PanelState.from_graph(_graph()), widgets=True)
    widget.handle_many(events)
    html = widget.view.html.value
    assert ">cancelled<" in row_html(html, "a") and _STATE_COLOURS["cancelled"] in row_html(html, "a")
    assert ">agreed<" in row_html(html, "b") and _STATE_COLOURS["agreed"] in row_html(html, "b")
    assert "selected b" in row_html(html, "final")


def test_panel_after_a_real_run_with_quorum_agree_vote_and_rank(make_server, monkeypatch):
    from conftest import KEY
    from run_helpers import node, served
    from moa_dsl.jupyter.magics import run_with_panel

    texts = {"a": "Paris.", "b": "paris", "ranker": "[2] > [1]"}
    server = make_server(api_key=KEY, latency={"slow": 30.0},
                         responder=lambda m, b: texts.get(m, "other"))
    pipe = served({"a": node("propose", model="a"), "b": node("propose", model="b"),
                   "slow": node("propose", model="slow"),
                   "same": node("aggregate", ["a", "b"], agree=True),
                   "maj": node("vote", ["a", "b", "same"]),
                   "fast": node("aggregate", ["a", "b", "slow"], quorum=2),
                   "best": node("rank", ["maj", "fast"], model="ranker")}, "best", server.url)
    monkeypatch.setenv("FAKE_KEY", KEY)
    panel = RunPanel.for_pipeline(pipe, widgets=True)
    result = run_with_panel(pipe, "Capital of France?", panel=panel, cache=False)
    states = {n: r.state for n, r in panel.state.rows.items()}
    assert states == {"a": "done", "b": "done", "slow": "cancelled", "same": "agreed", "maj": "done",
                      "fast": "done", "best": "done"}
    assert {n: r.status for n, r in result.nodes.items()}["slow"] == "cancelled"
    assert panel.state.rows["maj"].model == "(vote)" and "votes 'paris' 3" in panel.state.rows["maj"].detail
    assert panel.state.rows["best"].detail == "selected fast"
    html = panel.view.html.value
    assert ">cancelled<" in row_html(html, "slow") and ">agreed<" in row_html(html, "same")
    assert result.output == "other"
