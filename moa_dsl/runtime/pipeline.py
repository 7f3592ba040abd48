"""`Pipeline`: a validated topology that can run. `load`/`loads` make one."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..language import loader
from ..language.topology import Topology
from .result import RunResult
from .scheduler import arun, run_blocking

__all__ = ["Pipeline", "load", "loads"]


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline(Topology):
    @classmethod
    def of(cls, topology: Topology) -> "Pipeline":
        return cls(**{f.name: getattr(topology, f.name) for f in dataclasses.fields(Topology)})

    async def arun(self, query: Any, **options: Any) -> RunResult:
        return await arun(self, query, **options)

    def run(self, query: Any, **options: Any) -> RunResult:
        """Blocking; works in a plain script and inside a running event loop (Jupyter)."""
        return run_blocking(self, query, **options)


def load(path: str | os.PathLike) -> Pipeline:
    """Parse and validate a file; raises MoaError (with diagnostics) or ConfigError (unreadable file)."""
    return Pipeline.of(loader.load(path))


def loads(text: str, filename: str = "<string>") -> Pipeline:
    """Parse and validate text; includes resolve against `filename`'s directory, else the cwd."""
    return Pipeline.of(loader.loads(text, filename))
