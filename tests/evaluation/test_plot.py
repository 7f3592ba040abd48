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


def test_intervals_are_error_bars_and_the_front_is_ringed():
    rows = [{**_row("base", None, 0.01, 2.0), "pareto_cost": True, "pareto_latency": True},
            {**_row("good", 0.8, 0.05, 1.0), "win_rate_ci": [0.6, 0.95], "pareto_cost": True, "pareto_latency": True},
            {**_row("bad", 0.3, 0.08, 3.0), "win_rate_ci": [0.1, 0.5], "pareto_cost": False, "pareto_latency": False}]
    root = ET.fromstring(render_svg(rows))
    bars = [ln for ln in root.iter(f"{NS}line") if ln.get("class") == "interval"]
    assert len(bars) == 4                      # two measured points, two panels; the baseline has none
    rings = [c for c in root.iter(f"{NS}circle") if c.get("class") == "pareto"]
    assert len(rings) == 4                     # base and good, in both panels
    titles = [t.text for t in root.iter(f"{NS}title")]
    assert any("good" in t and "95% CI 0.600-0.950" in t and "Pareto" in t for t in titles)
    assert not any(t.startswith("bad") and "Pareto" in t for t in titles)


def test_the_cost_axis_is_per_item():
    rows = [_row("base", None, 1.0, 1.0), {**_row("halved", 0.6, 0.2, 1.0), "n": 2}]
    rows[0]["n"] = 10
    root = ET.fromstring(render_svg(rows))
    cost_panel = next(g for g in root.iter(f"{NS}g") if g.get("class") == "panel")
    ticks = [t.text for t in cost_panel.iter(f"{NS}text")]
    assert "cost per item (USD)" in ticks and "0.1" in ticks      # 1.0 / 10 and 0.2 / 2: an axis up to 0.1


def test_param_plot_has_a_column_per_value_and_a_mean_line():
    from moa_dsl.evaluation.plot import render_param_svg

    rows = [{**_row("file", None, 1, 1), "settings": None},
            {**_row("t=0.3,n=1", 0.4, 1, 1), "win_rate_ci": [0.3, 0.5], "settings": {"t": "0.3", "n": "1"}},
            {**_row("t=0.3,n=3", 0.6, 1, 1), "win_rate_ci": [0.5, 0.7], "settings": {"t": "0.3", "n": "3"}},
            {**_row("t=0.7,n=1", 0.5, 1, 1), "win_rate_ci": [0.4, 0.6], "settings": {"t": "0.7", "n": "1"}}]
    root = ET.fromstring(render_param_svg(rows, "t", ["0.3", "0.7"], title="win rate against t"))
    labels = [t.text for t in root.iter(f"{NS}text")]
    assert "0.3" in labels and "0.7" in labels and "t" in labels
    points = [g.find(f"{NS}title").text for g in root.iter(f"{NS}g") if g.get("class") == "point"]
    assert sorted(p.split(":")[0] for p in points) == ["t=0.3,n=1", "t=0.3,n=3", "t=0.7,n=1"]
    assert sum(1 for p in root.iter(f"{NS}polyline") if p.get("class") == "mean") == 1
