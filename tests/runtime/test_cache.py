"""ResponseCache and cache_key: what makes a key, what is stored, sharing, and degrading safely."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import diskcache
import pytest

from moa_dsl.runtime.cache import CacheWarning, ResponseCache, cache_key

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
PARAMS = {"temperature": 0.7, "max_tokens": 512}
VALUE = {"text": "Rayleigh scattering.", "prompt_tokens": 12, "completion_tokens": 3, "finish_reason": "stop"}


def _key(**kw):
    args = dict(kind="openai", endpoint="https://api.together.xyz/v1", model="m", messages=MESSAGES,
                params=PARAMS, sample=None)
    return cache_key(**{**args, **kw})


def test_key_is_sha256_hex_and_stable():
    key = _key()
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == _key(params=dict(reversed(list(PARAMS.items()))))   # order of params does not matter


@pytest.mark.parametrize("change", [
    {"kind": "anthropic"}, {"endpoint": "https://api.groq.com/openai/v1"}, {"model": "m2"},
    {"messages": [{"role": "user", "content": "Why is the sky blue? "}]},
    {"messages": [{"role": "system", "content": "x"}, *MESSAGES]},
    {"params": {**PARAMS, "temperature": 0.0}}, {"params": {**PARAMS, "seed": 1}},
    {"params": {**PARAMS, "stop": ["\n"]}}, {"params": {**PARAMS, "top_p": 0.5}}, {"sample": 2},
])
def test_everything_that_decides_a_response_changes_the_key(change):
    assert _key(**change) != _key()


def test_knobs_that_never_reach_the_request_do_not_change_the_key():
    assert _key(params={**PARAMS, "timeout": 5, "retries": 0, "cache": True, "seed": None}) == _key()


def test_credentials_in_the_endpoint_are_not_part_of_the_key():
    assert _key(endpoint="https://user:s3cret@api.example.com/v1") == _key(endpoint="https://api.example.com/v1")


def test_round_trip_stores_only_the_known_fields(tmp_path):
    with ResponseCache(tmp_path / "c") as cache:
        assert cache.get("k") is None
        cache.set("k", {**VALUE, "api_key": "sk-leak", "extra": 1})
        assert cache.get("k") == VALUE
        cache.set("k", {**VALUE, "text": "newer"})   # --refresh overwrites
        assert cache.get("k")["text"] == "newer"
    raw = diskcache.Cache(str(tmp_path / "c")).get("k")
    assert isinstance(raw, str) and "sk-leak" not in raw and json.loads(raw)["text"] == "newer"
    with pytest.raises(ValueError):
        ResponseCache(tmp_path / "c").set("k", {"text": None})


def test_persists_across_instances_stats_and_clear(tmp_path):
    with ResponseCache(tmp_path / "c") as cache:
        for i in range(3):
            cache.set(f"k{i}", VALUE)
    with ResponseCache(tmp_path / "c") as cache:
        stats = cache.stats()
        assert stats["entries"] == 3 and stats["size_bytes"] > 0 and stats["enabled"]
        assert stats["directory"] == str(tmp_path / "c")
        assert cache.clear() == 3 and cache.get("k0") is None and cache.stats()["entries"] == 0


def test_disabled_cache_reads_and_writes_nothing(tmp_path):
    cache = ResponseCache(tmp_path / "c", enabled=False)
    cache.set("k", VALUE)
    assert cache.get("k") is None and not cache.enabled and not (tmp_path / "c").exists()
    assert cache.stats()["entries"] == 0 and cache.clear() == 0


def test_a_foreign_entry_is_a_miss_not_a_crash(tmp_path):
    diskcache.Cache(str(tmp_path / "c")).set("k", "not json at all")
    diskcache.Cache(str(tmp_path / "c")).set("j", '{"no": "text"}')
    with ResponseCache(tmp_path / "c") as cache:
        assert cache.get("k") is None and cache.get("j") is None and cache.enabled


def test_a_path_under_a_regular_file_degrades_with_one_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(CacheWarning, match="cannot be used") as caught:
        cache = ResponseCache(blocker / "cache")
        cache.set("k", VALUE)
        assert cache.get("k") is None and not cache.enabled
    assert len(caught) == 1


def test_a_corrupt_database_degrades(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.warns(CacheWarning):
        cache = ResponseCache(directory)
    assert not cache.enabled and cache.get("k") is None


def test_a_failing_write_disables_the_cache_once(tmp_path, monkeypatch):
    cache = ResponseCache(tmp_path / "c")
    cache.set("before", VALUE)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(diskcache.Cache, "set", full)
    with pytest.warns(CacheWarning, match="disk is full") as caught:
        cache.set("a", VALUE)
        cache.set("b", VALUE)
        assert cache.get("before") is None   # turned off for the rest of the run
    assert len(caught) == 1 and not cache.enabled


def test_a_failing_read_degrades(tmp_path, monkeypatch):
    cache = ResponseCache(tmp_path / "c")

    def locked(*args, **kwargs):
        raise diskcache.Timeout("database is locked")

    monkeypatch.setattr(diskcache.Cache, "get", locked)
    with pytest.warns(CacheWarning):
        assert cache.get("k") is None


_WRITER = textwrap.dedent("""
    import sys
    from moa_dsl.runtime.cache import ResponseCache
    directory, tag = sys.argv[1], sys.argv[2]
    cache = ResponseCache(directory)
    for i in range(60):
        cache.set(f"{tag}-{i}", {"text": f"{tag} {i}"})
        cache.set("shared", {"text": tag})
        assert cache.get(f"{tag}-{i}")["text"] == f"{tag} {i}"
    cache.close()
""")


def test_two_processes_share_one_directory(tmp_path):
    directory = str(tmp_path / "shared")
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, directory, tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with ResponseCache(directory) as cache:
        assert cache.stats()["entries"] == 121
        assert cache.get("a-59")["text"] == "a 59" and cache.get("b-0")["text"] == "b 0"
        assert cache.get("shared")["text"] in ("a", "b")


def test_call_key_uses_a_providers_per_model_identity():
    """The embedded runtime names its weights in the key, so a GGUF replaced at the same path misses."""
    from types import SimpleNamespace

    from moa_dsl.runtime.cache import call_key

    msgs = [{"role": "user", "content": "hi"}]
    plain = SimpleNamespace(kind="local", endpoint="local")
    weights = {"m": "local:sha256:aaa"}
    per_model = SimpleNamespace(kind="local", endpoint="local", endpoint_for=lambda model: weights[model])
    first = call_key(per_model, "m", msgs, {}, None)
    assert first != call_key(plain, "m", msgs, {}, None)
    weights["m"] = "local:sha256:bbb"
    assert call_key(per_model, "m", msgs, {}, None) != first
    assert call_key(plain, "m", msgs, {}, None) == cache_key("local", "local", "m", msgs, {}, None)
