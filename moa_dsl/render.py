"""Diagnostics as a compiler prints them:

    examples/bad.moa:3:18: error[E201]: unknown model 'qwn'
      3 | node a = propose qwn
        |                  ^~~
        = hint: did you mean 'qwen'?
"""
from __future__ import annotations

from typing import Iterable, Mapping

from .errors import Diagnostic

_COLORS = {"error": "\033[1;31m", "warning": "\033[1;33m", "hint": "\033[1;36m", "bold": "\033[1m",
           "dim": "\033[2m"}
_RESET = "\033[0m"


def _paint(text: str, style: str, color: bool) -> str:
    return f"{_COLORS[style]}{text}{_RESET}" if color else text


def render_diagnostic(d: Diagnostic, sources: Mapping[str, str], color: bool = False) -> str:
    s = d.span
    where = f"{s.file}:{s.line}:{s.column}: " if s else ""
    head = f"{_paint(where, 'bold', color)}{_paint(f'{d.severity}[{d.code}]', d.severity, color)}: {d.message}"
    out = [head]
    lines = _lines(sources, s.file) if s else None
    if s and lines is not None and 1 <= s.line <= len(lines):
        text = lines[s.line - 1]
        gutter = str(s.line)
        pad = " " * len(gutter)
        start = max(0, min(s.column - 1, len(text)))
        end = s.end_column - 1 if s.end_line == s.line else len(text)
        width = max(1, end - start)
        # Keep tabs in the prefix so the caret lines up however the terminal expands them.
        prefix = "".join(ch if ch == "\t" else " " for ch in text[:start])
        out.append(f" {_paint(gutter, 'dim', color)} | {text}")
        out.append(f" {pad} | {prefix}{_paint('^' + '~' * (width - 1), d.severity, color)}")
    if d.hint:
        out.append(f" {' ' * len(str(s.line)) if s else ''} = {_paint('hint', 'hint', color)}: {d.hint}")
    return "\n".join(out)


def _lines(sources: Mapping[str, str], file: str) -> list[str] | None:
    text = sources.get(file)
    return None if text is None else [line.rstrip("\r") for line in text.split("\n")]


def render_diagnostics(diags: Iterable[Diagnostic], sources: Mapping[str, str], color: bool = False) -> str:
    return "\n".join(render_diagnostic(d, sources, color) for d in diags)


def summary(diags: Iterable[Diagnostic]) -> str:
    diags = list(diags)
    errors = sum(d.is_error for d in diags)
    warnings = len(diags) - errors
    parts = [f"{errors} error{'s' if errors != 1 else ''}"] if errors else []
    parts += [f"{warnings} warning{'s' if warnings != 1 else ''}"] if warnings else []
    return ", ".join(parts) if parts else "ok"
