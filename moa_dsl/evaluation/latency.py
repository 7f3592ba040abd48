"""One topology on one item: its answer, calls, tokens, cost, and critical-path latency (with a ledger
that keeps a cached call's measured duration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.report import failure_reason
from .data import Item

__all__ = ["ItemRun", "LatencyLedger", "run_item"]

# --- one topology on one item --------------------------------------------------------------------


@dataclass
class ItemRun:
    """One topology's answer to one item, with what it took (cached calls included: this is what
    the topology costs, not what this particular evaluation happened to spend)."""

    status: str  # "ok" | "failed"
    output: str | None
    error: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None: some node has no price
    latency_s: float | None = 0.0  # None: a cached call's duration is not known


class LatencyLedger:
    """Call durations by response-cache key, so a cached call keeps the latency it was measured with."""

    def __init__(self, directory: Path | None):
        self._db = None
        self._fresh: set[str] = set()  # keys measured by this evaluation
        if directory is not None:
            try:
                import diskcache

                self._db = diskcache.Cache(str(directory / "eval-latency"))
            except Exception:  # an unusable directory only costs us cached latencies
                self._db = None

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def get(self, key: str) -> float | None:
        return None if self._db is None else self._db.get(key)

    def measured(self, key: str, latency_s: float) -> None:
        """A call was just made. Its first measurement in an evaluation is kept (two topologies can
        make the same call), so a rerun served from the cache reports exactly what this one did."""
        if self._db is not None and key not in self._fresh:
            self._fresh.add(key)
            self._db.set(key, latency_s)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


async def run_item(session: Any, item: Item, *, ledger: LatencyLedger, on_event: Any = None) -> ItemRun:
    """Each turn in order, the conversation growing with the topology's own answers (MT-Bench)."""
    conversation = [{"role": role, "content": content} for role, content in item.prefix]
    run = ItemRun("ok", None)
    for turn in item.turns:
        conversation.append({"role": "user", "content": turn})
        result = await session.run(list(conversation), on_event=on_event)
        _account(run, session, result, ledger)
        if result.status != "ok":
            run.status, run.output = "failed", None
            why = failure_reason(result)  # a provider's error already starts with the node's name
            run.error = why if why.startswith(f"{result.output_node}: ") else f"{result.output_node}: {why}"
            return run
        run.output = result.output
        conversation.append({"role": "assistant", "content": result.output})
    return run


def _account(run: ItemRun, session: Any, result: Any, ledger: LatencyLedger) -> None:
    """Calls, tokens and cost of every call the topology made or was served (a window folds in
    several; a vote, and an aggregator whose inputs agreed, make none; a skipped or cancelled node
    counts what it had spent), and the critical path to the output."""
    graph = session.graph
    finish: dict[str, float | None] = {}
    for name in session.order:
        node = result.nodes[name]
        attrs = graph.nodes[name]
        # A node starts when its last input has finished, failed or been skipped; a quorum when the
        # K inputs it read had.
        read = node.inputs_read if getattr(node, "inputs_read", None) is not None else attrs["inputs"]
        waits = [finish[i] for i in read]
        known = [w for w in waits if w is not None]
        ready = None if len(known) < len(waits) else max(known, default=0.0)
        calls = getattr(node, "calls", None)
        if calls is None:
            calls = 0 if node.status == "skipped" else 1
        run.calls += calls
        run.prompt_tokens += node.prompt_tokens
        run.completion_tokens += node.completion_tokens
        if calls:
            price = attrs["params"].get("price")
            if price is None or run.cost_usd is None:
                run.cost_usd = None
            else:
                run.cost_usd += (node.prompt_tokens * price[0] + node.completion_tokens * price[1]) / 1e6
        if node.status in ("skipped", "cancelled"):
            finish[name] = ready
            continue
        latency = _node_latency(node, ledger) if calls else 0.0
        finish[name] = None if latency is None or ready is None else ready + latency
    out = finish.get(result.output_node)
    run.latency_s = None if out is None or run.latency_s is None else run.latency_s + out


def _node_latency(node: Any, ledger: LatencyLedger) -> float | None:
    if node.status == "failed":
        return node.latency_s or 0.0
    if not ledger.enabled:
        return node.latency_s if node.status == "ok" else None
    key = node.cache_key  # the runner's own key for this call (runtime.calls.prepare_call)
    if key is None:
        return None
    if node.status == "ok":
        ledger.measured(key, node.latency_s)
    return ledger.get(key)
