"""The embedded default for real: pull the three built-ins, run examples/local.moa on llama.cpp.

Models go to the default models directory (cached between runs on one machine: ~1.7 GB the first
time, a few seconds of size checks after). The response cache is private to each test.
"""
from __future__ import annotations

import asyncio

import pytest

import moa_dsl
from moa_dsl import models
from moa_dsl.errors import ProviderHTTPError
from moa_dsl.providers import local
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
