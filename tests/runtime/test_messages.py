"""Request building, exactly as docs/language.md ("The messages a call sends") fixes it."""
from __future__ import annotations

import pytest

from moa_dsl.config import REFERENCE_PROMPT
from moa_dsl.errors import ConfigError
from moa_dsl.config import request_params
from moa_dsl.runtime.messages import build_messages, normalize_query, references_block

USER = [{"role": "user", "content": "Why is the sky blue?"}]


def test_reference_prompt_is_the_papers_paragraph_then_blank_line():
    assert REFERENCE_PROMPT.startswith("You have been provided with a set of responses")
    assert REFERENCE_PROMPT.endswith("reliability.\n\nResponses from models:")


def test_string_query_is_one_user_message():
    assert normalize_query("hi") == [{"role": "user", "content": "hi"}]


def test_conversation_is_copied_and_validated():
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    out = normalize_query(conv)
    assert out == conv and out[0] is not conv[0]


@pytest.mark.parametrize("bad, match", [
    ("", "empty"),
    ([], "non-empty list"),
    (42, "not int"),
    ([{"role": "user"}], "exactly 'role' and 'content'"),
    ([{"role": "robot", "content": "x"}], "role must be one of"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
     "only come first"),
])
def test_bad_queries_get_clear_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        normalize_query(bad)


def test_proposer_sends_the_conversation():
    assert build_messages(USER) == USER


def test_proposer_with_system():
    assert build_messages(USER, system="Be brief.") == [{"role": "system", "content": "Be brief."}, *USER]


def test_aggregator_prepends_block_with_stripped_numbered_refs():
    msgs = build_messages(USER, refs=["  first\n", "second "])
    assert msgs == [{"role": "system", "content": REFERENCE_PROMPT + "\n1. first\n2. second"}, *USER]


def test_aggregator_appends_to_system_param():
    msgs = build_messages(USER, system="Be brief.", refs=["x"], prompt="P:")
    assert msgs[0] == {"role": "system", "content": "Be brief.\n\nP:\n1. x"}
    assert msgs[1:] == USER


def test_aggregator_appends_to_conversation_system_without_mutating_it():
    conv = [{"role": "system", "content": "S"}, *USER]
    msgs = build_messages(conv, refs=["x", "y"])
    assert msgs[0]["content"] == "S\n\n" + REFERENCE_PROMPT + "\n1. x\n2. y"
    assert conv[0]["content"] == "S"


def test_references_block_with_no_refs_is_the_prompt():
    assert references_block([], "P") == "P"


def test_request_params_only_the_set_ones_in_order():
    params = {"temperature": 0.7, "max_tokens": 512, "cache": True, "timeout": 5, "system": "s",
              "seed": 3, "stop": ["\n"], "prompt": "P", "min_inputs": 1}
    assert request_params(params) == {"temperature": 0.7, "max_tokens": 512, "seed": 3, "stop": ["\n"]}
    assert "top_p" in request_params({"top_p": 0.9})


@pytest.mark.parametrize("query", ["caf\udce9", [{"role": "user", "content": "caf\udce9"}]])
def test_a_query_that_is_not_utf8_is_a_config_error(query):
    """Lone surrogates (argv or stdin bytes that were not UTF-8) cannot be sent or hashed."""
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        normalize_query(query)
