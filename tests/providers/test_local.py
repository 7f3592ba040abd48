"""The local provider without loading a model: resolving ids, the server registry, error wording.

A loopback HTTP server started here plays llama.cpp's part where the HTTP path matters; the real
runtime is exercised in tests/providers/test_local_e2e.py.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moa_dsl.providers.local import registry as models
from moa_dsl.errors import ConfigError, LocalModelError, ProviderHTTPError
from moa_dsl.providers.local import llamacpp as local
from moa_dsl.providers.base import CallRequest

CONTEXT_400 = {"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 9000, "n_ctx": 4096,
                         "message": "request (9000 tokens) exceeds the available context size (4096 tokens), "
                                    "try increasing it"}}


class _Handler(BaseHTTPRequestHandler):
    """llama.cpp's answers: a completion, or its 400 for a prompt longer than the context."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.bodies.append((self.path, body))   # type: ignore[attr-defined]
        too_long = len(body["messages"][-1]["content"]) > 1000
        status, data = (400, CONTEXT_400) if too_long else (200, {
            "choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_llama(monkeypatch, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    monkeypatch.setattr(local, "_start", lambda path: _FakeServer(f"http://127.0.0.1:{server.server_port}"))
    local.shutdown()
    yield server, gguf
    local.shutdown()
    server.shutdown()
    server.server_close()


class _FakeServer:
    """What local._start returns (a _ServerProcess), for a server that is not llama.cpp."""

    def __init__(self, address: str):
        self.url = address
        self.returncode: int | None = None

    def alive(self) -> bool:
        return self.returncode is None

    def stop(self) -> None:
        self.returncode = 0


def _req(model: str, content: str = "hi", node: str = "n") -> CallRequest:
    return CallRequest(node, model, [{"role": "user", "content": content}], {"max_tokens": 8}, retries=0)


def test_a_gguf_path_is_served_through_the_openai_code_path(fake_llama):
    server, gguf = fake_llama

    async def go():
        provider = local.LocalProvider(name="local")
        try:
            return await provider.complete(_req(str(gguf)))
        finally:
            await provider.aclose()

    done = asyncio.run(go())
    assert done.text == "hello" and done.completion_tokens == 1
    [(path, body)] = server.bodies
    assert path == "/v1/chat/completions" and body["max_tokens"] == 8
    assert local.running() == {gguf.resolve(): f"http://127.0.0.1:{server.server_port}/v1"}


def test_a_prompt_too_long_for_the_context_says_so(fake_llama):
    _, gguf = fake_llama

    async def go():
        provider = local.LocalProvider(name="local")
        try:
            await provider.complete(_req(str(gguf), "x" * 5000, node="final"))
        finally:
            await provider.aclose()

    with pytest.raises(ProviderHTTPError) as info:
        asyncio.run(go())
    text = str(info.value)
    assert text.startswith("final: the prompt is too long for local model")
    assert "9000 tokens" in text and "4096" in text and "Nothing was truncated" in text
    assert info.value.status == 400 and info.value.node == "final"


def test_concurrent_first_calls_start_one_server(monkeypatch, tmp_path):
    starts = []

    def slow_start(path):
        starts.append(path)
        port = 9000 + len(starts)
        time.sleep(0.2)             # a load in progress while the other threads arrive
        return _FakeServer(f"http://127.0.0.1:{port}")

    monkeypatch.setattr(local, "_start", slow_start)
    local.shutdown()
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    urls: list[str] = []
    threads = [threading.Thread(target=lambda p=p: urls.append(local.serve(p))) for p in [a] * 6 + [b] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(starts) == [a, b]                  # one start per model, however many callers
    assert len(set(urls)) == 2 and len(urls) == 8
    assert local.serve(a) in urls and len(starts) == 2   # reused, not restarted
    local.shutdown()
    assert local.running() == {}
    local.serve(a)
    assert len(starts) == 3                          # after shutdown, the next use starts it again
    local.shutdown()


def test_unknown_model_name_suggests_a_builtin():
    with pytest.raises(ConfigError, match="unknown local model 'qwen2.5-coder-1.5'; did you mean 'qwen2.5-coder-1.5b'"):
        local.resolve("qwen2.5-coder-1.5")


def test_missing_and_non_gguf_files_are_clear_errors(tmp_path):
    with pytest.raises(LocalModelError, match="no such model file: .*nope.gguf"):
        local.resolve(str(tmp_path / "nope.gguf"))
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(LocalModelError, match="is not a GGUF model file"):
        local.resolve(str(text))
    with pytest.raises(LocalModelError, match="no such model file"):
        local.resolve(str(tmp_path))                  # a directory is not a model


def test_builtin_missing_is_pulled_first_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MOA_MODELS_DIR", str(tmp_path))
    pulled = []
    monkeypatch.setattr(models, "pull", lambda names, progress=None, on_bytes=None: pulled.extend(names))
    path = local.resolve("smollm2-135m")
    assert pulled == ["smollm2-135m"] and path == tmp_path / "smollm2-135m.gguf"
    assert "not downloaded yet: pulling it once" in capsys.readouterr().err


def test_cache_endpoint_follows_the_weights(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"1" * 10)
    first = local.endpoint_for(str(gguf))
    gguf.write_bytes(b"GGUF" + b"2" * 20)             # another file at the same path
    assert local.endpoint_for(str(gguf)) != first
    assert local.endpoint_for("smollm2-135m") == f"local:sha256:{models.BUILTINS['smollm2-135m'].sha256}"


def test_missing_runtime_is_a_config_error(monkeypatch):
    real = local.importlib.util.find_spec
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None if name == "xllamacpp" else real(name))
    with pytest.raises(ConfigError, match=r"pip install 'moa-dsl\[local\]'"):
        local.LocalProvider(name="local")


def test_max_concurrency_is_checked():
    with pytest.raises(ConfigError, match="max_concurrency must be at least 1"):
        local.LocalProvider(name="local", max_concurrency=0)


def test_llama_log_is_quiet_unless_verbose(monkeypatch):
    monkeypatch.delenv("MOA_VERBOSE", raising=False)
    assert not local.verbose()
    monkeypatch.setenv("MOA_VERBOSE", "1")
    assert local.verbose()


def test_an_unreadable_model_file_names_the_path(tmp_path, monkeypatch):
    model = tmp_path / "locked.gguf"
    model.write_bytes(b"GGUF" + bytes(8))

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(local.Path, "open", denied)   # chmod 000 would not stop root
    with pytest.raises(LocalModelError, match=r"cannot read model file .*locked\.gguf: Permission denied"):
        local.check_gguf(model)


def test_server_processes_let_openmp_threads_sleep_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert local._server_env()["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert local._server_env()["OMP_WAIT_POLICY"] == "ACTIVE"


def test_calls_beyond_the_servers_slots_wait_before_their_request_starts(monkeypatch, tmp_path):
    """A sweep sends many calls to one small model: past llama.cpp's N_PARALLEL slots they must queue
    on our side, where the request's timeout (start to last byte) has not started yet."""
    from moa_dsl.testing import FakeLLMServer

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    with FakeLLMServer(default_latency=0.05) as server:
        monkeypatch.setattr(local, "_start", lambda path: _FakeServer(server.url.removesuffix("/v1")))
        local.shutdown()

        async def go():
            providers = [local.LocalProvider(name="local") for _ in range(2)]   # two runs, one server
            try:
                return await asyncio.gather(*(p.complete(_req(str(gguf), f"q{i}"))
                                              for i in range(3 * local.N_PARALLEL) for p in providers))
            finally:
                for p in providers:
                    await p.aclose()

        try:
            done = asyncio.run(go())
        finally:
            local.shutdown()
    assert len(done) == 6 * local.N_PARALLEL
    assert server.max_in_flight == local.N_PARALLEL
