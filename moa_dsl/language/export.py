"""A validated graph as JSON (the README's shape), Mermaid, Graphviz dot, or a standalone SVG.

None of them needs a network or an external renderer. An `env("X")` value is shown as such,
never resolved.
"""

from __future__ import annotations

import html
import json
from html import escape
from typing import Any, Sequence

import networkx as nx

from ..config import EnvRef
from ..errors import Diagnostic

__all__ = [
    "depths",
    "FORMATS",
    "to_dot",
    "to_json",
    "to_json_text",
    "to_mermaid",
    "to_svg",
    "topology_html",
    "topology_text",
]


def _plain(value: Any) -> Any:
    """JSON-safe, and never an environment value: EnvRef shows as `env("X")`."""
    if isinstance(value, EnvRef):
        return f'env("{value.name}")'
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def to_json(graph: nx.DiGraph) -> dict[str, Any]:
    nodes = [
        {
            "name": name,
            "role": a["role"],
            "provider": a["provider"],
            "model": a["model"],
            "sample": a["sample"],
            "inputs": list(a["inputs"]),
            "params": _plain(a["params"]),
        }
        for name, a in graph.nodes(data=True)
    ]
    return {"output": graph.graph.get("output"), "nodes": nodes, "edges": [[u, v] for u, v in graph.edges]}


def to_json_text(graph: nx.DiGraph) -> str:
    return json.dumps(to_json(graph), indent=2, ensure_ascii=False)


def _model_text(attrs: dict[str, Any]) -> str:
    """The declared model NAME, or `provider:id` for an inline one."""
    if attrs.get("model_name"):
        return str(attrs["model_name"])
    return f"{attrs.get('provider', '')}:{attrs.get('model', '')}"


def _label(name: str, attrs: dict[str, Any]) -> tuple[str, str]:
    """(title, subtitle): the node name, and what it does: its model; a rank node's also says how
    many answers it passes on; a vote calls no model."""
    role = attrs.get("role")
    if role == "vote":
        return name, "majority vote"
    if role == "rank":
        return name, f"rank by {_model_text(attrs)}, top {attrs.get('params', {}).get('top_k', 1)}"
    return name, _model_text(attrs)


# ---- mermaid -------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    return escape(text, quote=False).replace('"', "#quot;")


# A rank node is a hexagon, a vote a rhombus; the model calls (propose, aggregate) are boxes.
_MERMAID_SHAPES = {"rank": ("{{", "}}"), "vote": ("{", "}")}


def to_mermaid(graph: nx.DiGraph) -> str:
    ids = {name: f"n{i}" for i, name in enumerate(graph)}
    out = ["flowchart LR"]
    by_layer: dict[str | None, list[str]] = {}
    for name, layer in graph.nodes(data="layer"):
        by_layer.setdefault(layer, []).append(name)
    for i, (layer, names) in enumerate(by_layer.items()):
        indent = "  " if layer is None else "    "
        if layer is not None:
            out.append(f'  subgraph L{i}["{_mermaid_text(layer)}"]')
        for name in names:
            title, model = _label(name, graph.nodes[name])
            opening, closing = _MERMAID_SHAPES.get(graph.nodes[name].get("role"), ("[", "]"))
            out.append(
                f'{indent}{ids[name]}{opening}"{_mermaid_text(title)}<br/><small>{_mermaid_text(model)}'
                f'</small>"{closing}'
            )
        if layer is not None:
            out.append("  end")
    out += [f"  {ids[u]} --> {ids[v]}" for u, v in graph.edges]
    output, dead = graph.graph.get("output"), graph.graph.get("dead", frozenset())
    if output in ids:
        out += ["  classDef output stroke-width:3px", f"  class {ids[output]} output"]
    if dead:
        out += [
            "  classDef dead stroke-dasharray:4 3,color:#888",
            f"  class {','.join(ids[n] for n in graph if n in dead)} dead",
        ]
    return "\n".join(out) + "\n"


# ---- dot -----------------------------------------------------------------------------------


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_DOT_SHAPES = {"rank": ", shape=hexagon", "vote": ", shape=diamond"}


def to_dot(graph: nx.DiGraph) -> str:
    out = ["digraph moa {", "  rankdir=LR;", '  node [shape=box, style=rounded, fontname="Helvetica"];']
    output, dead = graph.graph.get("output"), graph.graph.get("dead", frozenset())
    layers: dict[str, list[str]] = {}
    for name, attrs in graph.nodes(data=True):
        title, model = _label(name, attrs)
        extra = (
            ", penwidth=2.5" if name == output else ', style="rounded,dashed", fontcolor=gray50' if name in dead else ""
        )
        shape = _DOT_SHAPES.get(attrs.get("role"), "")
        out.append(f"  {_dot_quote(name)} [label={_dot_quote(title + chr(10) + model)}{shape}{extra}];")
        if attrs.get("layer"):
            layers.setdefault(attrs["layer"], []).append(name)
    for i, (layer, names) in enumerate(layers.items()):
        out.append(
            f"  subgraph cluster_{i} {{ label={_dot_quote(layer)}; style=dotted; "
            + " ".join(_dot_quote(n) + ";" for n in names)
            + " }"
        )
    out += [f"  {_dot_quote(u)} -> {_dot_quote(v)};" for u, v in graph.edges]
    out.append("}")
    return "\n".join(out) + "\n"


# ---- svg -----------------------------------------------------------------------------------

_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _MARGIN = 190, 46, 70, 18, 20


def depths(graph: nx.DiGraph) -> dict[str, int]:
    """Longest-path depth from the sources: a node's column in a left-to-right drawing."""
    if not nx.is_directed_acyclic_graph(graph):
        return {n: 0 for n in graph}
    depth: dict[str, int] = {}
    for n in nx.topological_sort(graph):
        depth[n] = max((depth[p] + 1 for p in graph.predecessors(n)), default=0)
    return depth


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def to_svg(graph: nx.DiGraph) -> str:
    depth = depths(graph)
    columns: dict[int, list[str]] = {}
    for n in graph:
        columns.setdefault(depth[n], []).append(n)
    pos = {
        n: (_MARGIN + d * (_BOX_W + _GAP_X), _MARGIN + row * (_BOX_H + _GAP_Y))
        for d, names in columns.items()
        for row, n in enumerate(names)
    }
    width = _MARGIN * 2 + (max(columns, default=0) + 1) * (_BOX_W + _GAP_X) - _GAP_X
    bottom = {d: _MARGIN + len(names) * (_BOX_H + _GAP_Y) - _GAP_Y for d, names in columns.items()}
    paths, lanes = _edge_paths(graph, depth, pos, bottom)
    height = max([*bottom.values(), *lanes]) + _MARGIN
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica,Arial,sans-serif" font-size="12">',
        '<defs><marker id="moa-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#667"/></marker></defs>',
    ]
    out += [f'<path d="{d}" fill="none" stroke="#889" stroke-width="1.2" marker-end="url(#moa-arrow)"/>' for d in paths]
    output, dead = graph.graph.get("output"), graph.graph.get("dead", frozenset())
    for n, (x, y) in pos.items():
        title, model = _label(n, graph.nodes[n])
        role = graph.nodes[n].get("role")
        fill, outline = _SVG_STYLE.get(role, _SVG_STYLE["aggregate"])
        stroke = "#1976d2" if n == output else "#999" if n in dead else outline
        extra = ' stroke-dasharray="4 3"' if n in dead else ""
        if n == output:  # the theme's brand colour where there is one: #222 vanished on a dark theme
            extra += ' style="stroke:var(--jp-brand-color1, #1976d2)"'
        paint = f'fill="{fill}" stroke="{stroke}" stroke-width="{2.5 if n == output else 1.2}"{extra}'
        what = "no model" if role == "vote" else graph.nodes[n].get("model")
        out.append(
            f'<g class="moa-{escape(str(role))}">'
            f"<title>{escape(n)} ({escape(str(role))}: {escape(str(what))})</title>"
            f"{_svg_shape(role, x, y, paint)}"
            f'<text x="{x + 10}" y="{y + 19}" font-weight="bold">{escape(_short(title))}</text>'
            f'<text x="{x + 10}" y="{y + 36}" fill="#556">{escape(_short(model, 30))}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# (fill, outline) per role: proposers blue, aggregators orange, rank nodes violet, votes green.
_SVG_STYLE = {
    "propose": ("#eef4ff", "#668"),
    "aggregate": ("#fff4e6", "#668"),
    "rank": ("#f3eeff", "#7a5cc2"),
    "vote": ("#eafaef", "#3d8f5a"),
}


def _svg_shape(role: str | None, x: int, y: int, paint: str) -> str:
    """A box for a model call; a hexagon for a rank node; a pill (fully rounded ends) for a vote."""
    if role == "rank":
        c, w, h = 10, _BOX_W, _BOX_H
        points = f"{x + c},{y} {x + w - c},{y} {x + w},{y + h / 2} {x + w - c},{y + h} {x + c},{y + h} {x},{y + h / 2}"
        return f'<polygon points="{points}" {paint}/>'
    radius = _BOX_H / 2 if role == "vote" else 7
    return f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="{radius:g}" {paint}/>'


def _edge_paths(
    graph: nx.DiGraph, depth: dict[str, int], pos: dict[str, tuple[int, int]], bottom: dict[int, int]
) -> tuple[list[str], list[float]]:
    """One SVG path per edge. An edge between neighbouring columns is one curve; a skip connection
    (over one column or more) runs in its own lane below the columns it passes, never behind a box."""
    paths: list[str] = []
    lanes: list[float] = []
    bend = _GAP_X / 3
    for u, v in graph.edges:
        (x1, top1), (x2, top2) = pos[u], pos[v]
        x1, y1, y2 = x1 + _BOX_W, top1 + _BOX_H / 2, top2 + _BOX_H / 2  # y: the boxes' middles
        passed = range(depth[u] + 1, depth[v])
        if not passed:
            mid = (x1 + x2) / 2
            paths.append(f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
            continue
        lane = max(bottom[d] for d in passed) + _GAP_Y / 2 + 6 * len(lanes)
        lanes.append(lane + _GAP_Y / 2)
        paths.append(
            f"M{x1},{y1} C{x1 + bend},{y1} {x1 + bend},{lane} {x1 + 2 * bend},{lane} "
            f"L{x2 - 2 * bend},{lane} C{x2 - bend},{lane} {x2 - bend},{y2} {x2},{y2}"
        )
    return paths, lanes


FORMATS = {"mermaid": to_mermaid, "dot": to_dot, "json": lambda g: to_json_text(g) + "\n", "svg": to_svg}


# ---- rich display: what `Topology._repr_html_` shows --------------------------------------------


def _graph_svg(graph: nx.DiGraph) -> str | None:
    try:
        return to_svg(graph)
    except Exception:  # a drawing problem must never hide the topology itself
        return None


def _node_label(attrs: dict) -> str:
    if attrs.get("role") == "vote":
        return "(no model)"
    sample = f" #{attrs['sample']}" if attrs.get("sample") else ""
    return f"{attrs.get('provider', '')}:{attrs.get('model', '')}{sample}"


def topology_text(g: nx.DiGraph, *, name: str | None = None) -> str:
    """The plain-text form of a topology: one line per node, in dependency order."""
    lines = [f"Pipeline {name or ''}".rstrip() + f": {_nodes(g.number_of_nodes())}, output {g.graph.get('output')}"]
    for name in _ordered(g):
        a = g.nodes[name]
        ins = f" <- {', '.join(a.get('inputs', ()))}" if a.get("inputs") else ""
        lines.append(f"  {name} = {a.get('role', '?')} {_node_label(a)}{ins}")
    return "\n".join(lines)


def _nodes(n: int) -> str:
    return f"{n} node" if n == 1 else f"{n} nodes"


def _ordered(g: nx.DiGraph) -> list[str]:
    return list(nx.topological_sort(g))


def topology_html(g: nx.DiGraph, *, name: str | None = None, warnings: Sequence[Diagnostic] = ()) -> str:
    """The graph as inline SVG with a node table: a pure string, no IPython, no network."""
    dead = g.graph.get("dead", frozenset())
    rows = "".join(
        f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(g.nodes[n].get('role', ''))}</td>"
        f"<td>{html.escape(_node_label(g.nodes[n]))}</td>"
        f"<td>{html.escape(', '.join(g.nodes[n].get('inputs', ())))}</td>"
        f"<td>{'dead' if n in dead else ''}</td></tr>"
        for n in _ordered(g)
    )
    svg = _graph_svg(g)
    title = html.escape(name or "pipeline")
    parts = [
        f"<div><b>{title}</b>: {_nodes(g.number_of_nodes())}, output "
        f"<code>{html.escape(str(g.graph.get('output')))}</code></div>"
    ]
    if svg:
        parts.append(f"<div style='max-width:100%;overflow:auto'>{svg}</div>")
    table = (
        "<table><thead><tr><th>node</th><th>role</th><th>model</th><th>inputs</th><th></th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )
    parts.append(f"<details{'' if svg else ' open'}><summary>nodes</summary>{table}</details>")
    if warnings:
        warn = "\n".join(f"warning[{d.code}]: {d.message}" for d in warnings)
        parts.append(f"<pre style='color:#b26a00'>{html.escape(warn)}</pre>")
    return "\n".join(parts)
