"""Property: whatever the text, `loads` either returns a Pipeline or raises MoaError, and every
diagnostic points inside the text it names."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moa_dsl
from moa_dsl import MoaError

from conftest import EXAMPLES, FIXTURES

# The examples, and the fixtures that use rank, vote, budget and the operator parameters.
OPERATOR_FIXTURES = [FIXTURES / "valid" / "operators.moa", FIXTURES / "valid" / "w303_unpriced.moa",
                     FIXTURES / "invalid" / "e202_budget_twice.moa"]
SOURCES = {p: p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.moa")) + OPERATOR_FIXTURES}
TOKENS = ["node", "layer", "model", "provider", "prompt", "defaults", "output", "include", "propose",
          "aggregate", "true", "false", "env", "(", ")", "=", ":", ",", ".", "*", "<-", "[", "]", "{", "}",
          '"', '"""', "#", "\n", " ", "\t", "\\", "a", "L", "x1", "0", "-1", "1e9", "0.5", '"s"', "é", "\r",
          "temperature", "min_inputs", "seed", "prompt", "api_key", '"openai"', 'openai:"m"', "\x00",
          "rank", "vote", "budget", "top_k", "quorum", "agree", "window", "extract", "normalize", "usd",
          "tokens", "calls", '"(\\\\d+)"', '"["', '"""\\"""', "1.5", "2"]


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


# ---- the operators' statements: mostly well formed (so the graph checks run), with mistakes mixed in ----

_GOOD = {"top_k": ["1", "2"], "quorum": ["1", "2"], "agree": ["true", "false"], "window": ["2", "3"],
         "extract": ['"(\\\\d+)"', '"""####\\s*(\\S+)"""', '"x"'], "normalize": ["true", "false"],
         "min_inputs": ["1"], "temperature": ["0", "0.5"], "usd": ["0.5", "2"], "tokens": ["1000"], "calls": ["3"]}
_BAD = ["0", "-1", "1.5", "1e999", "99", '"("', '"""\\"""', '"[a-"', "[1, 2]", "critic", 'env("X")', "{}", "true"]
_ROLE_KEYS = {"rank": ["top_k", "quorum", "min_inputs", "temperature"],
              "vote": ["extract", "normalize", "min_inputs"],
              "aggregate": ["quorum", "agree", "window", "extract", "normalize", "min_inputs", "temperature"],
              "propose": ["temperature"], "budget": ["usd", "tokens", "calls"]}
_WRONG_KEYS = ["top_k", "quorum", "agree", "window", "extract", "normalize", "temperature", "prompt", "usd",
               "top_kk", "qourum", "cache", "price"]


@st.composite
def _block(draw, role: str) -> str:
    pairs = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 5)):
            key = draw(st.sampled_from(_ROLE_KEYS[role]))
            value = draw(st.sampled_from(_GOOD[key]))
        else:
            key, value = draw(st.sampled_from(_WRONG_KEYS)), draw(st.sampled_from(_BAD))
        if key not in "".join(pairs) or not draw(st.integers(0, 5)):  # a key twice now and then (E202)
            pairs.append(f"{key} = {value}")
    return "{ " + ", ".join(pairs) + " }" if pairs or draw(st.booleans()) else ""


@st.composite
def operator_program(draw) -> str:
    lines = ['model m = openai:"m" { price = [1, 1] }', "layer p = propose [m * 3]", 'node q = propose openai:"q"']
    names = ["p", "q", "p.m.1"]
    for i in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from(["rank", "vote", "aggregate", "propose"]))
        mistake = draw(st.integers(0, 5)) == 0
        model = "" if (role == "vote") != mistake else draw(st.sampled_from(["m ", 'openai:"x" ']))
        reads = (role != "propose") != mistake
        inputs = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)) if reads else []
        arrow = f"<- {', '.join(inputs)} " if inputs else ""
        if mistake and draw(st.booleans()):
            lines.append(f"layer n{i} = {role} [{model.strip() or 'm'}] {arrow}{draw(_block(role))}")
        else:
            lines.append(f"node n{i} = {role} {model}{arrow}{draw(_block(role))}")
        names.append(f"n{i}")
    for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
        lines.insert(draw(st.integers(0, len(lines))), "budget " + (draw(_block("budget")) or "{}"))
    lines += [f"node final = aggregate m <- p, q, {', '.join(names[3:])}", "output final"]
    return "\n".join(lines) + "\n"


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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operator_program())
def test_operator_programs(text: str) -> None:
    _check(text)
