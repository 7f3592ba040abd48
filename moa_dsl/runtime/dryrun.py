"""`--dry-run`: what a run would do, without calling anything."""
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
from .messages import normalize_query
from .scheduler import live_nodes

__all__ = ["PlanRow", "format_plan", "plan"]


@dataclass(frozen=True)
class PlanRow:
    node: str
    role: str
    provider: str
    model: str
    inputs: tuple[str, ...]
    calls: int | None        # 1, 0 (served from the cache), or None (unknown)
    cache: str               # "hit" | "miss" | "off" | "unknown"


def plan(pipe: Topology, query: Any, *, cache: bool = True, cache_dir: str | os.PathLike | None = None,
         refresh: bool = False, environ: Mapping[str, str] | None = None, pool: Any = None,
         response_cache: Any = None) -> list[PlanRow]:
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
    rows = []
    try:
        for name in order:
            rows.append(_plan_row(name, graph.nodes[name], conversation, pool, store, texts,
                                  cache and not refresh))
    finally:
        if own_pool:
            _close_pool_sync(pool)
        if response_cache is None and store is not None:
            store.close()
    return rows


def _plan_row(name: str, attrs: Mapping[str, Any], conversation: list[dict[str, str]], pool: Any,
              store: Any, texts: dict[str, str], use_cache: bool) -> PlanRow:
    params = attrs["params"]
    row = dict(node=name, role=attrs["role"], provider=attrs["provider"], model=attrs["model"],
               inputs=tuple(attrs["inputs"]))
    if not use_cache or not params.get("cache", True) or store is None:
        return PlanRow(**row, calls=1, cache="off")
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


def _close_pool_sync(pool: Any) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(pool.aclose())
    # else: inside a running loop (a notebook), where get() alone opened nothing that needs closing


def format_plan(rows: Iterable[PlanRow]) -> str:
    """The --dry-run table."""
    rows = list(rows)
    lines = []
    width = max((len(r.node) for r in rows), default=4)
    for r in rows:
        inputs = ", ".join(r.inputs) if r.inputs else "(query)"
        calls = "?" if r.calls is None else str(r.calls)
        lines.append(f"{r.node:<{width}}  {r.role:<9}  {r.provider}:{r.model}  <- {inputs}  "
                     f"calls={calls} cache={r.cache}")
    known = [r for r in rows if r.calls is not None]
    unknown = len(rows) - len(known)
    hits = sum(1 for r in rows if r.cache == "hit")
    lines.append(f"{len(rows)} nodes: {sum(r.calls or 0 for r in known)} calls"
                 + (f" (+ up to {unknown} whose requests depend on uncached answers)" if unknown else "")
                 + f", {hits} expected cache hits")
    return "\n".join(lines)
