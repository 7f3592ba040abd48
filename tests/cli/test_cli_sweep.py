"""`moa sweep` end to end against FakeLLMServer on 127.0.0.1, with a scripted judge.

The topology: a one-member proposer layer `p` and an aggregator. The aggregator's answer is longer
the higher its temperature and the more references it reads; the judge prefers the longer answer
(a tie on equal length), whichever position it is shown in. So win rates are known in advance.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

import moa_dsl
from moa_dsl.cli import main
from moa_dsl.testing import FakeLLMServer

ITEMS = [{"instruction": f"question number {i}?"} for i in range(16)]


def _answer(user: str, which: str) -> str:
    return re.search(rf"Assistant {which}'s Answer\]\n(.*?)\n\[The End of Assistant {which}", user, re.S).group(1)


def judge(body):
    user = body["messages"][-1]["content"]
    a, b = len(_answer(user, "A")), len(_answer(user, "B"))
    return "Verdict: " + ("[[A]]" if a > b else "[[B]]" if b > a else "[[C]]")


def responder(model, body):
    if model == "judge":
        return judge(body)
    if model == "agg":
        refs = " ".join(m["content"] for m in body["messages"]).count("prop answers")
        return "agg " + "y" * round(100 * body.get("temperature", 0.7)) + "z" * refs
    return "prop answers " + body["messages"][-1]["content"]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("MOA_TEST_KEY", "test-key")


@pytest.fixture
def server():
    with FakeLLMServer(responder=responder) as srv:
        yield srv


def _files(tmp_path, server, *, defaults="", items=ITEMS):
    (tmp_path / "moa.moa").write_text(
        f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_TEST_KEY") }}\n'
        f"{defaults}"
        'model prop = fake:"prop" { price = [1, 2] }\nmodel agg = fake:"agg" { price = [1, 2] }\n'
        'layer p = propose [prop]\n'
        'node f = aggregate agg <- p\n')
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(tmp_path / "moa.moa"), str(data)


def _sweep(file, data, tmp_path, cache_dir, *extra, out="out"):
    return main(["sweep", file, "--input", str(data), "--judge", 'fake:"judge"', "--out", str(tmp_path / out),
                 "--cache-dir", str(cache_dir), "--concurrency", "4", *extra])


def _summary(tmp_path, out="out"):
    return json.loads((tmp_path / out / "summary.json").read_text())


def test_a_2x2_grid_is_4_variants_and_the_one_equal_to_the_file_shares_every_call(tmp_path, server, cache_dir,
                                                                                 capsys):
    file, data = _files(tmp_path, server)
    assert _sweep(file, data, tmp_path, cache_dir, "--grid", "temperature=0.7,0.2", "--grid", "p.n=1,2",
                  "--limit", "4") == 0
    summary = _summary(tmp_path)
    rows = {r["name"]: r for r in summary["topologies"]}
    assert list(rows) == ["moa", "temperature=0.7,p.n=1", "temperature=0.7,p.n=2", "temperature=0.2,p.n=1",
                          "temperature=0.2,p.n=2"]
    assert summary["baseline"] == "moa" and summary["grid"] == {"temperature": ["0.7", "0.2"], "p.n": ["1", "2"]}
    assert rows["temperature=0.2,p.n=2"]["settings"] == {"temperature": "0.2", "p.n": "2"}
    # Per item: the file as written makes prop (sample 1) and agg. The variant equal to the file
    # makes nothing new; p.n=2 at 0.7 adds only its second sample and its aggregator (sample 1 is
    # the file's own call); at 0.2, p.n=1 makes both, and p.n=2 adds a second sample and an aggregator.
    assert len(server.requests_for("prop")) == 4 * 4
    assert len(server.requests_for("agg")) == 4 * 4
    assert rows["temperature=0.7,p.n=1"]["calls"] == rows["moa"]["calls"] == 8      # what it costs, cached or not
    # the judge: equal answers tie, longer ones win
    assert rows["temperature=0.7,p.n=1"]["win_rate"] == 0.5
    assert rows["temperature=0.7,p.n=2"]["win_rate"] == 1.0
    assert rows["temperature=0.2,p.n=1"]["win_rate"] == 0.0
    for row in rows.values():
        assert {"win_rate_ci", "lc_win_rate", "avg_length", "by_category", "pareto_cost", "pareto_latency"} <= set(row)
        if row["win_rate"] is not None:
            low, high = row["win_rate_ci"]
            assert low <= row["win_rate"] <= high
    assert rows["moa"]["win_rate_ci"] is None and rows["moa"]["lc_win_rate"] is None
    # cost per item: the n=2 variants cost more; the cheapest at each quality is on the front
    assert rows["temperature=0.7,p.n=2"]["pareto_cost"] and rows["moa"]["pareto_cost"]
    assert not rows["temperature=0.2,p.n=2"]["pareto_cost"]
    # files: eval's, and one plot per swept key
    out = tmp_path / "out"
    for name in rows:
        assert (out / name / "model_outputs.json").is_file()
    for svg in ("summary.svg", "sweep-temperature.svg", "sweep-p.n.svg"):
        ET.fromstring((out / svg).read_text())
    md = (out / "summary.md").read_text()
    assert "| temperature=0.7,p.n=2 | 1.000 |" in md and "grid: temperature = 0.7, 0.2; p.n = 1, 2" in md
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.search(r"sweep: 20/20 items, \d+ calls, \d+ cache hits, \d+ tokens, \$[\d.]+ spent", err)
    assert "items per variant: moa 4/4, temperature=0.7,p.n=1 4/4" in err


def test_a_rerun_makes_no_call_and_reports_the_same(tmp_path, server, cache_dir):
    file, data = _files(tmp_path, server)
    args = ("--grid", "temperature=0.7,0.2", "--grid", "p.n=1,2", "--limit", "3")
    assert _sweep(file, data, tmp_path, cache_dir, *args) == 0
    first, sent = _summary(tmp_path), len(server.requests)
    assert _sweep(file, data, tmp_path, cache_dir, *args) == 0
    assert len(server.requests) == sent
    again = _summary(tmp_path)
    assert again["topologies"] == first["topologies"]      # intervals and latencies too
    assert again["judge_usage"]["calls"] == 0 and again["judge_usage"]["cache_hits"] == first["judge_usage"]["calls"]


def test_halving_runs_the_survivor_on_every_item_and_judges_less(tmp_path, server, cache_dir):
    file, data = _files(tmp_path, server, defaults="defaults { temperature = 0.25 }\n")
    grid = ("--grid", "temperature=0.1,0.2,0.3,0.4", "--grid", "p.n=1,2")
    assert _sweep(file, data, tmp_path, cache_dir, *grid, "--halving", out="halved") == 0
    halving_judged = len(server.requests_for("judge"))
    rows = {r["name"]: r for r in _summary(tmp_path, "halved")["topologies"]}
    assert len(rows) == 9 and rows["moa"]["n"] == 16
    # 2 items for all 8, 4 for the better half, 8 for the best 2, 16 for the last one. Win rates
    # tie among the longer answers, and ties keep the grid's order.
    ns = {name: row["n"] for name, row in rows.items() if name != "moa"}
    assert sorted(ns.values()) == [2, 2, 2, 2, 4, 4, 8, 16]
    assert ns["temperature=0.3,p.n=1"] == 16 and ns["temperature=0.3,p.n=2"] == 8
    assert ns["temperature=0.4,p.n=1"] == ns["temperature=0.4,p.n=2"] == 4
    assert all(ns[f"temperature={t},p.n={n}"] == 2 for t in ("0.1", "0.2") for n in (1, 2))
    assert rows["temperature=0.3,p.n=1"]["eliminated"] is False and rows["temperature=0.1,p.n=1"]["eliminated"]
    assert rows["temperature=0.1,p.n=1"]["win_rate"] == 0.0 and rows["temperature=0.3,p.n=1"]["win_rate"] == 1.0
    outputs = json.loads((tmp_path / "halved" / "temperature=0.1,p.n=1" / "model_outputs.json").read_text())
    assert len(outputs) == 2
    # the full grid, in a cache of its own: every variant on every item
    with FakeLLMServer(responder=responder) as full_server:
        file, data = _files(tmp_path, full_server, defaults="defaults { temperature = 0.25 }\n")
        assert _sweep(file, data, tmp_path, tmp_path / "cache2", *grid, out="full") == 0
        full_judged = len(full_server.requests_for("judge"))
    assert all(r["n"] == 16 for r in _summary(tmp_path, "full")["topologies"])
    assert halving_judged < full_judged / 2


def test_mt_bench_rows_carry_categories(tmp_path, server, cache_dir):
    items = [{"turns": [f"write {i}", "again"], "category": c} for i, c in enumerate(["writing", "math", "writing"])]
    file, data = _files(tmp_path, server, items=items)
    assert _sweep(file, data, tmp_path, cache_dir, "--grid", "temperature=0.2,0.9") == 0
    rows = {r["name"]: r for r in _summary(tmp_path)["topologies"]}
    assert rows["moa"]["by_category"] is None
    assert rows["temperature=0.9"]["by_category"] == {"writing": 1.0, "math": 1.0}
    assert rows["temperature=0.2"]["by_category"] == {"writing": 0.0, "math": 0.0}
    assert "| win rate by category | writing | math |" in (tmp_path / "out" / "summary.md").read_text()


def test_baseline_names_a_variant(tmp_path, server, cache_dir):
    file, data = _files(tmp_path, server)
    assert _sweep(file, data, tmp_path, cache_dir, "--grid", "temperature=0.2,0.9", "--limit", "2",
                  "--baseline", "temperature=0.2") == 0
    rows = _summary(tmp_path)["topologies"]
    assert [r["name"] for r in rows] == ["temperature=0.2", "temperature=0.9"]
    assert rows[0]["win_rate"] is None and rows[1]["win_rate"] == 1.0


def test_python_api_returns_a_report_that_displays_itself(tmp_path, server, cache_dir):
    file, _ = _files(tmp_path, server)
    report = moa_dsl.sweep(file, grid={"temperature": [0.3, 0.7], "p.n": [1, 3]}, data=ITEMS[:2],
                           judge='fake:"judge"', cache_dir=cache_dir, concurrency=4)
    names = [r["name"] for r in report.summary["topologies"]]
    assert names == ["moa", "temperature=0.3,p.n=1", "temperature=0.3,p.n=3", "temperature=0.7,p.n=1",
                     "temperature=0.7,p.n=3"]
    html = report._repr_html_()
    assert "<table>" in html and html.count("<svg") == 3 and "temperature=0.3,p.n=3" in html
    assert report.out is None


@pytest.mark.parametrize("grid, message", [
    (["p.n=1,x"], "--grid p.n=x: a sample count must be an integer >= 1"),
    (["f.n=1,2"], "'f' is a node, not a layer"),
    (["q.n=1,2"], "no layer 'q'"),
    (["tempreature=0.1"], "--grid 'tempreature=0.1': unknown parameter 'tempreature'; did you mean 'temperature'?"),
    (["temperature"], "expected KEY=V1,V2"),
    (["temperature=0.1", "temperature=0.2"], "given twice"),
])
def test_bad_grids_are_usage_errors_before_any_call(tmp_path, server, cache_dir, capsys, grid, message):
    file, data = _files(tmp_path, server)
    args = [a for g in grid for a in ("--grid", g)]
    assert _sweep(file, data, tmp_path, cache_dir, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not server.requests


def test_a_layer_of_several_models_cannot_take_n(tmp_path, server, cache_dir, capsys):
    (tmp_path / "wide.moa").write_text(
        f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_TEST_KEY") }}\n'
        'layer p = propose [fake:"a", fake:"b"]\nnode f = aggregate fake:"agg" <- p\n')
    _, data = _files(tmp_path, server)
    assert _sweep(str(tmp_path / "wide.moa"), data, tmp_path, cache_dir, "--grid", "p.n=1,2") == 2
    assert "layer 'p' has 2 members; LAYER.n rewrites `MODEL * N` in a layer of exactly one member" \
        in capsys.readouterr().err


def test_a_bad_baseline_and_a_bad_file(tmp_path, server, cache_dir, capsys):
    file, data = _files(tmp_path, server)
    assert _sweep(file, data, tmp_path, cache_dir, "--grid", "temperature=0.2", "--baseline", "nope") == 2
    (tmp_path / "bad.moa").write_text("node a = propose\n")
    assert _sweep(str(tmp_path / "bad.moa"), data, tmp_path, cache_dir, "--grid", "temperature=0.2") == 1
    err = capsys.readouterr().err
    assert "--baseline nope: not one of the variants (temperature=0.2)" in err and "error[E101]" in err
    assert not server.requests
