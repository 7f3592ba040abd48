"""moa_dsl.evaluation's pure parts: verdicts, scoring, statistics, the dataset, the judge's model
reference, the report's files. The end-to-end evaluation against a real server is in test_cli_eval.py."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest

import moa_dsl
from moa_dsl.errors import ConfigError
from moa_dsl.evaluation.data import Item, read_items
from moa_dsl.evaluation.judge import (
    JudgeModel, judge_pipeline, judge_prompt, judgment_score, pair_score, parse_judge, parse_verdict,
)
from moa_dsl.evaluation.latency import ItemRun
from moa_dsl.evaluation.report import SUMMARY_KEYS, EvalReport, TopologyReport
from moa_dsl.evaluation.stats import percentile, win_rate


@pytest.mark.parametrize("text, verdict", [
    ("Assistant B is clearer. [[B]]", "B"),
    ("format: [[A]], [[B]] or [[C]] ... final verdict: [[A]]", "A"),  # the last one counts
    ("[[ c ]]", "C"),
    ("verdict: [[b]]\n", "B"),
    ("I prefer A. [A]", None),
    ("[[D]]", None),
    ("", None),
    (None, None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_judgment_score_is_from_the_candidates_side_in_both_orders():
    assert judgment_score("A", candidate_first=True) == 1.0
    assert judgment_score("B", candidate_first=True) == 0.0
    assert judgment_score("A", candidate_first=False) == 0.0
    assert judgment_score("B", candidate_first=False) == 1.0
    assert judgment_score("C", candidate_first=True) == judgment_score(None, candidate_first=False) == 0.5


@pytest.mark.parametrize("first, second, score", [
    (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.5, 0.5, 0.5),
    (1.0, 0.0, 0.5), (0.0, 1.0, 0.5),     # position bias: a split verdict
    (1.0, 0.5, 0.5),                      # one win and one tie is not a consistent win
])
def test_pair_score(first, second, score):
    assert pair_score(first, second) == score


def test_win_rate_and_standard_error():
    rate, se = win_rate([1, 0, 1, 1])
    assert rate == 0.75
    assert se == pytest.approx(math.sqrt((3 * 0.25**2 + 0.75**2) / 3 / 4))
    assert win_rate([1.0]) == (1.0, None)
    assert win_rate([]) == (None, None)
    assert win_rate([0.5, 0.5])[1] == 0.0


def test_percentile_interpolates_like_numpy():
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 95) is None


def test_judge_prompt_shows_a_first():
    text = judge_prompt("Q?", "first answer", "second answer")
    assert text.index("Q?") < text.index("Assistant A's Answer]\nfirst answer") < text.index("second answer")


# --- the dataset -----------------------------------------------------------------------------------

def test_reads_alpaca_eval_and_mt_bench():
    alpaca = read_items("alpaca-eval", limit=3)
    assert [i.index for i in alpaca] == [0, 1, 2]
    assert alpaca[0].turns == (alpaca[0].instruction,) and alpaca[0].dataset == "helpful_base"
    mt = read_items("mt-bench", limit=2)
    assert len(mt[0].turns) == 2 and mt[0].dataset == "mt_bench"
    assert mt[0].instruction.startswith("Turn 1: Compose an engaging travel blog post")


def test_reads_records_and_query_conversations():
    items = read_items([{"query": "hi"}, {"query": [{"role": "system", "content": "be brief"},
                                                    {"role": "user", "content": "why?"}]}])
    assert items[0].turns == ("hi",)
    assert items[1].prefix == (("system", "be brief"),) and items[1].turns == ("why?",)
    assert "be brief" in items[1].instruction


@pytest.mark.parametrize("lines, message", [
    ('{"instruction": "a"}\nnot json\n', ":2: not valid JSON"),
    ('{"prompt": "a"}\n', ":1: no 'instruction', 'query' or 'turns'"),
    ('{"turns": []}\n', "'turns' must be a non-empty list"),
    ('{"instruction": ""}\n', "'instruction' must be a non-empty string"),
    ('[1, 2]\n', "expected a JSON object"),
    ('\n\n', "no items"),
])
def test_bad_data_lines_are_named(tmp_path, lines, message):
    path = tmp_path / "d.jsonl"
    path.write_text(lines)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_items(path)


def test_bad_limit_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="limit must be an integer >= 1"):
        read_items([{"query": "x"}], limit=0)
    with pytest.raises(ConfigError, match="no such file"):
        read_items(tmp_path / "missing.jsonl")


# --- the judge's model -------------------------------------------------------------------------------

TOPO = '''
provider mine = openai { base_url = "http://127.0.0.1:9/v1" }
model big = mine:"big-model" { price = [0.5, 1.5] }
node a = propose big
'''


def test_parse_judge_builtin_declared_and_named():
    pipe = moa_dsl.loads(TOPO, filename="t.moa")
    judge, cfg = parse_judge('openai:"gpt-4o"', [pipe])
    assert (judge.provider, judge.model, judge.price, cfg.kind) == ("openai", "gpt-4o", None, "openai")
    judge, cfg = parse_judge('mine : "big-model"', [pipe])
    assert (judge.provider, judge.model, judge.price, cfg.base_url) == ("mine", "big-model", (0.5, 1.5),
                                                                        "http://127.0.0.1:9/v1")
    judge, _ = parse_judge("big", [pipe])
    assert (judge.provider, judge.model) == ("mine", "big-model")
    judge, _ = parse_judge('local:"qwen2.5-coder-1.5b"', [pipe])
    assert judge.provider == "local"


@pytest.mark.parametrize("ref, message", [
    ('nope:"x"', "unknown provider 'nope'"),
    ('openai:""', "the model id is empty"),
    ("gpt-4o", 'expected PROVIDER:"MODEL-ID"'),
    ("small", "no model named 'small'"),
    ('openai:"x', 'expected PROVIDER:"MODEL-ID"'),
])
def test_parse_judge_errors(ref, message):
    with pytest.raises(ConfigError, match=message):
        parse_judge(ref, [moa_dsl.loads(TOPO, filename="t.moa")])


def test_judge_pipeline_is_one_deterministic_node():
    judge = JudgeModel('openai:"gpt-4o"', "openai", "gpt-4o")
    cfg = moa_dsl.config.builtin_providers()["openai"]
    pipe = judge_pipeline(judge, cfg, max_tokens=64)
    attrs = pipe.graph.nodes["judge"]
    assert pipe.output == "judge" and attrs["role"] == "propose"
    assert attrs["params"]["temperature"] == 0 and attrs["params"]["max_tokens"] == 64
    assert "[[A]]" in attrs["params"]["system"]


# --- the report ---------------------------------------------------------------------------------------

def _report():
    items = [Item(0, ("q0",), "ds"), Item(1, ("q1",), "ds")]
    base = TopologyReport("base", [ItemRun("ok", "b0", calls=1, prompt_tokens=10, completion_tokens=5,
                                           cost_usd=0.0001, latency_s=1.0),
                                   ItemRun("ok", "b1", calls=1, latency_s=3.0)])
    moa = TopologyReport("moa", [ItemRun("ok", "m0", calls=4, latency_s=2.0),
                                 ItemRun("failed", None, error="final: boom", calls=4, cost_usd=None, latency_s=None)],
                         scores=[1.0, 0.0], ties_unparseable=1, priced=False)
    return EvalReport("base", JudgeModel('openai:"gpt-4o"', "openai", "gpt-4o"), items, [base, moa],
                      {"calls": 2, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0})


def test_summary_shape():
    summary = _report().summary
    assert summary["baseline"] == "base" and summary["judge"] == 'openai:"gpt-4o"'
    base, moa = summary["topologies"]
    for row in (base, moa):
        assert set(SUMMARY_KEYS) <= set(row)
    assert base["win_rate"] is None and base["stderr"] is None
    assert base["n"] == 2 and base["calls"] == 2 and base["prompt_tokens"] == 10
    assert base["cost_usd"] == pytest.approx(0.0001)
    assert base["latency_mean_s"] == 2.0 and base["latency_p95_s"] == pytest.approx(2.9)
    assert moa["win_rate"] == 0.5 and moa["stderr"] == 0.5 and moa["cost_usd"] is None
    assert moa["latency_mean_s"] == 2.0  # the failed item has no latency
    assert moa["failed_items"] == [{"index": 1, "error": "final: boom"}]
    assert moa["ties_unparseable"] == 1
    # the new statistics: an interval around the estimate, the length control over the items both
    # answered (only item 0: won), lengths in characters, no categories in this dataset
    low, high = moa["win_rate_ci"]
    assert low <= moa["win_rate"] <= high
    assert moa["lc_win_rate"] == 1.0 and moa["avg_length"] == 2.0 and moa["by_category"] is None
    assert base["win_rate_ci"] is None and base["lc_win_rate"] is None and base["by_category"] is None
    assert base["avg_length"] == 2.0
    # Pareto: the baseline (0.5, priced) is on the cost front alone (moa is unpriced); on latency
    # both sit at 2.0 s and 0.5
    assert (base["pareto_cost"], moa["pareto_cost"]) == (True, False)
    assert (base["pareto_latency"], moa["pareto_latency"]) == (True, True)


def test_written_files(tmp_path):
    report = _report()
    report.write(tmp_path / "out")
    outputs = json.loads((tmp_path / "out" / "moa" / "model_outputs.json").read_text())
    assert outputs == [{"instruction": "q0", "output": "m0", "generator": "moa", "dataset": "ds"},
                       {"instruction": "q1", "output": "", "generator": "moa", "dataset": "ds"}]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == report.summary
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| moa | 0.500 | 0.000–1.000 | 1.000 | 0.500 | 2 | 8 |" in md and "| base | baseline | — | — |" in md
    assert "1 unparseable verdicts" in md
    ET.fromstring((tmp_path / "out" / "summary.svg").read_text())
    html = report._repr_html_()
    assert "<table>" in html and "<svg" in html and "<td>moa</td>" in html


def test_an_item_without_two_answers_is_scored_without_a_judge():
    from moa_dsl.evaluation.judge import unjudged_score

    assert unjudged_score(candidate_ok=False, baseline_ok=True) == 0.0
    assert unjudged_score(candidate_ok=True, baseline_ok=False) == 1.0
    assert unjudged_score(candidate_ok=False, baseline_ok=False) == 0.5


def test_item_latency_is_the_critical_path_and_cost_follows_price():
    from types import SimpleNamespace

    from run_helpers import make_pipe, node

    from moa_dsl.evaluation.latency import LatencyLedger, _account
    from moa_dsl.runtime.result import NodeResult

    pipe = make_pipe({"a": node("propose", price=[1.0, 2.0]), "b": node("propose", price=[1.0, 2.0]),
                      "c": node("aggregate", ["a"], price=[1.0, 2.0]),
                      "f": node("aggregate", ["c", "b"], price=[1.0, 2.0])}, "f")
    session = SimpleNamespace(graph=pipe.graph, order=["a", "b", "c", "f"], providers={})
    nodes = {"a": NodeResult("ok", "m", "fake", "x", 10, 20, latency_s=0.5),
             "b": NodeResult("failed", "m", "fake", None, latency_s=2.0, error="boom"),
             "c": NodeResult("ok", "m", "fake", "y", 10, 20, latency_s=1.0),
             "f": NodeResult("ok", "m", "fake", "z", 10, 20, latency_s=0.25)}
    result = SimpleNamespace(nodes=nodes, output_node="f")
    run = ItemRun("ok", None)
    _account(run, session, result, LatencyLedger(None))
    assert run.latency_s == pytest.approx(2.25)      # f waits for the failed b (2.0), not a -> c (1.5)
    assert run.calls == 4 and run.prompt_tokens == 30 and run.completion_tokens == 60
    assert run.cost_usd == pytest.approx((30 * 1.0 + 60 * 2.0) / 1e6)


def test_python_api_on_pipelines_returns_a_displayable_report(tmp_path, monkeypatch):
    from moa_dsl.evaluation import evaluate
    from moa_dsl.testing import FakeLLMServer

    monkeypatch.setenv("MOA_TEST_KEY", "k")

    def responder(model, body):
        return "[[A]]" if model == "judge" else f"{model}: answer"

    with FakeLLMServer(responder=responder) as server:
        head = f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_TEST_KEY") }}\n'
        one = moa_dsl.loads(head + 'node a = propose fake:"m1"\n', filename="one.moa")
        two = moa_dsl.loads(head + 'node a = propose fake:"m2"\n', filename="two.moa")
        report = evaluate([one, two], [{"instruction": "hi"}, {"instruction": "ho"}], judge='fake:"judge"',
                          cache_dir=tmp_path / "cache", concurrency=2)
    # the judge always says A: each answer wins once and loses once -> a split, 0.5
    assert [r["name"] for r in report.summary["topologies"]] == ["topology1", "topology2"]
    assert report.summary["topologies"][1]["win_rate"] == 0.5
    assert report.out is None and "<svg" in report._repr_html_()


def test_parse_judge_bad_escape_is_a_config_error():
    with pytest.raises(ConfigError, match="escape"):
        parse_judge('openai:"gp\\q"', [])


def test_read_items_names_the_line_of_a_bad_conversation_and_rejects_non_utf8(tmp_path):
    bad = tmp_path / "conv.jsonl"
    bad.write_text('{"instruction": "fine"}\n{"query": [{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(ConfigError, match=r"conv\.jsonl:2: .*last message"):
        read_items(bad)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"instruction": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_items(latin)


def test_mt_bench_rows_carry_categories():
    items = [Item(0, ("q0", "f0"), "mt", category="writing"), Item(1, ("q1", "f1"), "mt", category="coding"),
             Item(2, ("q2", "f2"), "mt", category="writing")]
    runs = [ItemRun("ok", "a" * 10), ItemRun("ok", "b" * 20), ItemRun("ok", "c")]
    base = TopologyReport("base", runs)
    cand = TopologyReport("cand", runs, scores=[1.0, 0.0, 0.5])
    summary = EvalReport("base", JudgeModel('openai:"gpt-4o"', "openai", "gpt-4o"), items, [base, cand]).summary
    base_row, cand_row = summary["topologies"]
    assert cand_row["by_category"] == {"writing": 0.75, "coding": 0.0}
    assert base_row["by_category"] is None
    md = EvalReport("base", JudgeModel('openai:"gpt-4o"', "openai", "gpt-4o"), items, [base, cand]).to_markdown()
    assert "| win rate by category | writing | coding |" in md and "| cand | 0.750 | 0.000 |" in md


def test_mt_bench_records_keep_their_category():
    items = read_items([{"turns": ["a", "b"], "category": "math"}, {"instruction": "x"}])
    assert items[0].category == "math" and items[1].category is None
