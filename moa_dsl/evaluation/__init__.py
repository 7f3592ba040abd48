"""The evaluation face: compare topologies on a dataset (`moa eval`, `moa_dsl.evaluate`).

AlpacaEval-style pairwise judging, cost and latency side by side; it runs everything through the
runtime's sessions (one bound, one cache).
"""
from __future__ import annotations

from .compare import EvalReport, aevaluate, evaluate

__all__ = ["EvalReport", "aevaluate", "evaluate"]
