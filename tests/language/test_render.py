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


# ---- display cells: wide characters, combining marks, long lines -------------------------------

def test_the_caret_counts_wide_characters_as_two_cells() -> None:
    src = {"w.moa": 'prompt p = "日本語" qwn\n'}
    d = Diagnostic("error", "E201", "x", Span("w.moa", 1, 18, 1, 21))
    line, caret = render_diagnostic(d, src).splitlines()[1:3]
    assert line == ' 1 | prompt p = "日本語" qwn'
    assert caret == "   | " + " " * 20 + "^~~"


def test_a_caret_under_a_wide_character_covers_both_cells() -> None:
    d = Diagnostic("error", "E101", "x", Span("w.moa", 1, 3, 1, 4))
    assert render_diagnostic(d, {"w.moa": "ab漢c"}).splitlines()[2] == "   |   ^~"


def test_combining_marks_take_no_cell_and_tabs_stay_tabs() -> None:
    text = "\te\u0301e\u0301 = x"   # two é written as e + COMBINING ACUTE
    d = Diagnostic("error", "E201", "x", Span("c.moa", 1, 9, 1, 10))
    assert render_diagnostic(d, {"c.moa": text}).splitlines()[2] == "   | \t" + " " * 5 + "^"


def test_a_huge_line_is_cut_around_the_caret() -> None:
    text = "x" * 500_000 + " qwn " + "y" * 500_000
    d = Diagnostic("error", "E201", "unknown model 'qwn'", Span("h.moa", 1, 500_002, 1, 500_005))
    out = render_diagnostic(d, {"h.moa": text})
    _, line, caret = out.splitlines()
    assert len(out) < 400
    shown, marks = line[len(" 1 | "):], caret[len("   | "):]
    assert shown.startswith("…") and shown.endswith("…") and len(shown) <= 122
    assert shown[marks.index("^"):marks.index("^") + 3] == "qwn" and marks.strip() == "^~~"


def test_a_long_line_cut_at_one_end_only() -> None:
    text = "node a = propose qwn { system = \"" + "z" * 300 + "\" }"
    d = Diagnostic("error", "E201", "x", Span("l.moa", 1, 18, 1, 21))
    _, line, caret = render_diagnostic(d, {"l.moa": text}).splitlines()
    shown = line[len(" 1 | "):]
    assert shown.startswith("node a = propose qwn") and shown.endswith("…") and len(shown) <= 121
    assert caret == "   | " + " " * 17 + "^~~"


def test_a_span_running_past_the_cut_is_clipped() -> None:
    text = "a = " + "w" * 1000
    d = Diagnostic("error", "E206", "x", Span("s.moa", 1, 5, 2, 1))
    _, line, caret = render_diagnostic(d, {"s.moa": text}).splitlines()
    assert len(line) < 140 and caret.endswith("~") and len(caret) <= len(line)
