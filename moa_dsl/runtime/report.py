"""A finished run as text, HTML and Markdown: the totals line, the node table, why the output failed.

Pure string builders (no IPython, no widgets): `RunResult` displays itself with them, the CLI prints
the totals line, and the notebook panel leaves the HTML record behind when a run ends.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .result import NodeResult, RunResult

__all__ = ["failure_reason", "node_detail", "result_html", "result_markdown", "totals_line"]


def totals_line(status: str, usage: Any, elapsed_s: float | None) -> str:
    """`ok: 4 calls, 0 cache hits, 120 prompt + 80 completion tokens (30 saved by the cache), 1.20s`."""
    saved = _get(usage, "saved_prompt_tokens") + _get(usage, "saved_completion_tokens")
    cost = usage.get("cost_usd") if isinstance(usage, dict) else getattr(usage, "cost_usd", None)
    return (
        f"{status}: {_get(usage, 'calls')} calls, {_get(usage, 'cache_hits')} cache hits, "
        f"{_get(usage, 'prompt_tokens')} prompt + {_get(usage, 'completion_tokens')} completion tokens"
        + (f" ({saved} saved by the cache)" if saved else "")
        + (f", ${cost:.6f}" if cost else "")
        + (f", {elapsed_s:.2f}s" if elapsed_s is not None else "")
    )


def failure_reason(result: "RunResult") -> str:
    """Why the output node gave no answer, in words: its error, or its status."""
    node: NodeResult | None = result.nodes.get(result.output_node)
    if node is None:
        return "it did not run"
    return node.error or f"it was {node.status}"


def _get(usage: Any, key: str) -> int:
    value = usage.get(key, 0) if isinstance(usage, dict) else getattr(usage, key, 0)
    return int(value or 0)


def _fmt_s(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}s"


def _rows(result: "RunResult") -> list[tuple[str, str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str, str]] = []
    for name, n in result.nodes.items():
        p, c = n.prompt_tokens, n.completion_tokens
        model = f"{n.provider}:{n.model}" if n.provider is not None else "(vote: no call)"
        rows.append((name, n.status, model, _fmt_s(n.latency_s), f"{p} / {c}" if (p or c) else "", node_detail(n)))
    return rows


def node_detail(n: "NodeResult") -> str:
    """What a node's row says beside its status: its error or skip reason, why it was cancelled,
    that its inputs agreed, what a ranker selected, a vote's tally."""
    if n.error:
        return n.error
    if n.status == "cancelled":
        return f"cancelled: {n.reason}"
    if n.agreed:
        return "agreed: no call"
    if n.selected:
        return "selected " + ", ".join(n.selected)
    if n.votes:
        return "votes " + ", ".join(f"{a[:40]!r} {k}" for a, k in n.votes.items())
    return ""


_HEAD = ("node", "status", "model", "latency", "tokens in / out", "detail")


def result_html(result: "RunResult") -> str:
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in _HEAD) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _rows(result))
    answer = html.escape(result.output) if result.output is not None else "<i>no output</i>"
    totals = totals_line(result.status, result.usage, result.elapsed_s)
    return (
        f"<div><b>{html.escape(totals)}</b></div>"
        f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
        f"<div><b>{html.escape(str(result.output_node))}</b>:</div>"
        f"<pre style='white-space:pre-wrap'>{answer}</pre>"
    )


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def result_markdown(result: "RunResult") -> str:
    totals = totals_line(result.status, result.usage, result.elapsed_s)
    lines = [f"**{totals}**", "", "| " + " | ".join(_HEAD) + " |", "| --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in _rows(result)]
    lines += ["", f"**{result.output_node}**:", "", result.output if result.output is not None else "_no output_"]
    return "\n".join(lines)
