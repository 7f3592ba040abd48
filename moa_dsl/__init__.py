"""moa-dsl: a declarative language for Mixture-of-Agents topologies.

    pipe = moa_dsl.load("examples/moa-lite.moa")
    result = pipe.run("Why is the sky blue?")
"""
from __future__ import annotations

from .errors import (
    ConfigError, Diagnostic, LocalModelError, MoaError, ProviderError, RunFailed,
)
from .loader import load, loads
from .pipeline import Pipeline

__all__ = [
    "ConfigError", "Diagnostic", "LocalModelError", "MoaError", "Pipeline", "ProviderError",
    "RunFailed", "load", "loads", "load_ipython_extension",
]


def load_ipython_extension(ipython):  # `%load_ext moa_dsl`
    from .notebook import load_ipython_extension as _load

    _load(ipython)
