"""Shared test fixtures. Feature-specific helpers live in their own modules (tests/run_helpers.py, ...)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from moa_dsl.testing import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DATASETS = ROOT / "moa_dsl" / "evaluation" / "datasets"   # the shipped alpaca_eval.jsonl, mt_bench.jsonl

# The one fake API key the loopback servers require; tests check it never leaks into output.
KEY = "sk-test-0123456789abcdef"


def pytest_collection_modifyitems(config, items):
    """`local_models` implies `slow`: `-m "not slow"` is the quick loop."""
    for item in items:
        if item.get_closest_marker("local_models") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def sigint_default() -> None:
    """`preexec_fn` for a child that a test will Ctrl-C: SIGINT back to its default before exec.

    A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored,
    and so would every child; a Python started with SIGINT ignored never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def _sigint_is_handled():
    """The same for this process: `_thread.interrupt_main()` does nothing while SIGINT is ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session", autouse=True)
def test_models_dir():
    """The embedded models the tests pull go to $MOA_TEST_MODELS_DIR (default .pytest-models/ in the
    repository, git-ignored, kept between runs), never the user's ~/.cache/moa-dsl/models. Set in
    os.environ so subprocesses (CLI runs, notebook kernels, llama.cpp servers) inherit it; a test that
    needs another directory still monkeypatches MOA_MODELS_DIR."""
    path = Path(os.environ.get("MOA_TEST_MODELS_DIR") or ROOT / ".pytest-models").expanduser()
    before = os.environ.get("MOA_MODELS_DIR")
    os.environ["MOA_MODELS_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("MOA_MODELS_DIR", None)
    else:
        os.environ["MOA_MODELS_DIR"] = before


@pytest.fixture
def cache_dir(tmp_path):
    """A private response cache per test, so tests never see each other's calls."""
    return tmp_path / "cache"


@pytest.fixture
def make_server():
    """`make_server(**options)`: a FakeLLMServer with the test's own answers, latency or key, started
    now and closed after the test (however it ends)."""
    started: list[FakeLLMServer] = []

    def make(**options) -> FakeLLMServer:
        started.append(FakeLLMServer(**options).start())
        return started[-1]
    yield make
    for s in started:
        s.close()


@pytest.fixture
def server(make_server):
    """A FakeLLMServer on 127.0.0.1 that requires KEY, started for the test and closed after it."""
    return make_server(api_key=KEY)


@pytest.fixture(params=["fast", "httpx"])
def provider_path(request, monkeypatch):
    """Run a test once on each of the providers' two ways to a server (the loopback tests of limits,
    retries, errors, pooling and proxies in tests/providers use it; both must behave the same).

    "fast": the providers' own transport; calls that are not streamed go to aiohttp as bytes and plain
    answers are read without httpx's objects (HTTPProvider._fast). "httpx": every call through
    `httpx.Request` and `httpx.Response` over the same AiohttpTransport, as an injected transport always is.
    """
    if request.param == "httpx":
        from moa_dsl.providers.http import HTTPProvider

        monkeypatch.setattr(HTTPProvider, "fast_path", False)
    return request.param
