"""The length-controlled win rate end to end: a judge that prefers the longer answer, against
FakeLLMServer, gives an LC win rate below the raw one when the candidate writes longer answers."""
from __future__ import annotations

import re

import pytest

from moa_dsl.evaluation import evaluate
from moa_dsl.testing import FakeLLMServer

LENGTHS = [20, 30, 40, 60, 70, 80, 90, 100, 110, 120]    # the candidate's; the baseline always writes 50
CONTRARIAN = {1, 8}                                       # items where this judge prefers the shorter answer


def responder(model, body):
    user = body["messages"][-1]["content"]
    if model == "judge":
        i = int(re.search(r"question (\d+)", user).group(1))
        a = re.search(r"Assistant A's Answer\]\n(.*?)\n\[The End", user, re.S).group(1)
        b = re.search(r"Assistant B's Answer\]\n(.*?)\n\[The End", user, re.S).group(1)
        longer_a = len(a) > len(b)
        return "[[A]]" if longer_a != (i in CONTRARIAN) else "[[B]]"
    i = int(re.search(r"question (\d+)", user).group(1))
    return "b" * 50 if model == "base" else "c" * LENGTHS[i]


def test_a_judge_that_likes_length_gives_a_lower_lc_win_rate(tmp_path, monkeypatch):
    import moa_dsl

    monkeypatch.setenv("MOA_TEST_KEY", "k")
    with FakeLLMServer(responder=responder) as server:
        head = f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_TEST_KEY") }}\n'
        base = moa_dsl.loads(head + 'node a = propose fake:"base"\n', filename="base.moa")
        cand = moa_dsl.loads(head + 'node a = propose fake:"cand"\n', filename="cand.moa")
        report = evaluate([base, cand], [{"instruction": f"question {i}"} for i in range(len(LENGTHS))],
                          judge='fake:"judge"', cache_dir=tmp_path / "cache", concurrency=4)
    row = report.summary["topologies"][1]
    assert row["win_rate"] == pytest.approx(0.7)          # 6 longer wins + 1 contrarian win
    assert row["lc_win_rate"] < row["win_rate"]
    assert row["avg_length"] == pytest.approx(sum(LENGTHS) / len(LENGTHS))
    assert report.summary["topologies"][0]["avg_length"] == 50
    low, high = row["win_rate_ci"]
    assert low <= row["win_rate"] <= high
