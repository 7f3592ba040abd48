"""Shared test fixtures. Feature-specific helpers live in their own modules (tests/fakeserver.py, ...)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DATASETS = ROOT / "moa_dsl" / "evaluation" / "datasets"   # the shipped alpaca_eval.jsonl, mt_bench.jsonl


@pytest.fixture
def cache_dir(tmp_path):
    """A private response cache per test, so tests never see each other's calls."""
    return tmp_path / "cache"
