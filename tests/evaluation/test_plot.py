"""The summary plot: a valid SVG with two panels, points where the numbers say, the Pareto front."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from moa_dsl.evaluation.plot import Point, pareto_front, render_svg

NS = "{http://www.w3.org/2000/svg}"


def _row(name, win_rate, cost, latency, stderr=0.05):
    return {"name": name, "win_rate": win_rate, "stderr": None if win_rate is None else stderr,
            "cost_usd": cost, "latency_mean_s": latency}


def test_svg_is_valid_xml_with_two_panels_and_every_topology():
    rows = [_row("single", None, 0.01, 2.0), _row("moa<&>", 0.7, 0.05, 9.0), _row("wide", 0.6, None, 4.0)]
    root = ET.fromstring(render_svg(rows, title="a & b"))
    assert root.tag == f"{NS}svg"
    panels = [g for g in root.iter(f"{NS}g") if g.get("class") == "panel"]
    assert len(panels) == 2
    titles = [t.text for t in root.iter(f"{NS}title")]
    # cost panel: the unpriced topology is missing and said so; latency panel: all three
    assert sum("moa<&>" in t for t in titles) == 2
    assert sum(t.startswith("wide") for t in titles) == 1
    notes = [t.text for t in panels[0].iter(f"{NS}text") if t.text and "not plotted" in t.text]
    assert notes == ["not plotted (no value): wide"]
    # the baseline is drawn at 0.5 as a hollow square
    assert any(r.get("fill") == "white" and r.get("width") == "10" for r in root.iter(f"{NS}rect"))


def test_higher_win_rate_is_drawn_higher():
    rows = [_row("base", None, 1.0, 1.0), _row("good", 0.9, 1.0, 1.0), _row("bad", 0.1, 1.0, 1.0)]
    root = ET.fromstring(render_svg(rows))
    cy = {}
    for g in root.iter(f"{NS}g"):
        if g.get("class") == "point":
            name = g.find(f"{NS}title").text.split(":")[0]
            circle = g.find(f"{NS}circle")
            if circle is not None:
                cy.setdefault(name, float(circle.get("cy")))
    assert cy["good"] < cy["bad"]  # SVG y grows downwards


def test_pareto_front_keeps_only_undominated_points():
    pts = [Point("a", 0.5, None, 1.0), Point("b", 0.4, None, 2.0), Point("c", 0.8, None, 3.0),
           Point("d", 0.8, None, 4.0), Point("e", 0.9, None, None)]
    assert [p.name for p in pareto_front(pts)] == ["a", "c"]


def test_empty_and_zero_values_render():
    root = ET.fromstring(render_svg([_row("only", None, 0.0, None)]))
    assert root.tag == f"{NS}svg"
