"""The runtime: runs a validated topology — scheduler, sessions, messages, cache, events, results.

It uses the language (a validated graph) and the providers; it never imports display code (the
faces — CLI, Jupyter, evaluation — use it, never the reverse).
"""

from __future__ import annotations

from .bridge import run_sync
from .cache import CacheWarning, ResponseCache
from .calls import PreparedCall, prepare_call
from .dryrun import PlanRow, format_plan, plan
from .events import Event, TraceWriter
from .pipeline import Pipeline, load, loads
from .report import failure_reason, result_html, result_markdown, totals_line
from .result import NodeResult, RunResult, Usage
from .scheduler import Session, arun, check_concurrency, gather_or_cancel, live_nodes, run_blocking

__all__ = [
    "CacheWarning",
    "Event",
    "NodeResult",
    "Pipeline",
    "PlanRow",
    "PreparedCall",
    "ResponseCache",
    "RunResult",
    "Session",
    "TraceWriter",
    "Usage",
    "arun",
    "check_concurrency",
    "failure_reason",
    "format_plan",
    "gather_or_cancel",
    "live_nodes",
    "load",
    "loads",
    "plan",
    "prepare_call",
    "result_html",
    "result_markdown",
    "run_blocking",
    "run_sync",
    "totals_line",
]
