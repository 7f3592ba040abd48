"""`--dry-run`: what a run would do, without calling anything, and what its calls may cost at worst.

The worst case is the budget's (docs/language.md, "budget"): a call's prompt tokens estimated as
⌈characters / 4⌉ of its messages plus its `max_tokens`, at its model's price. Before a run the
inputs' answers are not known, so each is counted at its worst: the `max_tokens` of the call that
writes it (its real length when it would come from the cache); a ranker passes on `top_k` of its
inputs' answers, a vote one of them, a quorum reads its K largest.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..config import cache_dir as default_cache_dir
from ..errors import ConfigError
from ..language.topology import Topology
from ..providers.pool import ProviderPool
from .cache import ResponseCache
from .calls import prepare_call
from .messages import build_messages, normalize_query
from .operators import window_steps
from .result import price_usd
from .scheduler import live_nodes

__all__ = ["PlanRow", "format_plan", "plan"]


@dataclass(frozen=True)
class PlanRow:
    node: str
    role: str
    provider: str
    model: str
    inputs: tuple[str, ...]
    calls: int | None  # calls it makes (a window several, a vote none; 0 served from the cache), None: unknown
    cache: str  # "hit" | "miss" | "off" | "unknown" | "none" (a vote: no call)
    worst_tokens: int = 0  # its calls' worst case (prompt estimate + max_tokens), 0 when it calls nothing
    worst_usd: float | None = 0.0  # priced; None when its model has no price


def plan(
    pipe: Topology,
    query: Any,
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    environ: Mapping[str, str] | None = None,
    pool: Any = None,
    response_cache: Any = None,
) -> list[PlanRow]:
    """What a run would do, without calling anything: nodes in dependency order, their inputs, and
    whether each would be served from the cache.

    A proposer's request is known from the query, so its cache entry can be looked up. An
    aggregator's request depends on its inputs' answers: it is known (and looked up) only when every
    input would itself come from the cache; otherwise its row says "unknown".
    """
    conversation = normalize_query(query)
    graph = pipe.graph
    order = live_nodes(graph)
    own_pool = pool is None
    if pool is None:
        pool = ProviderPool(graph.graph["providers"], environ=os.environ if environ is None else environ)
    store = response_cache
    if store is None and cache and not refresh:
        store = ResponseCache(default_cache_dir(cache_dir))
    texts: dict[str, str] = {}
    sizes: dict[str, list[int]] = {}  # each node's answers as passed on, worst-case tokens each
    rows = []
    try:
        for name in order:
            row = _plan_row(name, graph.nodes[name], conversation, pool, store, texts, cache and not refresh)
            rows.append(_with_worst(row, graph.nodes[name], conversation, texts, sizes))
    finally:
        if own_pool:
            _close_pool_sync(pool)
        if response_cache is None and store is not None:
            store.close()
    return rows


def _plan_row(
    name: str,
    attrs: Mapping[str, Any],
    conversation: list[dict[str, str]],
    pool: Any,
    store: Any,
    texts: dict[str, str],
    use_cache: bool,
) -> PlanRow:
    params = attrs["params"]
    row = dict(
        node=name, role=attrs["role"], provider=attrs["provider"], model=attrs["model"], inputs=tuple(attrs["inputs"])
    )
    if attrs["role"] == "vote":
        return PlanRow(**row, calls=0, cache="none")
    if not use_cache or not params.get("cache", True) or store is None:
        return PlanRow(**row, calls=1, cache="off")
    if attrs["role"] == "rank" or (
        attrs["role"] == "aggregate"
        and (params.get("quorum") or (params.get("window") and len(attrs["inputs"]) > params["window"]))
    ):
        # which answers it reads, or how many calls it folds them in, is known only once they exist
        return PlanRow(**row, calls=None, cache="unknown")
    refs = None
    if attrs["role"] == "aggregate":
        if not all(i in texts for i in attrs["inputs"]):
            return PlanRow(**row, calls=None, cache="unknown")
        refs = [texts[i] for i in attrs["inputs"]]
    try:
        provider = pool.get(attrs["provider"])
    except ConfigError:  # a missing key: the run would stop, but a plan can still be shown
        return PlanRow(**row, calls=1, cache="unknown")
    key = prepare_call(attrs, conversation, refs, provider).key
    hit = store.get(key)
    if hit is None:
        return PlanRow(**row, calls=1, cache="miss")
    texts[name] = hit["text"]
    return PlanRow(**row, calls=0, cache="hit")


def _with_worst(
    row: PlanRow,
    attrs: Mapping[str, Any],
    conversation: list[dict[str, str]],
    texts: Mapping[str, str],
    sizes: dict[str, list[int]],
) -> PlanRow:
    """The row with its calls' worst case; records the worst size of the answers it passes on."""
    params = attrs["params"]
    role = attrs["role"]
    refs: list[int] = []
    per_input = [sizes.get(i, [0]) for i in attrs["inputs"]]
    if params.get("quorum"):
        per_input = sorted(per_input, key=sum, reverse=True)[: params["quorum"]]
    for answer_sizes in per_input:
        refs.extend(answer_sizes)
    max_tokens = int(params.get("max_tokens") or 0)
    if role == "vote":
        sizes[row.node] = [max(refs, default=0)]
        return row
    if role == "rank":
        sizes[row.node] = sorted(refs, reverse=True)[: max(1, int(params.get("top_k", 1)))]
    elif row.node in texts:
        sizes[row.node] = [-(-len(texts[row.node]) // 4)]
    else:
        sizes[row.node] = [max_tokens]
    if row.calls == 0:
        return row
    # The messages with every reference empty, then each reference's worst size added.
    empty = None if role == "propose" else [""] * len(refs)
    fixed = sum(
        len(m["content"])
        for m in build_messages(
            conversation, system=params.get("system"), refs=empty, prompt=params.get("prompt"), numbered=role == "rank"
        )
    )
    base = -(-fixed // 4)
    tokens = usd = 0.0
    steps = window_steps(len(refs), params.get("window")) if role == "aggregate" else [(0, len(refs))]
    for n, (a, b) in enumerate(steps):
        prompt = base + sum(refs[a:b]) + (max_tokens if n else 0)  # a fold also reads the previous answer
        tokens += prompt + max_tokens
        usd += price_usd(params.get("price"), prompt, max_tokens) or 0.0
    calls = len(steps) if len(steps) > 1 else row.calls  # a window's folds, when all its inputs answer
    return PlanRow(
        **{
            **row.__dict__,
            "calls": calls,
            "worst_tokens": int(tokens),
            "worst_usd": None if params.get("price") is None else usd,
        }
    )


def _close_pool_sync(pool: Any) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(pool.aclose())
    # else: inside a running loop (a notebook), where get() alone opened nothing that needs closing


def format_plan(rows: Iterable[PlanRow], budget: Mapping[str, float] | None = None) -> str:
    """The --dry-run table: each node's calls and their worst-case cost, then the totals, against
    `budget` ({"usd", "tokens", "calls"}, any subset) when there is one."""
    rows = list(rows)
    lines = []
    width = max((len(r.node) for r in rows), default=4)
    for r in rows:
        inputs = ", ".join(r.inputs) if r.inputs else "(query)"
        calls = "?" if r.calls is None else str(r.calls)
        model = "(no model)" if r.provider is None else f"{r.provider}:{r.model}"
        worst_text = ""
        if r.calls != 0:
            worst_text = f" worst={r.worst_tokens} tokens " + ("$?" if r.worst_usd is None else f"${r.worst_usd:.6f}")
        lines.append(f"{r.node:<{width}}  {r.role:<9}  {model}  <- {inputs}  calls={calls} cache={r.cache}{worst_text}")
    known = [r for r in rows if r.calls is not None]
    unknown = len(rows) - len(known)
    hits = sum(1 for r in rows if r.cache == "hit")
    lines.append(
        f"{len(rows)} nodes: {sum(r.calls or 0 for r in known)} calls"
        + (f" (+ up to {unknown} whose requests depend on uncached answers)" if unknown else "")
        + f", {hits} expected cache hits"
    )
    calling = [r for r in rows if r.calls != 0]
    calls_worst = sum(1 if r.calls is None else r.calls for r in calling)
    tokens = sum(r.worst_tokens for r in calling)
    usd = sum(r.worst_usd or 0.0 for r in calling)
    unpriced = any(r.worst_usd is None for r in calling)
    worst: dict[str, float] = {"calls": calls_worst, "tokens": tokens, "usd": usd}
    line = f"worst case: {calls_worst} calls, {tokens} tokens, ${usd:.6f}" + (
        " (some models have no price: their calls count as $0)" if unpriced else ""
    )
    if budget:
        checks = []
        for key in ("usd", "tokens", "calls"):
            if key in budget:
                cap = budget[key]
                shown = f"${cap:g}" if key == "usd" else f"{int(cap)} {key}"
                checks.append(f"{shown} ({'fits' if worst[key] <= cap + 1e-12 else 'worst case passes it'})")
        line += "; budget: " + ", ".join(checks)
    lines.append(line)
    return "\n".join(lines)
