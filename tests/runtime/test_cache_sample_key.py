"""The cache key's sample index: an unrepeated member is the first of one (so `moa sweep`'s
`p.n=1` and `p.n=3` share their first sample), and the key's version says the recipe changed."""
from __future__ import annotations

from moa_dsl.runtime.cache import KEY_VERSION, cache_key

MESSAGES = [{"role": "user", "content": "hi"}]


def _key(sample):
    return cache_key("openai", "http://127.0.0.1:9/v1", "m", MESSAGES, {"temperature": 0.7}, sample)


def test_an_unrepeated_member_is_sample_one():
    assert _key(None) == _key(1)
    assert _key(1) != _key(2) != _key(3)


def test_the_key_version_was_bumped_for_the_new_recipe():
    assert KEY_VERSION == 2
