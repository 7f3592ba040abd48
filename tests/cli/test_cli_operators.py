"""`moa run` on the new operators: stderr lines for cancelled, agreed, selected and votes; `--json`
with reason, cost_usd, selected, votes, agreed and status cancelled; `--trace` with node_cancelled;
`--budget-*` overriding the file's budget; `--dry-run`'s worst case against the budget.

The graphs are built by hand (tests/run_helpers.py, the language half's contract) and handed to the
CLI in place of a parsed file; the calls go to the FakeLLMServer on 127.0.0.1."""
from __future__ import annotations

import json

import pytest

import moa_dsl.runtime as runtime
from moa_dsl.cli import main

from conftest import KEY
from run_helpers import node, served

PRICE = [1.0, 2.0]


@pytest.fixture
def cli(make_server, tmp_path, monkeypatch, cache_dir):
    """`cli(nodes, output, **server_options, budget=...)`: a path `moa run` loads as that graph."""
    monkeypatch.setenv("FAKE_KEY", KEY)
    monkeypatch.setenv("MOA_CACHE_DIR", str(cache_dir))

    def make(nodes, output, *, budget=None, **server_options):
        server = make_server(api_key=KEY, **server_options)
        pipe = served(nodes, output, server.url, budget=budget)
        monkeypatch.setattr(runtime, "load", lambda path: pipe)
        path = tmp_path / "t.moa"
        path.write_text("# stands for the hand-built graph\n")
        return str(path), server
    return make


def operators(cli):
    texts = {"a": "Paris.", "b": "paris", "ranker": "[2] > [1]"}
    return cli({"a": node("propose", model="a", price=PRICE), "b": node("propose", model="b", price=PRICE),
                "slow": node("propose", model="slow", price=PRICE),
                "same": node("aggregate", ["a", "b"], agree=True, price=PRICE),
                "maj": node("vote", ["a", "b", "same"]),
                "fast": node("aggregate", ["a", "b", "slow"], quorum=2, price=PRICE),
                "best": node("rank", ["maj", "fast"], model="ranker", price=PRICE)}, "best",
               latency={"slow": 30.0}, responder=lambda m, b: texts.get(m, f"{m} answer"))


def test_stderr_lines_show_cancelled_agreed_selected_and_votes(cli, capsys):
    path, _ = operators(cli)
    assert main(["run", path, "Capital of France?"]) == 0
    out, err = capsys.readouterr()
    assert out == "m-fast answer\n"                       # the ranker's top input, streamed
    assert "  cancelled slow: quorum" in err
    assert "  agreed   same: its inputs gave the same answer, no call" in err
    assert "  voted    maj: 'paris' 3" in err
    assert "  done     best:" in err and "selected fast" in err
    assert "moa: ok: 5 calls" in err and "$" in err.splitlines()[-1]


def test_json_carries_the_new_fields_exactly_where_they_apply(cli, capsys, tmp_path):
    path, _ = operators(cli)
    trace = tmp_path / "trace.jsonl"
    assert main(["run", path, "Capital of France?", "--json", "--trace", str(trace)]) == 0
    data = json.loads(capsys.readouterr().out)
    nodes = data["nodes"]
    base = {"status", "model", "provider", "text", "usage", "latency_s", "attempts", "error", "started_s",
            "finished_s", "reason", "cost_usd"}
    extra = {n: set(e) - base for n, e in nodes.items()}
    assert extra == {"a": set(), "b": set(), "slow": set(), "same": {"agreed"}, "maj": {"votes"},
                     "fast": set(), "best": {"selected"}}
    assert all(base <= set(e) for e in nodes.values())
    assert nodes["slow"]["status"] == "cancelled" and nodes["slow"]["reason"] == "quorum"
    assert nodes["same"]["agreed"] is True and nodes["same"]["attempts"] == 0 and nodes["same"]["cost_usd"] == 0.0
    assert nodes["maj"]["votes"] == {"paris": 3} and nodes["maj"]["model"] is None
    assert nodes["best"]["selected"] == ["fast"] and nodes["best"]["text"] == "[2] > [1]"
    assert data["output"] == "m-fast answer"
    a = nodes["a"]
    assert a["cost_usd"] == pytest.approx((a["usage"]["prompt_tokens"] * 1 + a["usage"]["completion_tokens"] * 2) / 1e6)
    spent = sum(e["cost_usd"] for e in nodes.values())
    assert data["usage"]["cost_usd"] == pytest.approx(spent, abs=1e-6)
    kinds = [json.loads(line)["kind"] for line in trace.read_text().splitlines()]
    assert "node_cancelled" in kinds


def test_budget_flags_replace_the_files_keys_each_on_its_own(cli, capsys):
    path, server = cli({"a": node("propose", model="a"), "b": node("propose", model="b"),
                        "agg": node("aggregate", ["a", "b"])}, "agg", budget={"calls": 2, "tokens": 10**9})
    assert main(["run", path, "q", "--json"]) == 3          # the file's 2 calls: the aggregator is skipped
    data = json.loads(capsys.readouterr().out)
    assert data["nodes"]["agg"]["status"] == "skipped" and data["nodes"]["agg"]["reason"] == "budget"
    assert data["nodes"]["agg"]["error"].startswith("budget: ")
    assert main(["run", path, "q", "--no-cache", "--budget-calls", "3"]) == 0   # calls replaced, tokens kept
    capsys.readouterr()
    assert main(["run", path, "q", "--no-cache", "--budget-calls", "3", "--budget-tokens", "5"]) == 3
    _, err = capsys.readouterr()
    assert "skipped  a: budget: " in err
    assert main(["run", path, "q", "--budget-usd", "0"]) == 2
    assert "--budget-usd must be a number > 0" in capsys.readouterr().err


def test_dry_run_prints_each_calls_worst_case_and_the_total_against_the_budget(cli, capsys):
    path, server = cli({"a": node("propose", model="a", max_tokens=100, price=PRICE),
                        "b": node("propose", model="b", max_tokens=100, price=PRICE),
                        "seq": node("aggregate", ["a", "b", "a"], window=2, max_tokens=50, price=PRICE),
                        "maj": node("vote", ["a", "b"]),
                        "out": node("aggregate", ["seq", "maj"], max_tokens=10, price=PRICE)}, "out",
                       budget={"usd": 1.0})
    assert main(["run", path, "Why?", "--dry-run", "--budget-calls", "3"]) == 0
    out = capsys.readouterr().out
    assert server.requests == []
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("worst", "5 "))}
    q = -(-len("Why?") // 4)
    assert f"worst={q + 100} tokens ${(q * 1 + 100 * 2) / 1e6:.6f}" in lines["a"]
    assert "calls=2" in lines["seq"]                      # 3 inputs, window 2: two folds
    assert "calls=0 cache=none" in lines["maj"] and "worst=" not in lines["maj"]
    total = out.splitlines()[-1]
    assert total.startswith("worst case: 5 calls, ") and "budget: $1 (fits), 3 calls (worst case passes it)" in total


def test_a_moa_file_with_a_budget_statement_and_the_operators(make_server, tmp_path, monkeypatch, capsys,
                                                               cache_dir):
    """The language half's graph, from a real file: the statement's budget, the flags over it, the
    ranker's default instruction (config.RANK_PROMPT)."""
    from moa_dsl.config import RANK_PROMPT
    from moa_dsl.testing import default_answer

    server = make_server(api_key=KEY, responder={"r": lambda m, b: "[3] > [1]",
                                                 "*": lambda m, b: default_answer(m, b["messages"])})
    monkeypatch.setenv("FAKE_KEY", KEY)
    monkeypatch.setenv("MOA_CACHE_DIR", str(cache_dir))
    path = tmp_path / "ops.moa"
    path.write_text(f"""
provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY") }}
budget {{ calls = 5 }}
layer p    = propose [fake:"a", fake:"b", fake:"c"]
node  best = rank fake:"r" <- p {{ top_k = 2 }}
node  maj  = vote <- p
node  fuse = aggregate fake:"f" <- best, maj
""")
    assert main(["run", str(path), "q", "--json"]) == 0        # 3 proposers, the ranker, the aggregator
    data = json.loads(capsys.readouterr().out)
    assert data["nodes"]["maj"]["votes"] is not None and data["nodes"]["maj"]["cost_usd"] == 0.0
    assert data["nodes"]["best"]["selected"] == ["p.c", "p.a"]
    texts = [data["nodes"][n]["text"].strip() for n in ("p.c", "p.a", "p.a")]   # maj: p.a's text (first cast)
    assert server.requests_for("f")[0].body["messages"][0]["content"].endswith(
        "".join(f"\n{i}. {t}" for i, t in enumerate(texts, 1)))
    assert server.requests_for("r")[0].body["messages"][0]["content"].startswith(RANK_PROMPT + "\n[1] ")
    assert main(["run", str(path), "q", "--no-cache", "--budget-calls", "4"]) == 3
    assert "skipped  fuse: budget: " in capsys.readouterr().err
    assert main(["run", str(path), "q", "--dry-run", "--no-cache"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("budget: 5 calls (fits)")
