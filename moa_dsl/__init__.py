"""moa-dsl: a declarative language for Mixture-of-Agents topologies.

    pipe = moa_dsl.load("examples/moa-lite.moa")
    result = pipe.run("Why is the sky blue?")
    report = moa_dsl.evaluate(["a.moa", "b.moa"], "data.jsonl", judge='local:"qwen2.5-coder-1.5b"')
"""
from __future__ import annotations

from typing import Any

from .errors import (
    ConfigError, Diagnostic, LocalModelError, MoaError, ProviderError, RunFailed,
)
from .evaluate import aevaluate, evaluate  # rebinds the names from the submodule to the functions
from .loader import load, loads
from .pipeline import Pipeline

__all__ = [
    "ConfigError", "Diagnostic", "LocalModelError", "MoaError", "Pipeline", "ProviderError",
    "RunFailed", "aevaluate", "evaluate", "load", "load_ipython_extension", "loads",
]


def load_ipython_extension(ipython: Any) -> None:  # `%load_ext moa_dsl`
    from .notebook import load_ipython_extension as _load

    _load(ipython)
