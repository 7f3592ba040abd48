"""ProviderPool: env(...) resolution at run start, one ConfigError for every missing key, lazy build."""
from __future__ import annotations

import asyncio
import sys
import types

import httpx
import pytest

from moa_dsl.config import EnvRef, ProviderConfig, builtin_providers
from moa_dsl.errors import ConfigError
from moa_dsl.providers import AnthropicProvider, CallRequest, OpenAIProvider, ProviderPool


def test_missing_keys_are_reported_together_before_any_call():
    pool = ProviderPool(builtin_providers(), environ={"GROQ_API_KEY": "g"})
    with pytest.raises(ConfigError) as info:
        pool.check_keys(["together", "groq", "anthropic", "ollama", "local", "together"])
    message = str(info.value)
    assert "TOGETHER_API_KEY" in message and "ANTHROPIC_API_KEY" in message
    assert "GROQ" not in message and message.count("TOGETHER_API_KEY") == 1


def test_keyless_providers_and_present_keys_pass():
    pool = ProviderPool(builtin_providers(), environ={"OPENAI_API_KEY": "k"})
    pool.check_keys(["openai", "ollama", "local"])


def test_an_empty_variable_counts_as_missing():
    pool = ProviderPool(builtin_providers(), environ={"OPENAI_API_KEY": ""})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        pool.check_keys(["openai"])


def test_unknown_provider_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        ProviderPool(builtin_providers(), environ={}).get("nope")


def test_openai_base_url_from_environment_or_fallback():
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}
    assert ProviderPool(builtin_providers(), environ=env).get("openai").endpoint == "http://127.0.0.1:8000/v1"
    pool = ProviderPool(builtin_providers(), environ={"OPENAI_API_KEY": "k"})
    provider = pool.get("openai")
    assert provider.endpoint == "https://api.openai.com/v1" and pool.get("openai") is provider
    asyncio.run(pool.aclose())


def test_declared_provider_resolves_env_refs_into_the_request():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    configs = {"corp": ProviderConfig("corp", "openai", EnvRef("CORP_URL"), EnvRef("CORP_KEY"),
                                      headers={"X-Team": EnvRef("CORP_TEAM"), "X-App": "moa"}, max_concurrency=2)}
    env = {"CORP_URL": "https://llm.corp.test/v1", "CORP_KEY": "ck-123456", "CORP_TEAM": "research"}
    pool = ProviderPool(configs, environ=env, transport=httpx.MockTransport(handler))
    provider = pool.get("corp")
    assert isinstance(provider, OpenAIProvider) and provider.max_concurrency == 2

    async def main():
        try:
            return await provider.complete(CallRequest("n", "m", [{"role": "user", "content": "q"}], {}))
        finally:
            await pool.aclose()

    assert asyncio.run(main()).text == "ok"
    (request,) = seen
    assert str(request.url) == "https://llm.corp.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer ck-123456"
    assert (request.headers["x-team"], request.headers["x-app"]) == ("research", "moa")


def test_missing_base_url_and_header_variables_are_named():
    configs = {"corp": ProviderConfig("corp", "openai", EnvRef("CORP_URL"), None, headers={"X-T": EnvRef("CORP_T")})}
    with pytest.raises(ConfigError, match="CORP_T.*CORP_URL|CORP_URL.*CORP_T"):
        ProviderPool(configs, environ={}).check_keys(["corp"])
    with pytest.raises(ConfigError, match="CORP_"):
        ProviderPool(configs, environ={}).get("corp")


def test_anthropic_kind_builds_the_anthropic_provider():
    pool = ProviderPool(builtin_providers(), environ={"ANTHROPIC_API_KEY": "a"})
    assert isinstance(pool.get("anthropic"), AnthropicProvider)
    asyncio.run(pool.aclose())


def test_local_kind_is_built_lazily_from_the_local_module(monkeypatch):
    built = []

    class FakeLocal:
        def __init__(self, *, name, max_concurrency, verbose):
            built.append((name, max_concurrency, verbose))

        async def aclose(self):
            built.append("closed")

    module = types.ModuleType("moa_dsl.providers.local.llamacpp")
    module.LocalProvider = FakeLocal
    monkeypatch.setitem(sys.modules, "moa_dsl.providers.local.llamacpp", module)
    configs = {"local": ProviderConfig("local", "local", max_concurrency=2)}
    pool = ProviderPool(configs, environ={}, verbose=True)
    pool.check_keys(["local"])
    assert built == []   # nothing started until a node needs it
    assert isinstance(pool.get("local"), FakeLocal) and built == [("local", 2, True)]  # --verbose reaches it
    asyncio.run(pool.aclose())
    assert built[-1] == "closed"


def _corp(env: dict[str, str], seen: list) -> ProviderPool:
    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    configs = {"corp": ProviderConfig("corp", "openai", "https://llm.corp.test/v1", EnvRef("CORP_KEY"),
                                      headers={"X-Token": EnvRef("CORP_TOKEN")})}
    return ProviderPool(configs, environ=env, transport=httpx.MockTransport(handler))


def test_secrets_from_a_crlf_env_file_are_stripped():
    seen: list = []
    pool = _corp({"CORP_KEY": " ck-123456\r\n", "CORP_TOKEN": "tok-abcdef\r"}, seen)

    async def main():
        try:
            return await pool.get("corp").complete(CallRequest("n", "m", [{"role": "user", "content": "q"}], {}))
        finally:
            await pool.aclose()

    assert asyncio.run(main()).text == "ok"
    (request,) = seen
    assert request.headers["authorization"] == "Bearer ck-123456" and request.headers["x-token"] == "tok-abcdef"


@pytest.mark.parametrize("variable", ["CORP_KEY", "CORP_TOKEN"])
def test_a_secret_with_a_control_character_inside_names_the_variable_not_the_value(variable):
    env = {"CORP_KEY": "ck-123456", "CORP_TOKEN": "tok-abcdef", variable: "sk-IN\rSIDE-SECRET"}
    with pytest.raises(ConfigError) as info:
        _corp(env, []).get("corp")
    assert variable in str(info.value) and "SIDE-SECRET" not in str(info.value) and "sk-IN" not in str(info.value)
