"""`%%moa` / `%moa` in a real IPython InteractiveShell, against a loopback FakeLLMServer.

The shell is the jupysql kind: history off, and `run` re-raises anything but the MoaErrors that the
tests expect; output is captured to check that errors never print a traceback.
"""
from __future__ import annotations

import _thread
import threading
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from moa_dsl.errors import ConfigError, MoaError, RunFailed
from moa_dsl.jupyter.magics import RunInterrupted
from moa_dsl.language.export import topology_text
from moa_dsl.runtime import result_html, result_markdown
from moa_dsl.runtime.cache import ResponseCache
from moa_dsl.testing import FakeLLMServer

from conftest import KEY


@pytest.fixture(scope="module")
def ip():
    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    shell.run_cell("%load_ext moa_dsl").raise_error()
    yield shell
    InteractiveShell.clear_instance()


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("MOA_NB_TEST_KEY", KEY)   # conftest's `server` requires it


def run(ip, code: str):
    """Run a cell; re-raise whatever went wrong (as jupysql's TestingShell does)."""
    res = ip.run_cell(code)
    res.raise_error()
    return res


def run_failing(ip, code: str, capsys) -> tuple[BaseException, str]:
    """Run a cell that must fail; return the error and everything printed."""
    res = ip.run_cell(code)
    assert res.error_in_exec is not None or res.error_before_exec is not None
    out = capsys.readouterr()
    return res.error_in_exec or res.error_before_exec, out.out + out.err


def topology(url: str, *, extra: str = "") -> str:
    return f"""
provider fake = openai {{ base_url = "{url}", api_key = env("MOA_NB_TEST_KEY"), retries = 0 }}
node a = propose fake:"ma" {{ max_tokens = 16 }}
node b = propose fake:"mb" {{ max_tokens = 16 }}
node final = aggregate fake:"mf" <- a, b {{ max_tokens = 24 }}
{extra}"""


def test_cell_binds_the_pipeline_and_shows_the_graph(ip, server, capsys):
    run(ip, "%%moa\n" + topology(server.url))
    pipe = ip.user_ns["moa_pipeline"]
    assert set(pipe.graph.nodes) == {"a", "b", "final"} and pipe.output == "final"
    out = capsys.readouterr().out
    assert "3 nodes, output final" in out and "final = aggregate fake:mf <- a, b" in out
    assert server.requests == []   # defining a topology calls nothing


def test_as_binds_another_name(ip, server):
    ip.user_ns.pop("other", None)
    run(ip, "%%moa --as other\n" + topology(server.url))
    assert ip.user_ns["other"].output == "final"


def test_the_line_expands_but_the_body_does_not(ip, server):
    ip.user_ns.update(x="EXPANDED", question="why is the sky blue", name="expanded_pipe")
    body = topology(server.url).replace('node final = aggregate fake:"mf" <- a, b {',
                                        'node final = aggregate fake:"mf" <- a, b { prompt = "keep {x} and $x",')
    run(ip, "%%moa --as $name -q {question} -o res_{x.lower()} --no-cache\n" + body)
    pipe = ip.user_ns["expanded_pipe"]
    assert pipe.graph.nodes["final"]["params"]["prompt"] == "keep {x} and $x"
    assert ip.user_ns["res_expanded"].status == "ok"
    sent = server.requests_for("ma")[0].body["messages"]
    assert sent[-1] == {"role": "user", "content": "why is the sky blue"}   # one argument, spaces kept
    final_system = server.requests_for("mf")[0].body["messages"][0]["content"]
    assert final_system.startswith("keep {x} and $x")


def test_single_quotes_keep_the_line_literal(ip, server):
    ip.user_ns["x"] = "EXPANDED"
    run(ip, "%%moa -q 'what is {x}' -o lit --no-cache\n" + topology(server.url))
    assert server.requests_for("ma")[0].body["messages"][-1]["content"] == "what is {x}"


def test_run_binds_the_result_and_shows_the_answer(ip, server, cache_dir, capsys):
    run(ip, f"%%moa -q 'Why is the sky blue?' --cache-dir {cache_dir}\n" + topology(server.url))
    result = ip.user_ns["_moa"]
    assert result.status == "ok" and result.output
    assert {n.status for n in result.nodes.values()} == {"ok"}
    out = capsys.readouterr().out
    assert result.output in out                       # streamed, then shown as the final answer
    assert "ok: 3 calls, 0 cache hits" in out         # the totals line
    assert "Traceback" not in out


def test_rerun_comes_from_the_cache_with_no_request(ip, server, cache_dir, capsys):
    run(ip, "%%moa --as cached_pipe\n" + topology(server.url))
    run(ip, f"%moa run cached_pipe -q 'Why is the sky blue?' -o first --cache-dir {cache_dir}")
    sent = len(server.requests)
    assert sent == 3
    run(ip, f"%moa run cached_pipe -q 'Why is the sky blue?' -o second --cache-dir {cache_dir}")
    second = ip.user_ns["second"]
    assert len(server.requests) == sent
    assert {n: r.status for n, r in second.nodes.items()} == {"a": "cached", "b": "cached", "final": "cached"}
    assert second.output == ip.user_ns["first"].output
    assert second.usage.calls == 0 and second.usage.cache_hits == 3
    # --refresh calls again; --no-cache neither reads nor writes
    run(ip, f"%moa run cached_pipe -q 'Why is the sky blue?' -o third --refresh --cache-dir {cache_dir}")
    assert len(server.requests) == 2 * sent
    assert capsys.readouterr().out.count("3 cache hits") == 1


def test_set_overrides_every_node(ip, server):
    run(ip, "%%moa --as setp\n" + topology(server.url))
    run(ip, "%moa run setp -q hi --no-cache --set max_tokens=3 --set final.temperature=0")
    assert {r.body["max_tokens"] for r in server.requests} == {3}
    assert server.requests_for("mf")[0].body["temperature"] == 0


def test_dry_run_plans_and_calls_nothing(ip, server, cache_dir, capsys):
    run(ip, f"%%moa -q 'plan me' --dry-run --cache-dir {cache_dir}\n" + topology(server.url))
    out = capsys.readouterr().out
    assert server.requests == []
    assert "calls=1 cache=miss" in out and "calls=? cache=unknown" in out
    assert "3 nodes: 2 calls" in out


@pytest.mark.parametrize("body, code", [
    ('node a = propose fake:"m" {\n', "E101"),          # syntax
    ('node a = propose nosuchmodel\n', "E201"),         # validation
    ('node a = propose fake:"m" { temprature = 1 }\n', "E205"),
])
def test_a_bad_cell_shows_diagnostics_without_a_traceback(ip, server, capsys, body, code):
    prov = f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_NB_TEST_KEY") }}\n'
    ip.user_ns.pop("bad_pipe", None)
    err, out = run_failing(ip, "%%moa --as bad_pipe\n" + prov + body, capsys)
    assert isinstance(err, MoaError)
    assert code in out and "<cell>:3:" in out   # line numbers are the cell's: %%moa is line 1
    assert "Traceback" not in out
    assert "bad_pipe" not in ip.user_ns


def test_a_missing_api_key_is_a_short_message(ip, server, capsys, monkeypatch):
    monkeypatch.delenv("MOA_TEST_ABSENT_KEY", raising=False)
    cell = (f'%%moa -q hi --no-cache\nprovider keyed = openai {{ base_url = "{server.url}", '
            'api_key = env("MOA_TEST_ABSENT_KEY") }\nnode a = propose keyed:"m"\n')
    err, out = run_failing(ip, cell, capsys)
    assert isinstance(err, ConfigError)
    assert "MOA_TEST_ABSENT_KEY" in out and "Traceback" not in out
    assert server.requests == []


def test_a_failed_run_binds_the_result_and_says_why(ip, server, capsys):
    server.inject("mf", "400", message="no such thing")
    err, out = run_failing(ip, "%%moa -q hi -o failed_run --no-cache\n" + topology(server.url), capsys)
    assert isinstance(err, RunFailed)
    result = ip.user_ns["failed_run"]
    assert result.status == "failed" and result.nodes["final"].status == "failed"
    assert "no such thing" in out and "failed_run" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("line, message", [
    ("%moa", "usage: %moa run NAME"),
    ("%moa run nowhere -q hi", "no pipeline named 'nowhere'"),
    ("%moa run ip_not_pipe -q hi", "not a moa_dsl Pipeline"),
    ("%moa run moa_pipeline -q 'unterminated", "No closing quotation"),
    ("%moa run moa_pipeline", "-q QUERY is needed"),
    ("%moa run moa_pipeline -q hi --concurrency 0", "--concurrency must be at least 1"),
    ("%moa run moa_pipeline -q hi --bogus", "unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line(ip, server, capsys, line, message):
    run(ip, "%%moa\n" + topology(server.url))
    ip.user_ns["ip_not_pipe"] = 42
    capsys.readouterr()
    err, out = run_failing(ip, line, capsys)
    assert message in out and "Traceback" not in out
    assert server.requests == []


def test_interrupt_cancels_calls_in_flight_and_keeps_completed_ones(ip, cache_dir, capsys):
    with FakeLLMServer(latency={"mb": 60.0}) as server:
        run(ip, "%%moa --as slow\n" + topology(server.url))
        baseline = {t.ident for t in threading.enumerate()}

        def interrupt_when_b_is_in_flight():
            # Not a fixed pause: wait until b is at the server and a's answer is in the cache (the
            # runner stores it before a's node_finished), then interrupt.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if server.requests_for("mb") and server.requests_for("ma")[0:1] and \
                        server.requests_for("ma")[0].finished is not None:
                    break
                time.sleep(0.02)
            with ResponseCache(cache_dir) as cache:
                while time.monotonic() < deadline and cache.stats()["entries"] < 1:
                    time.sleep(0.02)
            _thread.interrupt_main()

        timer = threading.Thread(target=interrupt_when_b_is_in_flight, daemon=True)
        timer.start()
        err, out = run_failing(ip, f"%moa run slow -q hi -o interrupted --cache-dir {cache_dir}", capsys)
        timer.join()
        assert isinstance(err, RunInterrupted)
        assert "interrupted" in out and "Traceback" not in out
        assert "interrupted" not in ip.user_ns
        leftover = [t for t in threading.enumerate() if t.ident not in baseline and t.is_alive()]
        assert leftover == []       # the run's loop and thread are gone: nothing is still running

        # the completed call (a) was cached; b was never stored, so only b and final are called again
        server.latency["mb"] = 0.0
        before = len(server.requests_for("ma"))
        run(ip, f"%moa run slow -q hi -o resumed --cache-dir {cache_dir}")
        resumed = ip.user_ns["resumed"]
        assert resumed.nodes["a"].status == "cached" and resumed.nodes["b"].status == "ok"
        assert len(server.requests_for("ma")) == before


def test_rich_reprs(ip, server, cache_dir):
    run(ip, f"%%moa -q 'Why?' --cache-dir {cache_dir}\n" + topology(server.url))
    pipe, result = ip.user_ns["moa_pipeline"], ip.user_ns["_moa"]
    page = pipe._repr_html_()
    assert "<svg" in page or "<table" in page
    assert "fake:ma" in page and "final" in topology_text(pipe.graph, name=pipe.name)
    html, md = result_html(result), result_markdown(result)
    assert "ok: 3 calls" in html and "<td>final</td>" in html
    assert "| final | ok | fake:mf |" in md and md.rstrip().endswith(result.output)
