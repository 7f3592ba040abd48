"""`python -m bench --quick` runs end to end: every section yields its rows, each a number judged
against its goal. Only that the benchmark works is tested here; its numbers are wall-clock ratios
on a shared machine, so pass/MISS is never asserted (bench/README.md)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_quick_bench_prints_and_saves_every_section(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode in (0, 1), done.stderr[-2000:]        # 1: a goal missed, not a crash
    assert "Traceback" not in done.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    rows = data["rows"]
    assert {r["section"] for r in rows} == {"makespan", "first token", "overhead", "cache", "quorum", "agreement",
                                            "moa check", "batch", "serve"}
    for r in rows:
        assert isinstance(r["ratio"], float) and math.isfinite(r["ratio"]), r
        assert (r["ok"] is None) == (r["goal"] == ""), r           # a verdict exactly where there is a goal
        assert r["name"] in done.stdout                            # and the table shows it
    makespan = [r["ratio"] for r in rows if r["section"] == "makespan" and r["name"].endswith(": ours")]
    assert len(makespan) == 3 and all(m >= 0.99 for m in makespan)  # nothing beats the critical path
    assert data["machine"]["cpus"] >= 1 and data["quick"] is True
