"""The syntax tree: frozen dataclasses, each carrying the Span it was parsed from."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Span:
    """1-based line and column; end_column points one past the last character."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int
