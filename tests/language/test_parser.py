"""Text -> syntax tree: values, spans, strings, and syntax errors in words."""
from __future__ import annotations

import pytest

from moa_dsl.language import syntax as ast
from moa_dsl.config import EnvRef
from moa_dsl.language.parser import dedent_triple, parse, parse_value
from moa_dsl.errors import Span


def _ok(text: str) -> ast.Module:
    module, errors = parse(text, "t.moa")
    assert errors == [] and module is not None
    return module


def _value(text: str) -> ast.Value:
    value, errors = parse_value(text)
    assert errors == []
    return value


def _error(text: str):
    module, errors = parse(text, "t.moa")
    assert module is None or errors
    [d] = errors
    assert d.code == "E101"
    return d


def test_statements_and_spans() -> None:
    m = _ok('model q = together:"Qwen/Q" { price = [1, 2] }\n  node a = propose q\n')
    model, node = m.statements
    assert isinstance(model, ast.ModelDecl) and model.ref.provider.text == "together"
    assert model.ref.model_id == ast.Str("Qwen/Q", Span("t.moa", 1, 20, 1, 28))
    assert node.span == Span("t.moa", 2, 3, 2, 21)
    assert node.name == ast.Name("a", Span("t.moa", 2, 8, 2, 9))
    assert node.model.name.text == "q" and node.inputs == () and node.arrow is None
    assert m.end == Span("t.moa", 2, 21, 2, 21)


def test_layer_members_counts_and_names() -> None:
    [layer] = _ok('layer L = aggregate [q, big = t:"x" * 3, q * 2,] <- A, B.c.2 { seed = 1 }').statements
    first, named, repeated = layer.members
    assert first.name is None and first.count is None and first.model.name.text == "q"
    assert named.name.text == "big" and named.model.is_inline and named.count.value == 3
    assert repeated.count.value == 2
    assert [r.text for r in layer.inputs] == ["A", "B.c.2"]
    assert layer.params.pairs[0].key == "seed"


@pytest.mark.parametrize("text, expected", [
    ("12", 12), ("-3", -3), ("0.7", 0.7), ("1e-3", 0.001), ("true", True), ("false", False),
    ('"a\\nb\\u00e9\\"q\\\\"', 'a\nb\u00e9"q\\'),
])
def test_scalars(text: str, expected: object) -> None:
    v = _value(text)
    assert v.value == expected and type(v.value) is type(expected)


def test_lists_maps_env_names_and_trailing_commas() -> None:
    v = _value('[1, "two", [3,], { a = 1, "X-Key" = env("K"), }, name,]')
    one, two, inner, mapping, name = v.items
    assert (one.value, two.value, inner.items[0].value) == (1, "two", 3)
    assert [p.key for p in mapping.pairs] == ["a", "X-Key"]
    assert mapping.pairs[1].value.name == "K"
    assert isinstance(name, ast.NameValue) and name.name == "name"
    assert _value("[]").items == () and _value("{}").pairs == ()


def test_env_is_not_read_at_parse_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_TEST_SECRET", "s3cret")
    v = _value('env("MOA_TEST_SECRET")')
    assert v == ast.Env("MOA_TEST_SECRET", v.span) and "s3cret" not in repr(v)
    assert EnvRef(v.name).resolve({"MOA_TEST_SECRET": "x"}) == "x"


def test_triple_quoted_string_is_dedented() -> None:
    [p] = _ok('prompt p = """\n    First line.\n      indented\n    last\n    """\n').statements
    assert p.text.value == "First line.\n  indented\nlast\n"
    assert dedent_triple('same line\n  x') == 'same line\n  x'
    assert dedent_triple('\r\n  a\n  b') == 'a\nb'


def test_triple_quoted_string_is_raw_and_may_hold_quotes() -> None:
    [p] = _ok('prompt p = """say "hi" \\n"""').statements
    assert p.text.value == 'say "hi" \\n'


def test_comments_and_keyword_prompt_as_a_key() -> None:
    m = _ok('# head\nnode a = aggregate m <- b # tail\n  { prompt = p } # more\n')
    assert m.statements[0].params.pairs[0].key == "prompt"


def test_propose_with_inputs_is_not_a_syntax_error() -> None:
    [n] = _ok("node a = propose m <- b").statements
    assert n.role.text == "propose" and n.arrow == Span("t.moa", 1, 20, 1, 24)


@pytest.mark.parametrize("text, line, col, message", [
    ("node layer = propose m", 1, 6, "unexpected keyword 'layer': expected a name"),
    ("node a = propose", 1, 17, "unexpected end of input: expected a name"),
    ("layer a = propose", 1, 18, "unexpected end of input: expected '['"),
    ("node a =\n\n", 1, 9, "unexpected end of input: expected 'aggregate', 'propose', 'rank' or 'vote'"),
    ("", None, None, None),
    ("node a = propose m {", 1, 21, "unexpected end of input: expected '}', a name or a string"),
    ("node a = propose_x m", 1, 10, "unexpected name 'propose_x': expected 'aggregate', 'propose', 'rank' "
                                    "or 'vote'"),
    ("node a propose m", 1, 8, "unexpected keyword 'propose': expected '='"),
    ("model m = openai:gpt", 1, 18, "unexpected name 'gpt': expected a string"),
    ("nodes a = x", 1, 1, "unexpected name 'nodes': expected a statement (provider, model, prompt, "
                          "defaults, node, layer, output, include, budget) or end of input"),
    ('prompt p = "abc\n', 1, 12, "unterminated string"),
    ('prompt p = """abc', 1, 12, "unterminated triple-quoted string"),
    ("node a = propose m { x = @ }", 1, 26, "unexpected character '@': expected '[', 'env', "
                                            "'false', 'true', '{', a name, a number or a string"),
    ('prompt p = "a\\qb"', 1, 14, "invalid escape '\\q' in string"),
    ('provider p = openai { api_key "sk-secret" }', 1, 31, "unexpected string: expected '='"),
])
def test_syntax_errors_in_words(text: str, line, col, message) -> None:
    if message is None:
        assert parse(text, "t.moa")[1] == []
        return
    d = _error(text)
    assert (d.span.line, d.span.column, d.message) == (line, col, message)


def test_keyword_hint() -> None:
    assert _error("node env = propose m").hint == "'env' is a reserved keyword and cannot be a name"


def test_deep_nesting_is_a_diagnostic_not_a_crash() -> None:
    d = _error("defaults { x = " + "[" * 5000 + "]" * 5000 + " }")
    assert "deep" in d.message
