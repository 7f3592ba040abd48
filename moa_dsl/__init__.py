"""moa-dsl: a declarative language for Mixture-of-Agents topologies.

    pipe = moa_dsl.load("examples/moa-lite.moa")
    result = pipe.run("Why is the sky blue?")
    report = moa_dsl.evaluate(["a.moa", "b.moa"], "mt-bench", judge='local:"qwen2.5-coder-1.5b"')
    report = moa_dsl.sweep("a.moa", grid={"temperature": [0.3, 0.7], "p.n": [1, 3]}, data="items.jsonl")

The package is layered, and every import points down (docs/architecture.md):
`errors`/`config` (shared vocabulary) < `language` < `providers` < `runtime` < the faces
(`evaluation`, `jupyter`, `cli`).
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, Diagnostic, LocalModelError, MoaError, ProviderError, RunFailed
from .evaluation import EvalReport, aevaluate, evaluate, sweep
from .runtime import NodeResult, Pipeline, RunResult, Usage, load, loads

__all__ = [
    "ConfigError",
    "Diagnostic",
    "EvalReport",
    "LocalModelError",
    "MoaError",
    "NodeResult",
    "Pipeline",
    "ProviderError",
    "RunFailed",
    "RunResult",
    "Usage",
    "aevaluate",
    "evaluate",
    "load",
    "load_ipython_extension",
    "loads",
    "sweep",
]


def load_ipython_extension(ipython: Any) -> None:  # `%load_ext moa_dsl`
    from .jupyter import load_ipython_extension as _load

    _load(ipython)
