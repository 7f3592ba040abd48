"""Quality against cost and against latency, as hand-written SVG (no matplotlib, no network).

`render_svg`: two panels side by side, like the cost figure of the MoA paper: win rate (0-1, against
the baseline) on y, cost per item in USD or mean latency per item in seconds on x. The baseline sits
at 0.5, where any topology judged against itself would. Each point carries its 95% bootstrap
interval as a vertical bar; points on the Pareto front (nothing else is both cheaper/faster and
better) are ringed and joined by a dashed line.

`render_param_svg`: a sweep's win rate against one swept parameter, one column per value, each
variant's point with its interval, and a line through the mean win rate per value.

Kept hand-written on purpose: the plotting libraries that write SVG offline (matplotlib, pygal)
would be a heavy or extra dependency for a few dozen shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from xml.sax.saxutils import escape

from .stats import pareto_flags

__all__ = ["COLORS", "pareto_front", "Point", "render_param_svg", "render_svg"]

PANEL_W, PANEL_H = 360, 280
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 36, 44
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Point:
    name: str
    y: float  # win rate, 0-1
    interval: tuple[float, float] | None  # the 95% interval, drawn as an error bar
    x: float | None  # None: not measurable (unpriced model, no successful item)
    baseline: bool = False
    front: bool | None = None  # on the Pareto front; None: work it out from the points


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points on the Pareto front (lower x, higher y), sorted by x: the ones flagged so, or,
    where no flag is given, the ones no other point beats on both axes."""
    flags = pareto_flags([(p.x, p.y) for p in points])
    chosen = [p for p, f in zip(points, flags, strict=False) if p.x is not None and (f if p.front is None else p.front)]
    return sorted(chosen, key=lambda p: (p.x, -p.y))


def render_svg(rows: Sequence[dict], *, title: str = "", y_label: str = "win rate vs baseline") -> str:
    """`rows` are summary.json topology rows; returns a complete SVG document."""
    colors = {row["name"]: COLORS[i % len(COLORS)] for i, row in enumerate(rows)}
    panels = [
        _panel(
            _points(rows, _cost_per_item, "pareto_cost"),
            colors,
            x_label="cost per item (USD)",
            x_offset=0,
            y_label=y_label,
        ),
        _panel(
            _points(rows, lambda r: r.get("latency_mean_s"), "pareto_latency"),
            colors,
            x_label="mean latency per item (s)",
            x_offset=PANEL_W,
            y_label=y_label,
        ),
    ]
    width, height = 2 * PANEL_W, PANEL_H + 24 + 18 * ((len(rows) + 2) // 3) + 18
    parts = [_head(width, height)]
    if title:
        parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>')
    parts += panels
    parts.append(_legend(rows, colors, y0=PANEL_H + 20))
    parts.append(
        f'<text x="20" y="{height - 8}" fill="#555">bars: 95% bootstrap interval; ringed and dashed: '
        "Pareto front (nothing cheaper/faster is better)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_param_svg(rows: Sequence[dict], key: str, values: Sequence[str], *, title: str = "") -> str:
    """Win rate against one swept parameter. `rows` are summary rows carrying `settings`
    ({key: value text}); rows without this key (the baseline as written) are drawn as a reference line."""
    colors = {row["name"]: COLORS[i % len(COLORS)] for i, row in enumerate(rows)}
    width = max(PANEL_W, MARGIN_L + MARGIN_R + 90 * len(values))
    height = PANEL_H + 18
    plot_w, plot_h = width - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B
    col = plot_w / max(1, len(values))

    def sy(y: float) -> float:
        return MARGIN_T + plot_h * (1 - max(0.0, min(1.0, y)))

    parts = [_head(width, height)]
    if title:
        parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>')
    parts.append('<g class="panel">')
    parts.append(f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    for i in range(6):
        y = i / 5
        parts.append(
            f'<line x1="{MARGIN_L}" y1="{sy(y):.1f}" x2="{MARGIN_L + plot_w}" y2="{sy(y):.1f}" stroke="#eee"/>'
        )
        parts.append(f'<text x="{MARGIN_L - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
    parts.append(
        f'<line x1="{MARGIN_L}" y1="{sy(0.5):.1f}" x2="{MARGIN_L + plot_w}" y2="{sy(0.5):.1f}" '
        f'stroke="#999" stroke-dasharray="2 2"><title>the baseline (0.5)</title></line>'
    )
    means = []
    for j, value in enumerate(values):
        center = MARGIN_L + col * (j + 0.5)
        parts.append(f'<text x="{center:.1f}" y="{MARGIN_T + plot_h + 14}" text-anchor="middle">{escape(value)}</text>')
        group = [r for r in rows if r.get("win_rate") is not None and (r.get("settings") or {}).get(key) == value]
        for k, row in enumerate(group):
            x = center + (k - (len(group) - 1) / 2) * min(10.0, col * 0.6 / max(1, len(group)))
            point = Point(row["name"], row["win_rate"], _interval(row), x)
            parts.append(_marker(point, x, sy, colors[row["name"]]))
        if group:
            means.append((center, sum(r["win_rate"] for r in group) / len(group)))
    if len(means) > 1:
        path = " ".join(f"{x:.1f},{sy(y):.1f}" for x, y in means)
        parts.append(
            f'<polyline class="mean" points="{path}" fill="none" stroke="#333"><title>mean win rate '
            f"per value of {escape(key)}</title></polyline>"
        )
    parts.append(f'<text x="{MARGIN_L + plot_w / 2}" y="{PANEL_H - 8}" text-anchor="middle">{escape(key)}</text>')
    parts.append(
        f'<text transform="translate(14,{MARGIN_T + plot_h / 2}) rotate(-90)" '
        'text-anchor="middle">win rate vs baseline</text>'
    )
    parts.append("</g>")
    parts.append(
        f'<text x="20" y="{height - 6}" fill="#555">each point a variant (bar: 95% bootstrap interval); '
        "line: mean per value; dashed: the baseline</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _head(width: float, height: float) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11">\n'
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>'
    )


def _cost_per_item(row: dict) -> float | None:
    cost, n = row.get("cost_usd"), row.get("n")
    if cost is None:
        return None
    return cost / n if n else cost


def _interval(row: dict) -> tuple[float, float] | None:
    ci = row.get("win_rate_ci")
    if ci is not None:
        return ci[0], ci[1]
    if row.get("stderr") and row.get("win_rate") is not None:  # a row from before intervals
        return row["win_rate"] - row["stderr"], row["win_rate"] + row["stderr"]
    return None


def _points(rows: Sequence[dict], x_of: Callable[[dict], Any], front_key: str) -> list[Point]:
    return [
        Point(
            name=r["name"],
            y=0.5 if r["win_rate"] is None else r["win_rate"],
            interval=_interval(r),
            x=x_of(r),
            baseline=r["win_rate"] is None,
            front=r.get(front_key),
        )
        for r in rows
    ]


def _panel(
    points: list[Point], colors: dict[str, str], *, x_label: str, x_offset: int, y_label: str = "win rate vs baseline"
) -> str:
    placed = [p for p in points if p.x is not None]
    xs = {p.name: p.x for p in placed if p.x is not None}
    x_max = _nice_max(max(xs.values(), default=0.0))
    plot_w = PANEL_W - MARGIN_L - MARGIN_R
    plot_h = PANEL_H - MARGIN_T - MARGIN_B

    def sx(x: float) -> float:
        return x_offset + MARGIN_L + plot_w * (x / x_max)

    def sy(y: float) -> float:
        return MARGIN_T + plot_h * (1 - max(0.0, min(1.0, y)))

    out = [
        '<g class="panel">',
        f'<rect x="{x_offset + MARGIN_L}" y="{MARGIN_T}" width="{plot_w}" height="{plot_h}" '
        f'fill="none" stroke="#999"/>',
    ]
    for i in range(6):  # grid and ticks: y in fifths, x in fifths of a rounded maximum
        y, x = i / 5, x_max * i / 5
        out.append(f'<line x1="{sx(0)}" y1="{sy(y):.1f}" x2="{sx(x_max)}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{sx(0) - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
        out.append(f'<text x="{sx(x):.1f}" y="{MARGIN_T + plot_h + 14}" text-anchor="middle">{_fmt(x)}</text>')
    out.append(
        f'<text x="{x_offset + MARGIN_L + plot_w / 2}" y="{PANEL_H - 8}" text-anchor="middle">{escape(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate({x_offset + 14},{MARGIN_T + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    front = pareto_front(placed)
    if len(front) > 1:
        path = " ".join(f"{sx(xs[p.name]):.1f},{sy(p.y):.1f}" for p in front)
        out.append(f'<polyline class="front" points="{path}" fill="none" stroke="#555" stroke-dasharray="4 3"/>')
    on_front = {p.name for p in front}
    for p in placed:
        out.append(_marker(p, sx(xs[p.name]), sy, colors[p.name], front=p.name in on_front))
    missing = [p.name for p in points if p.x is None]
    if missing:
        note = "not plotted (no value): " + ", ".join(missing)
        out.append(f'<text x="{x_offset + MARGIN_L}" y="{MARGIN_T - 6}" fill="#777">{escape(note)}</text>')
    out.append("</g>")
    return "\n".join(out)


def _marker(p: Point, x: float, sy: Callable[[float], float], color: str, *, front: bool = False) -> str:
    tip = f"{p.name}: win rate {p.y:.3f}"
    if p.interval is not None:
        tip += f" (95% CI {p.interval[0]:.3f}-{p.interval[1]:.3f})"
    parts = [f'<g class="point"><title>{escape(tip + (", on the Pareto front" if front else ""))}</title>']
    if p.interval is not None and p.interval[1] > p.interval[0]:
        low, high = sy(p.interval[0]), sy(p.interval[1])
        parts.append(
            f'<line class="interval" x1="{x:.1f}" y1="{low:.1f}" x2="{x:.1f}" y2="{high:.1f}" stroke="{color}"/>'
        )
        for y in (low, high):
            parts.append(f'<line x1="{x - 3:.1f}" y1="{y:.1f}" x2="{x + 3:.1f}" y2="{y:.1f}" stroke="{color}"/>')
    if p.baseline:  # a hollow square: the reference, not a measurement
        parts.append(
            f'<rect x="{x - 5:.1f}" y="{sy(p.y) - 5:.1f}" width="10" height="10" '
            f'fill="white" stroke="{color}" stroke-width="2"/>'
        )
    else:
        parts.append(f'<circle cx="{x:.1f}" cy="{sy(p.y):.1f}" r="5" fill="{color}"/>')
    if front:
        parts.append(
            f'<circle class="pareto" cx="{x:.1f}" cy="{sy(p.y):.1f}" r="8.5" fill="none" '
            'stroke="#333" stroke-width="1.2"/>'
        )
    parts.append("</g>")
    return "".join(parts)


def _legend(rows: Sequence[dict], colors: dict[str, str], *, y0: int) -> str:
    out = ['<g class="legend">']
    for i, row in enumerate(rows):
        x, y = 20 + (i % 3) * 2 * PANEL_W // 3, y0 + 18 * (i // 3)
        label = row["name"] + (" (baseline)" if row["win_rate"] is None else "")
        out.append(
            f'<circle cx="{x}" cy="{y - 4}" r="5" fill="{colors[row["name"]]}"/>'
            f'<text x="{x + 10}" y="{y}">{escape(label)}</text>'
        )
    out.append("</g>")
    return "\n".join(out)


def _nice_max(x: float) -> float:
    """A round upper bound for an axis (1, 2, 2.5, 5 times a power of ten), never 0."""
    if x <= 0:
        return 1.0
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
