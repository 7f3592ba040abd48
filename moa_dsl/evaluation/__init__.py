"""The evaluation face: compare topologies on a dataset (`moa eval`, `moa_dsl.evaluate`) and search
a topology's settings (`moa sweep`, `moa_dsl.sweep`).

AlpacaEval-style pairwise judging, cost and latency side by side; it runs everything through the
runtime's sessions (one bound, one cache).
"""

from __future__ import annotations

from .compare import EvalReport, aevaluate, evaluate
from .search import SweepReport, asweep, sweep

__all__ = ["EvalReport", "SweepReport", "aevaluate", "asweep", "evaluate", "sweep"]
