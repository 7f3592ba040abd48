"""`moa serve`'s life: it will not start on a file with errors; SIGTERM lets requests in flight
finish and exits 0; SIGHUP reloads; past --max-queue a request gets 429."""
from __future__ import annotations

import shutil
import signal
import threading
from pathlib import Path

import openai
import pytest
from serve_helpers import ServeProcess, poll

from moa_dsl.testing import FakeLLMServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ENV = {"FAKE_PROVIDER_KEY": "sk-lifecycle-key"}


def _write(path: Path, url: str, model: str) -> Path:
    path.write_text(f'provider fake = openai {{ base_url = "{url}", api_key = env("FAKE_PROVIDER_KEY") }}\n'
                    f'node p = propose fake:"{model}"\nnode out = aggregate fake:"m-out" <- p\n', encoding="utf-8")
    return path


def test_a_file_with_errors_stops_the_server_from_starting(tmp_path):
    bad = tmp_path / "bad.moa"
    shutil.copy(FIXTURES / "invalid" / "e101_unterminated_string.moa", bad)
    with FakeLLMServer() as fake:
        _write(tmp_path / "good.moa", fake.url, "m")
        proc = ServeProcess([str(tmp_path)], env=ENV, wait=False)
        code = proc.wait()
    assert code == 1
    assert "bad.moa:2:" in proc.stderr and "error[E101]" in proc.stderr    # rendered as `moa check` does
    assert "not serving" in proc.stderr and " on http://" not in proc.stderr


def test_usage_problems_exit_2(tmp_path):
    with FakeLLMServer() as fake:
        good = _write(tmp_path / "good.moa", fake.url, "m")
        no_key = ServeProcess([str(good), "--api-key-env", "MOA_TEST_UNSET_VARIABLE"], env=ENV, wait=False)
        assert no_key.wait() == 2 and "MOA_TEST_UNSET_VARIABLE" in no_key.stderr
        no_provider_key = ServeProcess([str(good)], env={"FAKE_PROVIDER_KEY": ""}, wait=False)
        assert no_provider_key.wait() == 2 and "FAKE_PROVIDER_KEY" in no_provider_key.stderr
        missing = ServeProcess([str(tmp_path / "nope.moa")], env=ENV, wait=False)
        assert missing.wait() == 2 and "no such file" in missing.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_lets_requests_in_flight_finish_then_exits_0(tmp_path, sig):
    with FakeLLMServer(latency={"m-slow": 1.5}) as fake:
        _write(tmp_path / "slow.moa", fake.url, "m-slow")
        proc = ServeProcess([str(tmp_path), "--no-cache"], env=ENV)
        try:
            client = openai.OpenAI(base_url=proc.url, api_key="unused", max_retries=0, timeout=60)
            answers: list = []
            worker = threading.Thread(target=lambda: answers.append(client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "in flight"}])))
            worker.start()
            assert poll(lambda: len(fake.requests_for("m-slow")) == 1)     # its call is out
            proc.signal(sig)
            worker.join(timeout=60)
            assert proc.wait() == 0, proc.stderr
        finally:
            proc.close()
    assert len(answers) == 1 and answers[0].choices[0].message.content
    assert [r.model for r in fake.requests] == ["m-slow", "m-out"]              # the whole run finished
    assert any(" 200 topology=slow calls=2" in ln for ln in proc.log_lines())


def test_past_max_queue_a_request_is_429(tmp_path):
    with FakeLLMServer(latency={"m-slow": 1.5}) as fake:
        _write(tmp_path / "slow.moa", fake.url, "m-slow")
        proc = ServeProcess([str(tmp_path), "--no-cache", "--max-queue", "1"], env=ENV)
        try:
            client = openai.OpenAI(base_url=proc.url, api_key="unused", max_retries=0, timeout=60)
            first = threading.Thread(target=lambda: client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "one"}]))
            first.start()
            assert poll(lambda: len(fake.requests_for("m-slow")) == 1)
            with pytest.raises(openai.RateLimitError) as err:
                client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "two"}])
            assert "1 requests running or waiting" in str(err.value)
            first.join(timeout=60)
            again = client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "three"}])
            assert again.choices[0].message.content
        finally:
            proc.close()


def test_sighup_reloads_and_a_bad_reload_keeps_the_previous_topologies(tmp_path):
    with FakeLLMServer() as fake:
        _write(tmp_path / "first.moa", fake.url, "m1")
        proc = ServeProcess([str(tmp_path)], env=ENV)
        try:
            client = openai.OpenAI(base_url=proc.url, api_key="unused", max_retries=0, timeout=60)
            assert [m.id for m in client.models.list()] == ["first"]
            _write(tmp_path / "second.moa", fake.url, "m2")
            proc.signal(signal.SIGHUP)
            proc.wait_for(lambda ln: "reloaded 2 topologies" in ln)
            assert sorted(m.id for m in client.models.list()) == ["first", "second"]
            assert client.chat.completions.create(model="second", messages=[{"role": "user", "content": "x"}])
            shutil.copy(FIXTURES / "invalid" / "e101_unterminated_string.moa", tmp_path / "third.moa")
            proc.signal(signal.SIGHUP)
            proc.wait_for(lambda ln: "reload failed" in ln)
            assert "error[E101]" in proc.stderr
            assert sorted(m.id for m in client.models.list()) == ["first", "second"]
        finally:
            proc.close()
        assert proc.proc.returncode == 0
