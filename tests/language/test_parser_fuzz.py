"""Property: whatever the text, `loads` either returns a Pipeline or raises MoaError, and every
diagnostic points inside the text it names."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moa_dsl
from moa_dsl import MoaError

from conftest import EXAMPLES

SOURCES = {p: p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.moa"))}
TOKENS = ["node", "layer", "model", "provider", "prompt", "defaults", "output", "include", "propose",
          "aggregate", "true", "false", "env", "(", ")", "=", ":", ",", ".", "*", "<-", "[", "]", "{", "}",
          '"', '"""', "#", "\n", " ", "\t", "\\", "a", "L", "x1", "0", "-1", "1e9", "0.5", '"s"', "é", "\r",
          "temperature", "min_inputs", "seed", "prompt", "api_key", '"openai"', 'openai:"m"', "\x00"]


def _check(text: str, filename: str = "<fuzz>") -> None:
    try:
        pipe = moa_dsl.loads(text, filename=filename)
    except MoaError as exc:
        diags, sources = exc.diagnostics, exc.sources
        assert diags, "a MoaError from loads always carries diagnostics"
    else:
        diags, sources = list(pipe.warnings), pipe.sources
    for d in diags:
        assert d.span is not None
        src = sources[d.span.file]
        lines = src.split("\n")
        assert 1 <= d.span.line <= d.span.end_line <= len(lines), d
        assert 1 <= d.span.column <= len(lines[d.span.line - 1]) + 1, d
        assert 1 <= d.span.end_column <= len(lines[d.span.end_line - 1]) + 1, d
        assert (d.span.line, d.span.column) <= (d.span.end_line, d.span.end_column), d
        d.to_json()
    if isinstance(diags, list) and diags:
        MoaError(diagnostics=diags, sources=sources).render()


@st.composite
def mutated_example(draw) -> tuple[str, str]:
    path = draw(st.sampled_from(sorted(SOURCES)))
    text = SOURCES[path]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 40)))
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "replace"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + draw(st.text(max_size=5)) + text[j:]
    return text, str(path)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    _check(text)


@FAST
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join))
def test_token_soup(text: str) -> None:
    _check(text)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_example())
def test_mutated_examples(case: tuple[str, str]) -> None:
    text, filename = case
    _check(text, filename)  # the real file name, so the examples' includes resolve
