"""A validated topology: the graph, the sources it came from, and its warnings. It never changes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence, TypeVar

import networkx as nx

from ..errors import Diagnostic
from .export import topology_html
from .overrides import apply_overrides

__all__ = ["Topology"]

T = TypeVar("T", bound="Topology")


@dataclass(frozen=True, eq=False)
class Topology:
    graph: nx.DiGraph  # one node per call; see docs/architecture.md for attributes
    sources: dict[str, str] = field(default_factory=dict)  # file name -> text (secrets masked), for diagnostics
    warnings: tuple[Diagnostic, ...] = ()
    name: str | None = None  # the file's stem, or None for text

    @property
    def output(self) -> str:
        return self.graph.graph["output"]

    def with_overrides(self: T, sets: Sequence[str]) -> T:
        """Apply `--set KEY=VALUE` / `NODE.KEY=VALUE`; raises MoaError on a bad key or value."""
        return dataclasses.replace(self, graph=apply_overrides(self.graph, sets))

    def _repr_html_(self) -> str:  # the graph as inline SVG and a node table; no network, no IPython
        return topology_html(self.graph, name=self.name, warnings=self.warnings)
