"""The topologies a server serves, and the one set of things every run of every one of them shares.

`moa serve` builds one `Session` per topology (a Session is bound to one graph), but all of them
share: the global bound on calls in flight (`limiter`), the response cache, the provider clients
(one per distinct provider configuration, whichever topologies declare it: `SharedProviders`), the
per-provider `max_concurrency` slots and the in-flight table that lets an identical call made by two
requests at once be sent once. A request that overrides the output node's parameters runs through
a Session built for the overridden graph from the same shared parts (kept in a small LRU).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..config import ProviderConfig
from ..errors import ConfigError, MoaError
from ..providers.base import Provider
from ..providers.pool import ProviderPool
from ..runtime import Pipeline, ResponseCache, Session, check_concurrency, live_nodes, load

__all__ = ["LoadReport", "Served", "Shared", "SharedProviders", "discover", "load_topologies", "output_overrides"]

OVERRIDE_SESSIONS = 64  # distinct override sets kept ready per server (each is a graph copy and a Session)


def discover(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """FILE|DIR... as .moa files: a directory gives every `*.moa` in it (not recursive), sorted."""
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.glob("*.moa") if f.is_file())
            if not found:
                raise ConfigError(f"no .moa files in {p}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"no such file or directory: {p}")
    return files


@dataclass
class LoadReport:
    pipes: dict[str, Pipeline] = field(default_factory=dict)
    errors: list[MoaError] = field(default_factory=list)  # files with errors: render each like `moa check`
    warnings: list[MoaError] = field(default_factory=list)  # files with warnings only


def load_topologies(paths: Sequence[str | os.PathLike], environ: Mapping[str, str] | None = None) -> LoadReport:
    """Load and validate every file, and check that every key they need is set, before anything is
    served. Raises ConfigError for a usage problem (a missing path, two files with one stem, a
    missing key); file errors are collected in the report, every file's, not only the first."""
    report = LoadReport()
    for path in discover(paths):
        try:
            pipe = load(path)
        except ConfigError:
            raise
        except MoaError as exc:
            report.errors.append(exc)
            continue
        name = pipe.name or path.stem
        if name in report.pipes:
            raise ConfigError(
                f"two topologies are named {name!r} (a topology's name is its file's stem): rename one of the files"
            )
        if pipe.warnings:
            report.warnings.append(MoaError(diagnostics=pipe.warnings, sources=pipe.sources))
        report.pipes[name] = pipe
    if not report.errors:
        env = os.environ if environ is None else environ
        for pipe in report.pipes.values():
            used = sorted({pipe.graph.nodes[n]["provider"] for n in live_nodes(pipe.graph)})
            try:
                ProviderPool(pipe.graph.graph["providers"], environ=env).check_keys(used)
            except ConfigError as exc:
                raise ConfigError(f"topology {pipe.name!r}: {exc}") from None
    return report


class SharedProviders:
    """Provider clients shared by every topology: one per distinct provider configuration.

    Two files may declare a provider of the same name differently (each its own base_url): they get
    two clients. The same configuration in twenty files gets one, with one connection pool and, for
    an embedded model, one llama.cpp server kept warm between requests."""

    def __init__(self, *, environ: Mapping[str, str] | None = None, transport: Any = None, verbose: bool = False):
        self.environ = os.environ if environ is None else environ
        self._transport, self._verbose = transport, verbose
        self._pools: list[tuple[ProviderConfig, ProviderPool]] = []
        self._slots: dict[int, asyncio.Semaphore] = {}

    def view(self, configs: Mapping[str, ProviderConfig]) -> "_PoolView":
        """What a Session takes as its `pool=`: the shared clients, seen through one topology's names."""
        return _PoolView(self, dict(configs))

    def provider(self, cfg: ProviderConfig) -> Provider:
        for known, pool in self._pools:
            if known == cfg:
                return pool.get(cfg.name)
        pool = ProviderPool({cfg.name: cfg}, environ=self.environ, transport=self._transport, verbose=self._verbose)
        self._pools.append((cfg, pool))
        return pool.get(cfg.name)

    def slots(self, provider: Provider) -> asyncio.Semaphore:
        """The provider's `max_concurrency` slots, one set per client across every session."""
        slots = self._slots.get(id(provider))
        if slots is None:
            slots = self._slots[id(provider)] = asyncio.Semaphore(provider.max_concurrency or 1)
        return slots

    async def aclose(self) -> None:
        pools, self._pools = self._pools, []
        for _, pool in pools:
            await pool.aclose()


class _PoolView:
    """The three methods a Session calls on its pool, answered by the shared clients."""

    def __init__(self, owner: SharedProviders, configs: dict[str, ProviderConfig]):
        self._owner, self._configs = owner, configs

    def check_keys(self, names: Iterable[str]) -> None:
        ProviderPool(self._configs, environ=self._owner.environ).check_keys(names)  # builds nothing

    def get(self, name: str) -> Provider:
        cfg = self._configs.get(name)
        if cfg is None:
            raise ConfigError(f"unknown provider {name!r} (known: {', '.join(sorted(self._configs)) or 'none'})")
        return self._owner.provider(cfg)

    async def aclose(self) -> None:  # the server closes the shared clients once, at shutdown
        pass


class Shared:
    """The global bound, the cache, the clients and the in-flight table: one per server."""

    def __init__(
        self,
        *,
        concurrency: int,
        cache: bool,
        cache_dir: str | os.PathLike | None,
        environ: Mapping[str, str] | None = None,
        transport: Any = None,
        verbose: bool = False,
    ):
        from ..config import cache_dir as default_cache_dir

        self.limiter = asyncio.Semaphore(check_concurrency(concurrency))
        self.concurrency = concurrency
        self.cache_enabled = cache
        self.cache = ResponseCache(default_cache_dir(cache_dir)) if cache else None
        self.providers = SharedProviders(environ=environ, transport=transport, verbose=verbose)
        self.inflight: dict[str, asyncio.Event] = {}

    def session(self, pipe: Pipeline) -> Session:
        session = Session(
            pipe,
            cache=self.cache_enabled,
            response_cache=self.cache,
            limiter=self.limiter,
            pool=self.providers.view(pipe.graph.graph["providers"]),
        )
        # Session makes its own in-flight table and provider slots; a server's sessions share them, so an
        # identical call from two topologies (or two override sets) is sent once, and a provider's
        # max_concurrency holds across all of them. Both are plain attributes the scheduler reads per call.
        session.inflight = self.inflight
        session.provider_slots = {
            name: self.providers.slots(p)
            for name, p in session.providers.items()
            if getattr(p, "max_concurrency", None)
        }
        return session

    async def aclose(self) -> None:
        try:
            await self.providers.aclose()
        finally:
            if self.cache is not None:
                self.cache.close()


class Served:
    """One topology being served: its base Session and the Sessions of its override sets."""

    def __init__(self, name: str, pipe: Pipeline, shared: Shared):
        self.name, self.pipe, self.shared = name, pipe, shared
        self.created = int(time.time())
        self.session = shared.session(pipe)
        self._overridden: collections.OrderedDict[tuple, Session] = collections.OrderedDict()

    def session_for(self, params: Mapping[str, Any]) -> Session:
        """The session that runs with `params` on the output node (the base one when there are none)."""
        if not params:
            return self.session
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
        session = self._overridden.get(key)
        if session is None:
            session = self._overridden[key] = self.shared.session(output_overrides(self.pipe, params))
            if len(self._overridden) > OVERRIDE_SESSIONS:
                self._overridden.popitem(last=False)  # nothing to close: the clients are shared
        else:
            self._overridden.move_to_end(key)
        return session


def output_overrides(pipe: Pipeline, params: Mapping[str, Any]) -> Pipeline:
    """A copy of `pipe` whose output node (only) runs with `params` (already checked by the caller),
    as `--set OUTPUT.KEY=VALUE` would: a sampled member's seed keeps its offset."""
    copy = pipe.with_overrides([])  # a copy of the graph with every node's params copied
    attrs = copy.graph.nodes[copy.output]
    for key, value in params.items():
        if key == "seed" and attrs.get("sample") is not None:
            value = value + attrs["sample"] - 1
        attrs["params"][key] = value
    return copy
