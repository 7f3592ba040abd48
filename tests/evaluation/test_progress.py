"""The progress display: tqdm bars on a terminal, plain lines (no carriage return) elsewhere."""
from __future__ import annotations

import io
from types import SimpleNamespace

import networkx as nx

from moa_dsl.evaluation import progress as progress_mod
from moa_dsl.evaluation.progress import Progress


class Tty(io.StringIO):
    def isatty(self):
        return True


def _graph():
    g = nx.DiGraph()
    g.add_node("a", params={"price": [1.0, 2.0]})
    return g


def _events(p, graph=None):
    on = p.listener(graph)
    on(SimpleNamespace(kind="node_finished", node="a", data={"status": "ok",
                                                             "usage": {"prompt_tokens": 10, "completion_tokens": 5}}))
    on(SimpleNamespace(kind="cache_hit", node="a", data={}))
    on(SimpleNamespace(kind="node_failed", node="a", data={"error": "x"}))


def test_plain_stream_gets_periodic_lines_without_carriage_returns(monkeypatch):
    stream = io.StringIO()
    p = Progress(items=2, units=0, stream=stream)
    p.add(units=4)
    _events(p, _graph())
    monkeypatch.setattr(progress_mod, "PLAIN_EVERY_S", 0.0)
    p.unit()
    p.item()
    monkeypatch.setattr(progress_mod, "PLAIN_EVERY_S", 3600.0)
    p.unit()                       # within the period: no line
    p.note("eval: x failed on item 1: boom")
    p.close()
    p.close()                      # once only
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4          # after the unit, after the item, the note, the last line
    assert lines[0].startswith("eval: 0/2 items, 2 calls, 1 cache hits, 15 tokens, $0.000020 spent | 1/4 steps")
    assert lines[1].startswith("eval: 1/2 items") and "1/4 steps" in lines[1]
    assert lines[2] == "eval: x failed on item 1: boom"
    assert lines[3].startswith("eval: 1/2 items") and "2/4 steps" in lines[3] and "ETA" in lines[3]


def test_a_sweep_counts_items_per_variant():
    stream = io.StringIO()
    p = Progress(items=0, units=0, stream=stream, label="sweep", variants={"file": 4, "t=0.3": 4})
    p.add(units=8)
    p.variant_item("file")
    p.variant_item("t=0.3")
    p.variant_item("t=0.3")
    p.item()                       # no double count in a sweep
    p.add(units=4, variants={"t=0.3": 8})
    p.close()
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("sweep: 3/12 items") and "items per variant: file 1/4, t=0.3 2/8" in line


def test_a_terminal_gets_tqdm_bars():
    stream = Tty()
    p = Progress(items=1, units=0, stream=stream, label="sweep", variants={"a": 1, "b": 1})
    assert p.mode == "terminal"
    p.add(units=2)
    _events(p)
    p.unit()
    p.variant_item("a")
    p.unit()
    p.variant_item("b")
    p.close()
    text = stream.getvalue()
    assert "\r" in text and "sweep: 2/2 items, 2 calls, 1 cache hits" in text and "100%" in text


def test_no_stream_is_silent():
    p = Progress(items=1, units=1, stream=None)
    p.unit()
    p.note("x")
    p.close()
    assert p.mode == "off"
