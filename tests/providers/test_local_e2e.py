"""The embedded default for real: pull the three built-ins, run examples/local.moa on llama.cpp.

Models go to the tests' own models directory (conftest's test_models_dir: $MOA_TEST_MODELS_DIR or
.pytest-models/, never ~/.cache/moa-dsl/models), kept between runs: ~1.7 GB the first time, a few
seconds of size checks after. The response cache is private to each test.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

import moa_dsl
from moa_dsl.providers.local import registry as models
from moa_dsl.errors import LocalModelError, ProviderHTTPError
from moa_dsl.providers.local import llamacpp as local
from moa_dsl.providers.base import CallRequest

from conftest import EXAMPLES

pytestmark = pytest.mark.local_models
QUESTION = "Why do leaves change colour in autumn? Answer in a few sentences."


@pytest.fixture(scope="module")
def pulled():
    return models.pull(list(models.BUILTINS), progress=models.stderr_progress())


def test_pull_makes_every_builtin_present(pulled):
    statuses = {s.name: s for s in models.list_models()}
    assert all(statuses[name].present for name in models.BUILTINS)
    assert [p.name for p in pulled] == [m.filename for m in models.BUILTINS.values()]


def test_local_moa_runs_on_real_models_then_from_the_cache(pulled, cache_dir):
    pipe = moa_dsl.load(EXAMPLES / "local.moa")
    first = pipe.run(QUESTION, cache_dir=cache_dir)
    assert first.status == "ok", {n: r.error for n, r in first.nodes.items()}
    assert {r.status for r in first.nodes.values()} == {"ok"}
    families = {models.BUILTINS[r.model].family for r in first.nodes.values()}
    assert len(families) >= 2
    assert first.output and first.output.strip()
    assert all(r.text and r.completion_tokens > 0 for r in first.nodes.values())

    again = pipe.run(QUESTION, cache_dir=cache_dir)
    assert {r.status for r in again.nodes.values()} == {"cached"}
    assert again.output == first.output
    assert again.usage.calls == 0 and again.usage.cache_hits == len(first.nodes)


def test_real_context_overflow_is_reported_not_truncated(pulled):
    async def go():
        provider = local.LocalProvider(name="local")
        try:
            await provider.complete(CallRequest(
                "agg", "smollm2-135m", [{"role": "user", "content": "word " * (local.N_CTX + 500)}],
                {"max_tokens": 4}, retries=0))
        finally:
            await provider.aclose()

    with pytest.raises(ProviderHTTPError, match="agg: the prompt is too long for local model 'smollm2-135m'"):
        asyncio.run(go())


def test_llama_cpp_stays_quiet_while_loading(pulled, capfd, monkeypatch):
    monkeypatch.delenv("MOA_VERBOSE", raising=False)
    monkeypatch.setattr(local, "_verbose_requested", False)
    local.shutdown()                      # force a fresh load in this test
    url = local.serve(local.resolve("smollm2-135m"))
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def _ask(provider, model: str = "smollm2-135m", node: str = "n"):
    return provider.complete(CallRequest(node, model, [{"role": "user", "content": "Say hi."}],
                                         {"max_tokens": 4, "temperature": 0}, retries=0))


def test_a_server_that_dies_is_reported_then_started_again(pulled):
    """The server runs in a child process: killing it (as a llama.cpp crash would) fails the call
    with a clear error and leaves this process alive; the next call starts a new server."""
    path = local.resolve("smollm2-135m")

    async def go():
        provider = local.LocalProvider(name="local")
        try:
            assert (await _ask(provider)).text                # served
            proc = local._servers[path].server.proc
            assert proc.pid != os.getpid() and proc.poll() is None
            with open(f"/proc/{proc.pid}/environ", "rb") as f:   # OpenMP threads sleep, not spin (local._server_env)
                assert b"OMP_WAIT_POLICY=PASSIVE" in f.read().split(b"\0")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            with pytest.raises(LocalModelError, match=r"^n: llama.cpp's server for local model 'smollm2-135m' "
                                                      r"stopped \(exit code -9\); the next call starts it again$"):
                await _ask(provider)
            assert local.exit_code(path) == -9 and path not in local.running()
            assert (await _ask(provider)).text                # same provider, a new server
            assert local._servers[path].server.proc.pid != proc.pid and path in local.running()
        finally:
            await provider.aclose()

    asyncio.run(go())


def test_no_server_outlives_the_process_that_started_it(pulled, tmp_path):
    """SIGKILL the user's process (no atexit runs): its servers see their stdin close and exit."""
    script = ("import sys\nfrom moa_dsl.providers.local import llamacpp as local\n"
              "local.serve(local.resolve('smollm2-135m'))\n"
              "[slot] = local._servers.values()\nprint(slot.server.proc.pid, flush=True)\nsys.stdin.read()\n")
    user = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(user.stdout.readline())
        os.kill(server_pid, 0)                                # alive while its user is
    finally:
        user.kill()
        user.wait()
    for _ in range(600):                                      # it exits at once; 60 s for a loaded machine
        if not _pid_alive(server_pid):
            break
        time.sleep(0.1)
    assert not _pid_alive(server_pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_file_llama_cpp_cannot_load_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 64)          # the magic, then garbage
    with pytest.raises(LocalModelError, match=f"llama.cpp .*{bad.name}"):
        local.serve(local.resolve(str(bad)))
    assert local.resolve(str(bad)) not in local.running()
