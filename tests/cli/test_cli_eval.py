"""`moa eval` end to end against FakeLLMServer on 127.0.0.1, with a judge whose preference is known.

The topology `marked` answers through model "marker", whose every answer carries MARK; the judge
prefers the answer with MARK whichever position it is shown in. So `marked` must win every item
against `single`, in both orders.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from moa_dsl.cli import main
from moa_dsl.testing import FakeLLMServer

from conftest import KEY

MARK = "MARK-42"
ITEMS = [{"instruction": f"question number {i}?", "dataset": "toy"} for i in range(4)]


def judge(model, body):
    user = body["messages"][-1]["content"]
    a = re.search(r"Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A", user, re.S).group(1)
    if "question number 3?" in user and UNPARSEABLE:
        return "Both answers are fine, I cannot decide."
    return "Reasoning... format is [[A]] or [[B]]. Verdict: " + ("[[A]]" if MARK in a else "[[B]]")


UNPARSEABLE: set = set()


def responder(model, body):
    if model == "judge":
        return judge(model, body)
    last = body["messages"][-1]["content"]
    return f"{MARK} {model} says {last}" if model == "marker" else f"{model} says {last}"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("MOA_TEST_KEY", KEY)


@pytest.fixture
def server(make_server):
    UNPARSEABLE.clear()
    return make_server(responder=responder, latency={"marker": 0.02})


def _files(tmp_path, server):
    provider = f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_TEST_KEY") }}\n'
    (tmp_path / "single.moa").write_text(provider + 'model plain = fake:"plain" { price = [1, 2] }\n'
                                         'node a = propose plain\n')
    (tmp_path / "marked.moa").write_text(provider + 'model plain = fake:"plain" { price = [1, 2] }\n'
                                         'node a = propose plain\nnode b = propose fake:"other"\n'
                                         'node f = aggregate fake:"marker" <- a, b\n')
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return [str(tmp_path / "single.moa"), str(tmp_path / "marked.moa")], str(data)


def _eval(files, data, tmp_path, cache_dir, *extra):
    return main(["eval", *files, "--input", str(data), "--judge", 'fake:"judge"', "--out", str(tmp_path / "out"),
                 "--cache-dir", str(cache_dir), "--concurrency", "3", *extra])


def _summary(tmp_path):
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def test_the_preferred_topology_wins_in_both_positions(tmp_path, server, cache_dir, capsys):
    files, data = _files(tmp_path, server)
    assert _eval(files, data, tmp_path, cache_dir) == 0
    summary = _summary(tmp_path)
    assert summary["baseline"] == "single" and summary["judge"] == 'fake:"judge"'
    single, marked = summary["topologies"]
    assert (single["name"], single["win_rate"], single["stderr"]) == ("single", None, None)
    assert (marked["name"], marked["win_rate"], marked["stderr"], marked["n"]) == ("marked", 1.0, 0.0, 4)
    # both orders were asked, once each per item
    judged = [r.body["messages"][-1]["content"] for r in server.requests_for("judge")]
    first = [j for j in judged if MARK in j.split("[The Start of Assistant B")[0]]
    assert len(judged) == 8 and len(first) == 4
    # accounting: calls per topology (4 items x nodes), priced vs unpriced, latencies measured
    assert single["calls"] == 4 and marked["calls"] == 12
    assert single["cost_usd"] == pytest.approx((single["prompt_tokens"] + 2 * single["completion_tokens"]) / 1e6)
    assert marked["cost_usd"] is None  # "other" and "marker" have no price
    assert marked["latency_mean_s"] >= 0.02 and marked["latency_p95_s"] >= marked["latency_mean_s"]
    out = capsys.readouterr()
    assert "| marked | 1.000 |" in out.out and "| single | baseline |" in out.out
    assert re.search(r"eval: 4/4 items, \d+ calls, \d+ cache hits, \d+ tokens", out.err)


def test_outputs_are_alpaca_eval_files_and_a_valid_svg(tmp_path, server, cache_dir):
    files, data = _files(tmp_path, server)
    assert _eval(files, data, tmp_path, cache_dir, "--limit", "2") == 0
    outputs = json.loads((tmp_path / "out" / "marked" / "model_outputs.json").read_text())
    assert [set(o) for o in outputs] == [{"instruction", "output", "generator", "dataset"}] * 2
    assert outputs[1]["instruction"] == "question number 1?" and outputs[1]["generator"] == "marked"
    assert outputs[1]["dataset"] == "toy" and outputs[1]["output"].startswith(MARK)
    ET.fromstring((tmp_path / "out" / "summary.svg").read_text())
    assert "| marked |" in (tmp_path / "out" / "summary.md").read_text()


def test_a_rerun_sends_nothing_and_reports_the_same(tmp_path, server, cache_dir):
    files, data = _files(tmp_path, server)
    assert _eval(files, data, tmp_path, cache_dir) == 0
    first = _summary(tmp_path)
    sent = len(server.requests)
    assert _eval(files, data, tmp_path, cache_dir) == 0
    assert len(server.requests) == sent
    assert _summary(tmp_path)["topologies"] == first["topologies"]  # latencies from the ledger too


def test_an_unparseable_verdict_is_a_counted_tie(tmp_path, server, cache_dir):
    UNPARSEABLE.add(True)
    files, data = _files(tmp_path, server)
    assert _eval(files, data, tmp_path, cache_dir) == 0
    marked = _summary(tmp_path)["topologies"][1]
    assert marked["ties_unparseable"] == 2          # item 3, both orders
    assert marked["win_rate"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert "2 unparseable verdicts" in (tmp_path / "out" / "summary.md").read_text()


def test_a_failed_item_is_reported_and_loses(tmp_path, server, cache_dir, capsys):
    files, data = _files(tmp_path, server)
    server.inject("marker", "400", message="bad request")
    assert _eval(files, data, tmp_path, cache_dir) == 0
    marked = _summary(tmp_path)["topologies"][1]
    assert len(marked["failed_items"]) == 1 and "bad request" in marked["failed_items"][0]["error"]
    failed = marked["failed_items"][0]["index"]
    assert marked["n"] == 4 and marked["win_rate"] == pytest.approx(3 / 4)
    outputs = json.loads((tmp_path / "out" / "marked" / "model_outputs.json").read_text())
    assert outputs[failed]["output"] == "" and len(outputs) == 4
    assert f"marked failed on item {failed}" in capsys.readouterr().err


def test_calls_in_flight_stay_under_the_global_bound(tmp_path, cache_dir):
    with FakeLLMServer(responder=responder, default_latency=0.02) as server:
        files, data = _files(tmp_path, server)
        assert _eval(files, data, tmp_path, cache_dir, "--concurrency", "2") == 0
        assert 0 < server.max_in_flight <= 2


def test_baseline_by_name(tmp_path, server, cache_dir):
    files, data = _files(tmp_path, server)
    assert _eval(files, data, tmp_path, cache_dir, "--baseline", "marked", "--limit", "2") == 0
    single, marked = _summary(tmp_path)["topologies"]
    assert marked["win_rate"] is None and single["win_rate"] == 0.0


@pytest.mark.parametrize("extra, message", [
    (["--judge", "gpt"], "--judge gpt"),
    (["--judge", 'nowhere:"x"'], "unknown provider 'nowhere'"),
    (["--baseline", "nope"], "--baseline nope: not one of the topologies"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
])
def test_usage_errors_exit_2(tmp_path, server, cache_dir, capsys, extra, message):
    files, data = _files(tmp_path, server)
    assert _eval(files, data, tmp_path, cache_dir, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not server.requests


def test_missing_input_is_usage_and_bad_file_is_1(tmp_path, server, cache_dir, capsys):
    files, data = _files(tmp_path, server)
    assert _eval(files, tmp_path / "none.jsonl", tmp_path, cache_dir) == 2
    (tmp_path / "bad.moa").write_text("node a = propose\n")
    assert _eval([files[0], str(tmp_path / "bad.moa")], data, tmp_path, cache_dir) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "error[E101]" in err
    assert not server.requests


def test_a_longer_run_resumes_from_a_shorter_one(tmp_path, server, cache_dir):
    files, data = _files(tmp_path, server)
    assert _eval(files, data, tmp_path, cache_dir, "--limit", "2") == 0
    sent = len(server.requests)
    assert _eval(files, data, tmp_path, cache_dir) == 0
    new = server.requests[sent:]
    asked = {m["content"] for r in new for m in r.body["messages"] if m["role"] == "user"}
    assert not any("question number 0?" in q or "question number 1?" in q for q in asked)
    assert len(new) == sent  # the same work again, for items 2 and 3 only


def test_a_call_two_topologies_share_is_made_once_and_a_rerun_reports_the_same(tmp_path, cache_dir):
    import itertools

    draws = itertools.count()

    def sampling(model, body):  # a sampling model: a new answer every call
        if model == "judge":
            return judge(model, body)
        return f"{model} draw {next(draws)}" if model == "rand" else f"{model} says hi"

    with FakeLLMServer(responder=sampling) as server:
        head = f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_TEST_KEY") }}\n'
        (tmp_path / "lone.moa").write_text(head + 'node a = propose fake:"rand"\n')
        (tmp_path / "mix.moa").write_text(head + 'node a = propose fake:"rand"\nnode b = propose fake:"other"\n'
                                          'node f = aggregate fake:"agg" <- a, b\n')
        (tmp_path / "other.moa").write_text(head + 'node a = propose fake:"rand"\nnode f = aggregate fake:"agg" <- a\n')
        files = [str(tmp_path / n) for n in ("lone.moa", "mix.moa", "other.moa")]
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
        assert _eval(files, data, tmp_path, cache_dir, "--concurrency", "8") == 0
        assert len(server.requests_for("rand")) == len(ITEMS)
        first = (_summary(tmp_path)["topologies"], (tmp_path / "out" / "lone" / "model_outputs.json").read_text())
        sent = len(server.requests)
        assert _eval(files, data, tmp_path, cache_dir, "--concurrency", "8") == 0
        assert len(server.requests) == sent
        assert (_summary(tmp_path)["topologies"], (tmp_path / "out" / "lone" / "model_outputs.json").read_text()) == first


def test_judge_with_a_bad_escape_is_a_usage_error(tmp_path, server, cache_dir, capsys):
    files, data = _files(tmp_path, server)
    assert _eval(files, data, tmp_path, cache_dir, "--judge", 'fake:"gp\\q"') == 2
    err = capsys.readouterr().err
    assert "--judge" in err and "escape" in err and "Traceback" not in err
    assert not server.requests


def test_input_takes_a_shipped_dataset_by_name(tmp_path, server, cache_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)   # no file called mt-bench here: the name is the shipped dataset
    files, _ = _files(tmp_path, server)
    assert _eval(files, "mt-bench", tmp_path, cache_dir, "--limit", "2") == 0
    outputs = json.loads((tmp_path / "out" / "marked" / "model_outputs.json").read_text())
    assert len(outputs) == 2 and outputs[0]["instruction"].startswith("Turn 1: Compose an engaging travel blog")
    assert outputs[0]["dataset"] == "mt_bench"


def test_help_says_when_a_name_is_a_dataset(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split()).replace("- ", "-")   # argparse wraps at hyphens
    assert "alpaca-eval" in out and "mt-bench" in out and "only when no file of that name exists" in out
