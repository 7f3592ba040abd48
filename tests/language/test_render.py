"""Compiler-style rendering of diagnostics."""
from __future__ import annotations

import pytest

import moa_dsl
from moa_dsl.errors import Diagnostic, MoaError
from moa_dsl.errors import render_diagnostic, render_diagnostics, summary
from moa_dsl.errors import Span

SRC = {"f.moa": "model q = x:\"y\"\nnode a = propose qwn\n"}


def test_layout_with_caret_and_hint() -> None:
    d = Diagnostic("error", "E201", "unknown model 'qwn'", Span("f.moa", 2, 18, 2, 21), "did you mean 'q'?")
    assert render_diagnostic(d, SRC) == (
        "f.moa:2:18: error[E201]: unknown model 'qwn'\n"
        " 2 | node a = propose qwn\n"
        "   |                  ^~~\n"
        "   = hint: did you mean 'q'?")


def test_warning_zero_width_and_multiline_spans() -> None:
    w = Diagnostic("warning", "W301", "dead", Span("f.moa", 1, 1, 2, 3))
    assert render_diagnostic(w, SRC).splitlines()[0] == "f.moa:1:1: warning[W301]: dead"
    assert render_diagnostic(w, SRC).splitlines()[2] == "   | ^~~~~~~~~~~~~~~"  # to the end of line 1
    z = Diagnostic("error", "E101", "unexpected end of input", Span("f.moa", 2, 21, 2, 21))
    assert render_diagnostic(z, SRC).splitlines()[2] == "   |" + " " * 21 + "^"


def test_tabs_are_kept_so_the_caret_lines_up() -> None:
    d = Diagnostic("error", "E201", "x", Span("t.moa", 1, 3, 1, 4))
    assert render_diagnostic(d, {"t.moa": "\t\tq\r\n"}).splitlines()[1:] == [" 1 | \t\tq", "   | \t\t^"]


def test_without_source_or_span_only_the_message_is_shown() -> None:
    assert render_diagnostic(Diagnostic("error", "E208", "gone", Span("nowhere", 3, 1, 3, 2)), {}) == \
        "nowhere:3:1: error[E208]: gone"
    assert render_diagnostic(Diagnostic("error", "E999", "bare", None, "h"), {}) == "error[E999]: bare\n  = hint: h"


def test_colour_only_when_asked() -> None:
    d = Diagnostic("error", "E201", "m", Span("f.moa", 1, 1, 1, 2))
    assert "\033[" not in render_diagnostics([d], SRC)
    assert "\033[1;31m" in render_diagnostics([d], SRC, color=True)


def test_summary() -> None:
    e = Diagnostic("error", "E201", "m", None)
    w = Diagnostic("warning", "W301", "m", None)
    assert (summary([]), summary([e, e, w]), summary([w])) == ("ok", "2 errors, 1 warning", "1 warning")


def test_moa_error_renders_like_check_and_for_ipython() -> None:
    with pytest.raises(MoaError) as info:
        moa_dsl.loads('node a = propose qwn\n', filename="n.moa")
    text = str(info.value)
    assert text.startswith("n.moa:1:18: error[E201]: unknown model 'qwn'\n 1 | node a = propose qwn")
    assert info.value._render_traceback_() == text.splitlines()
    assert info.value.diagnostics[0].to_json() == {
        "severity": "error", "code": "E201", "message": "unknown model 'qwn'", "file": "n.moa",
        "line": 1, "column": 18, "end_line": 1, "end_column": 21, "hint": None}
