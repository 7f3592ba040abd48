"""The `.moa` language: text -> syntax tree -> validated graph, with diagnostics and exports.

Pure functions over text and graphs; no I/O except reading the files a topology includes, and no
knowledge of how a topology runs.
"""

from __future__ import annotations

from .loader import load, loads
from .topology import Topology

__all__ = ["Topology", "load", "loads"]
