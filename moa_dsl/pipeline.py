"""A validated topology, ready to run. `moa_dsl.load`/`loads` make one; it never changes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import networkx as nx

from .errors import Diagnostic

if TYPE_CHECKING:  # pragma: no cover
    from .result import RunResult


@dataclass(frozen=True, eq=False)
class Pipeline:
    graph: nx.DiGraph                      # one node per call; see docs/architecture.md for attributes
    sources: dict[str, str] = field(default_factory=dict)   # file name -> text, for diagnostics
    warnings: tuple[Diagnostic, ...] = ()
    name: str | None = None                # the file's stem, or None for text

    @property
    def output(self) -> str:
        return self.graph.graph["output"]

    def with_overrides(self, sets: Sequence[str]) -> "Pipeline":
        """Apply `--set KEY=VALUE` / `NODE.KEY=VALUE`; raises MoaError on a bad key or value."""
        from .loader import apply_overrides

        return apply_overrides(self, sets)

    async def arun(self, query: Any, **options: Any) -> "RunResult":
        from .run import arun

        return await arun(self, query, **options)

    def run(self, query: Any, **options: Any) -> "RunResult":
        """Blocking; works in a plain script and inside a running event loop (Jupyter)."""
        from .run import run_blocking

        return run_blocking(self, query, **options)

    def _repr_html_(self) -> str:  # the graph as inline SVG and a node table; no network
        from .notebook import pipeline_html

        return pipeline_html(self)
