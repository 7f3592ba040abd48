"""Quality against cost and against latency, as one hand-written SVG (no matplotlib, no network).

Two panels side by side, like the cost figure of the MoA paper: win rate (0-1, against the baseline)
on y, cost in USD or mean latency in seconds on x. The baseline sits at 0.5, where any topology
judged against itself would. Each point carries its standard error as a vertical bar, and the
Pareto frontier (nothing else is both cheaper/faster and better) is drawn as a dashed line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence
from xml.sax.saxutils import escape

__all__ = ["COLORS", "pareto_front", "Point", "render_svg"]

PANEL_W, PANEL_H = 360, 280
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 36, 44
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Point:
    name: str
    y: float                  # win rate, 0-1
    stderr: float | None
    x: float | None           # None: not measurable (unpriced model, no successful item)
    baseline: bool = False


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both axes (lower x, higher y), sorted by x."""
    placed = sorted((p for p in points if p.x is not None), key=lambda p: (p.x, -p.y))
    front: list[Point] = []
    for p in placed:
        if not front or p.y > front[-1].y:
            front.append(p)
    return front


def render_svg(rows: Sequence[dict], *, title: str = "") -> str:
    """`rows` are summary.json topology rows; returns a complete SVG document."""
    colors = {row["name"]: COLORS[i % len(COLORS)] for i, row in enumerate(rows)}
    panels = [
        _panel(_points(rows, "cost_usd"), colors, x_label="cost (USD)", x_offset=0),
        _panel(_points(rows, "latency_mean_s"), colors, x_label="mean latency per item (s)",
               x_offset=PANEL_W),
    ]
    width, height = 2 * PANEL_W, PANEL_H + 24 + 18 * ((len(rows) + 2) // 3)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">')
    parts = [head, f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>')
    parts += panels
    parts.append(_legend(rows, colors, y0=PANEL_H + 20))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _points(rows: Sequence[dict], x_key: str) -> list[Point]:
    return [Point(name=r["name"], y=0.5 if r["win_rate"] is None else r["win_rate"],
                  stderr=r.get("stderr"), x=r.get(x_key), baseline=r["win_rate"] is None)
            for r in rows]


def _panel(points: list[Point], colors: dict[str, str], *, x_label: str, x_offset: int) -> str:
    placed = [p for p in points if p.x is not None]
    xs = {p.name: p.x for p in placed if p.x is not None}
    x_max = _nice_max(max(xs.values(), default=0.0))
    plot_w = PANEL_W - MARGIN_L - MARGIN_R
    plot_h = PANEL_H - MARGIN_T - MARGIN_B

    def sx(x: float) -> float:
        return x_offset + MARGIN_L + plot_w * (x / x_max)

    def sy(y: float) -> float:
        return MARGIN_T + plot_h * (1 - max(0.0, min(1.0, y)))

    out = ['<g class="panel">',
           f'<rect x="{x_offset + MARGIN_L}" y="{MARGIN_T}" width="{plot_w}" height="{plot_h}" '
           f'fill="none" stroke="#999"/>']
    for i in range(6):  # grid and ticks: y in fifths, x in fifths of a rounded maximum
        y, x = i / 5, x_max * i / 5
        out.append(f'<line x1="{sx(0)}" y1="{sy(y):.1f}" x2="{sx(x_max)}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{sx(0) - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
        out.append(f'<text x="{sx(x):.1f}" y="{MARGIN_T + plot_h + 14}" text-anchor="middle">{_fmt(x)}</text>')
    out.append(f'<text x="{x_offset + MARGIN_L + plot_w / 2}" y="{PANEL_H - 8}" text-anchor="middle">'
               f'{escape(x_label)}</text>')
    out.append(f'<text transform="translate({x_offset + 14},{MARGIN_T + plot_h / 2}) rotate(-90)" '
               f'text-anchor="middle">win rate vs baseline</text>')
    front = pareto_front(placed)
    if len(front) > 1:
        path = " ".join(f"{sx(xs[p.name]):.1f},{sy(p.y):.1f}" for p in front)
        out.append(f'<polyline points="{path}" fill="none" stroke="#555" stroke-dasharray="4 3"/>')
    for p in placed:
        out.append(_marker(p, sx(xs[p.name]), sy, colors[p.name]))
    missing = [p.name for p in points if p.x is None]
    if missing:
        note = "not plotted (no value): " + ", ".join(missing)
        out.append(f'<text x="{x_offset + MARGIN_L}" y="{MARGIN_T - 6}" fill="#777">{escape(note)}</text>')
    out.append("</g>")
    return "\n".join(out)


def _marker(p: Point, x: float, sy, color: str) -> str:
    parts = [f'<g class="point"><title>{escape(p.name)}: win rate {p.y:.3f}</title>']
    if p.stderr:
        parts.append(f'<line x1="{x:.1f}" y1="{sy(p.y - p.stderr):.1f}" x2="{x:.1f}" '
                     f'y2="{sy(p.y + p.stderr):.1f}" stroke="{color}"/>')
    if p.baseline:  # a hollow square: the reference, not a measurement
        parts.append(f'<rect x="{x - 5:.1f}" y="{sy(p.y) - 5:.1f}" width="10" height="10" '
                     f'fill="white" stroke="{color}" stroke-width="2"/>')
    else:
        parts.append(f'<circle cx="{x:.1f}" cy="{sy(p.y):.1f}" r="5" fill="{color}"/>')
    parts.append("</g>")
    return "".join(parts)


def _legend(rows: Sequence[dict], colors: dict[str, str], *, y0: int) -> str:
    out = ['<g class="legend">']
    for i, row in enumerate(rows):
        x, y = 20 + (i % 3) * 2 * PANEL_W // 3, y0 + 18 * (i // 3)
        label = row["name"] + (" (baseline)" if row["win_rate"] is None else "")
        out.append(f'<circle cx="{x}" cy="{y - 4}" r="5" fill="{colors[row["name"]]}"/>'
                   f'<text x="{x + 10}" y="{y}">{escape(label)}</text>')
    out.append("</g>")
    return "\n".join(out)


def _nice_max(x: float) -> float:
    """A round upper bound for an axis (1, 2, 2.5, 5 times a power of ten), never 0."""
    if x <= 0:
        return 1.0
    import math

    base = 10 ** math.floor(math.log10(x))
    for step in (1, 2, 2.5, 5, 10):
        if x <= step * base:
            return step * base
    return 10 * base


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.3g}"
    return f"{x:.2g}"
