"""`moa run` end to end, in-process, against the FakeLLMServer on 127.0.0.1."""
from __future__ import annotations

import itertools
import json

import pytest

from moa_dsl.cli import main

from conftest import DATASETS, KEY


@pytest.fixture
def moa_file(server, tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("FAKE_KEY", KEY)
    monkeypatch.setenv("MOA_CACHE_DIR", str(cache_dir))
    path = tmp_path / "t.moa"
    path.write_text(f"""
provider fake = openai {{ base_url = "{server.url}", api_key = env("FAKE_KEY") }}
layer first = propose [fake:"a", fake:"b"]
node final = aggregate fake:"agg" <- first
""")
    return str(path)


def test_streams_the_answer_to_stdout_and_node_lines_to_stderr(moa_file, server, capsys):
    assert main(["run", moa_file, "Why is the sky blue?"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("agg on 'Why is the sky blue?'") and out.endswith("\n")
    assert "started  first.a (fake:a)" in err and "done     final:" in err
    assert "moa: ok: 3 calls, 0 cache hits" in err
    assert main(["run", moa_file, "-q", "Why is the sky blue?"]) == 0
    out2, err2 = capsys.readouterr()
    assert out2 == out and "cached   final" in err2 and "0 calls, 3 cache hits" in err2


def test_on_a_shared_terminal_the_answer_ends_its_line_before_the_next_stderr_line(moa_file, monkeypatch):
    """stdout and stderr on one terminal: 'done final' must start a line, not trail the answer."""
    import io
    import sys

    screen = io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    assert main(["run", moa_file, "Why is the sky blue?"]) == 0
    lines = screen.getvalue().splitlines()
    answer = next(i for i, line in enumerate(lines) if line.startswith("agg on 'Why is the sky blue?'"))
    assert lines[answer + 1].startswith("  done     final:")
    assert screen.getvalue().count("\n\n") == 0   # and no blank line for it


def test_stdin_query_and_quiet(moa_file, server, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin"))
    assert main(["run", moa_file, "-", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "from stdin" in out and err == ""


def test_json_output(moa_file, capsys):
    assert main(["run", moa_file, "-q", "hi", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "ok" and data["output_node"] == "final" and data["usage"]["calls"] == 3


@pytest.mark.parametrize("argv, message", [
    ([], "no query"),
    (["QUERY", "-q", "x"], "give the query once"),
    (["-q", "x", "--concurrency", "0"], "--concurrency must be >= 1"),
    (["-q", "x", "--no-cache", "--refresh"], "contradict"),
    (["-q", "   "], "empty"),
])
def test_usage_errors_exit_2(moa_file, server, capsys, argv, message):
    assert main(["run", moa_file, *argv]) == 2
    assert message in capsys.readouterr().err
    assert server.requests == []


def test_missing_file_and_invalid_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.moa"), "q"]) == 2
    bad = tmp_path / "bad.moa"
    bad.write_text('node final = aggregate openai:"x"\n')
    assert main(["run", str(bad), "q"]) == 1
    assert "error[" in capsys.readouterr().err


def test_missing_key_exit_2(moa_file, server, monkeypatch, capsys):
    monkeypatch.delenv("FAKE_KEY")
    assert main(["run", moa_file, "q"]) == 2
    assert "FAKE_KEY" in capsys.readouterr().err and server.requests == []


def test_failed_output_exit_3(moa_file, server, capsys):
    server.inject("agg", "400", message="refused")
    assert main(["run", moa_file, "q"]) == 3
    err = capsys.readouterr().err
    assert "failed   final" in err and "refused" in err


def test_set_overrides_reach_the_request(moa_file, server, capsys):
    assert main(["run", moa_file, "q", "--set", "temperature=0", "--set", "final.max_tokens=7"]) == 0
    bodies = {r.model: r.body for r in server.requests}
    assert bodies["a"]["temperature"] == 0 and bodies["agg"]["max_tokens"] == 7 and bodies["a"]["max_tokens"] == 512


def test_dry_run_calls_nothing(moa_file, server, capsys):
    assert main(["run", moa_file, "q", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "first.a" in out and "cache=unknown" in out and "2 calls (+ up to 1" in out
    assert server.requests == []


def test_trace_and_no_cache(moa_file, server, tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    assert main(["run", moa_file, "q", "--trace", str(trace), "--no-cache"]) == 0
    assert main(["run", moa_file, "q", "--no-cache"]) == 0
    assert len(server.requests) == 6
    text = trace.read_text()
    assert KEY not in text and {json.loads(x)["kind"] for x in text.splitlines()} >= {"node_started", "request_sent"}


def test_batch_alpaca_and_mt_bench_in_input_order(moa_file, server, tmp_path, capsys):
    lines = []
    with open(DATASETS / "alpaca_eval.jsonl") as f:
        lines += list(itertools.islice(f, 3))
    with open(DATASETS / "mt_bench.jsonl") as f:
        lines += list(itertools.islice(f, 2))
    lines.append(json.dumps({"query": [{"role": "user", "content": "conv"}]}) + "\n")
    inp, outp = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(lines))
    assert main(["run", moa_file, "--input", str(inp), "--output", str(outp), "--concurrency", "4"]) == 0
    rows = [json.loads(x) for x in outp.read_text().splitlines()]
    items = [json.loads(x) for x in lines]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    for row, item in zip(rows, items):
        assert {k: row[k] for k in item} == item  # input order, input fields kept
    assert rows[0]["output"].startswith(f"agg on {' '.join(items[0]['instruction'].split()[:8])!r}")
    # MT-Bench: turn 2 is sent as a real conversation with turn 1's answer in between
    mt = rows[3]
    assert len(mt["outputs"]) == 2 and mt["output"] == mt["outputs"][1]
    t1, t2 = mt["turns"]
    second = [r.body["messages"] for r in server.requests_for("a") if r.body["messages"][-1]["content"] == t2]
    assert second == [[{"role": "user", "content": t1}, {"role": "assistant", "content": mt["outputs"][0]},
                       {"role": "user", "content": t2}]]
    assert server.max_in_flight <= 4
    err = capsys.readouterr().err
    assert "6/6 done" in err and "6/6 ok" in err


def test_batch_bad_input_exit_2(moa_file, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"instruction": "ok"}\n{"nope": 1}\n')
    assert main(["run", moa_file, "--input", str(inp)]) == 2
    assert "in.jsonl:2" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--trace", "--output"])
def test_unwritable_trace_or_output_is_a_usage_error_before_any_call(moa_file, server, tmp_path, capsys, flag):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"instruction": "q"}\n')
    query = ["--input", str(inp)] if flag == "--output" else ["q"]
    assert main(["run", moa_file, *query, flag, str(tmp_path / "no-such-dir" / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no-such-dir" in err and "Traceback" not in err
    assert server.requests == []


class _ClosedPipe:
    """A stdout whose reader has gone away (`moa run ... | head -1`)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def isatty(self):
        return False


def test_a_closed_stdout_does_not_fail_the_run(moa_file, server, capsys, monkeypatch):
    import sys

    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", _ClosedPipe())
        assert main(["run", moa_file, "piped query"]) == 0
    assert "failed" not in capsys.readouterr().err
    assert main(["run", moa_file, "piped query"]) == 0  # the answer was complete, so it was cached
    out, err = capsys.readouterr()
    assert out.startswith("agg on 'piped query'") and "0 calls, 3 cache hits" in err


@pytest.mark.parametrize("line, message", [
    ('{"instruction": 5}', "in.jsonl:2: 'instruction' must be a non-empty string"),
    ('{"query": [{"role": "user"}]}', "in.jsonl:2: query message 0"),
    ('{"query": [{"role": "assistant", "content": "x"}]}', "in.jsonl:2: the last message"),
])
def test_batch_checks_every_line_before_running_any(moa_file, server, tmp_path, capsys, line, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"instruction": "ok"}\n' + line + "\n")
    assert main(["run", moa_file, "--input", str(inp)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert server.requests == []


def test_batch_non_utf8_input_exit_2(moa_file, server, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes('{"instruction": "caf\xe9"}\n'.encode("latin-1"))
    assert main(["run", moa_file, "--input", str(inp)]) == 2
    assert "not UTF-8" in capsys.readouterr().err and server.requests == []


def test_trace_leaves_token_events_out(moa_file, server, tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    tokens = []
    assert main(["run", moa_file, "stream me", "--trace", str(trace)]) == 0
    assert capsys.readouterr().out.startswith("agg on 'stream me'")
    kinds = [json.loads(x)["kind"] for x in trace.read_text().splitlines()]
    assert "token" not in kinds and {"node_started", "request_sent", "node_finished"} <= set(kinds)
    import asyncio

    from moa_dsl import load
    from moa_dsl.runtime.scheduler import arun
    asyncio.run(arun(load(moa_file), "stream me too", on_event=lambda e: tokens.append(e.kind), trace=str(trace)))
    assert "token" in tokens  # callbacks still get them
    assert "token" not in {json.loads(x)["kind"] for x in trace.read_text().splitlines()}


def test_a_batch_piped_into_head_exits_cleanly_and_still_fills_the_cache(moa_file, server, tmp_path, monkeypatch):
    """`moa run --input … | head -1` for real: the reader leaves after the first row; the batch goes
    on (its answers are cached), exits 0, and never prints a traceback."""
    import os
    import subprocess
    import sys

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"instruction": f"question {i}"}) + "\n" for i in range(6)))
    cmd = (f"{sys.executable} -m moa_dsl run {moa_file} --input {inp} --concurrency 1 | head -1; "
           "exit ${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "moa: 6/6 ok" in done.stderr
    assert json.loads(done.stdout)["instruction"] == "question 0"       # the first row, whole
    assert main(["run", moa_file, "--input", str(inp), "--output", str(tmp_path / "o.jsonl")]) == 0
    assert len(server.requests) == 18                                   # the rerun called nothing


def test_failure_and_totals_are_worded_by_runtime_report(moa_file, server, tmp_path, capsys):
    """One wording for why the output failed and for the totals: runtime.report's, in run and batch."""
    server.inject("agg", "400", message="refused")
    assert main(["run", moa_file, "q", "--json"]) == 3
    out, err = capsys.readouterr()
    from moa_dsl.runtime.report import failure_reason, totals_line
    from moa_dsl.runtime.result import NodeResult, RunResult, Usage

    node = json.loads(out)["nodes"]["final"]
    result = RunResult(None, "final", "failed", 0.0, Usage(), {"final": NodeResult("failed", "agg", "fake",
                                                                                     error=node["error"])})
    assert f"moa run: the output node 'final' did not answer: {failure_reason(result)}\n" in err
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"instruction": "q2"}\n')
    assert main(["run", moa_file, "--input", str(inp), "--output", str(tmp_path / "o.jsonl")]) == 0
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert f"moa: {totals_line('1/1 ok', row['usage'], None)}\n" in capsys.readouterr().err
