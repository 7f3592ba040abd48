"""Every error a user is meant to read, as one tree; nothing below it should show a traceback.

    MoaError                  .diagnostics (maybe empty); str() is the rendered message
    ├── ConfigError           a run cannot start: missing API key, bad --set, unknown local model
    ├── ProviderError         one call failed for good (after its retries): .node, .provider, .status
    │   ├── ProviderHTTPError       a non-retryable HTTP status, or retries exhausted on one
    │   ├── ProviderConnectionError connection refused/reset, DNS, protocol error
    │   ├── ProviderTimeout         the request timed out
    │   └── ProviderResponseError   a body that is not JSON or lacks the expected fields, a broken stream
    ├── LocalModelError       pulling, verifying or serving an embedded model
    └── RunFailed             the output node failed or was skipped (.result holds the RunResult)

`Span` (a place in a source file) and `Diagnostic` live here too, with their rendering: every
layer reports problems in these terms, and this module imports nothing else from the package.

Third-party exceptions (httpx, lark, xllamacpp, diskcache) are translated into this tree at one
boundary each, `raise ... from exc`. No message ever contains a credential.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

__all__ = [
    "ConfigError",
    "Diagnostic",
    "LocalModelError",
    "mask_secrets",
    "mask_value",
    "MAX_SHOWN_CELLS",
    "MoaError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderResponseError",
    "ProviderTimeout",
    "render_diagnostic",
    "render_diagnostics",
    "RunFailed",
    "Severity",
    "Span",
    "summary",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Span:
    """1-based line and column; end_column points one past the last character."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def end(self) -> "Span":
        """A zero-width span just after this one (where a missing token would go)."""
        return Span(self.file, self.end_line, self.end_column, self.end_line, self.end_column)

    def to(self, other: "Span") -> "Span":
        """From the start of this span to the end of `other`."""
        return Span(self.file, self.line, self.column, other.end_line, other.end_column)


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    code: str  # "E101" ... "W302"
    message: str
    span: Span | None
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_json(self) -> dict[str, Any]:
        s = self.span
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": s.file if s else None,
            "line": s.line if s else None,
            "column": s.column if s else None,
            "end_line": s.end_line if s else None,
            "end_column": s.end_column if s else None,
            "hint": self.hint,
        }


class MoaError(Exception):
    """Base of the tree. With diagnostics, it renders them like `moa check` does."""

    def __init__(
        self, message: str | None = None, diagnostics: Iterable[Diagnostic] = (), sources: dict[str, str] | None = None
    ):
        self.diagnostics = list(diagnostics)
        self.sources = dict(sources or {})
        super().__init__(message if message is not None else self.render())

    def render(self, color: bool = False) -> str:
        if not self.diagnostics:
            return str(self.args[0]) if self.args else ""
        return render_diagnostics(self.diagnostics, self.sources, color=color)

    def _render_traceback_(self) -> list[str]:
        """IPython calls this instead of printing a traceback."""
        return self.render().splitlines()


class ConfigError(MoaError):
    pass


class ProviderError(MoaError):
    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        provider: str | None = None,
        status: int | None = None,
        retryable: bool = False,
    ):
        self.node, self.provider, self.status, self.retryable = node, provider, status, retryable
        self.attempts = 1  # requests sent before it gave up; the provider sets it
        super().__init__(message)


class ProviderHTTPError(ProviderError):
    pass


class ProviderConnectionError(ProviderError):
    pass


class ProviderTimeout(ProviderError):
    pass


class ProviderResponseError(ProviderError):
    pass


class LocalModelError(MoaError):
    pass


class RunFailed(MoaError):
    def __init__(self, message: str, result: Any = None):
        self.result = result
        super().__init__(message)


# ---- secrets: starred before any line of source is shown ------------------------------------------
#
# One compiled pattern, one pass, linear in the text (possessive quantifiers: no backtracking into a
# long name or string). It needs no parse, so it works on text with syntax errors too:
#   - the value after a secret-looking key and `=` or `:` (`api_key = "..."`, `apikey: '...'`,
#     `"Authorization" = "..."`, `token = [...]`, `password = bare`), wherever it stands, comments too;
#   - anything shaped like a key (`sk-...`, `sk-ant-...`, `gsk_...`, `Bearer xxx`, ...), anywhere.
# Starring keeps every character's place (newlines stay), so spans and columns still fit.

_SECRET_KEY = re.compile(
    r"(?:^|[_\-\s])(?:api[_-]?key|apikey|key|token|secret|password|passwd|passphrase"
    r"|authorization|auth|credentials?|bearer)(?:$|[_\-\s])",
    re.I,
)
_SECRETS = re.compile(
    r"""
    (?<![\w-])(?P<key>[A-Za-z_][\w-]*+|"[^"\n]{1,100}+"|'[^'\n]{1,100}+')
    [ \t]*+[=:][ \t]*+
    (?=(?P<value>                                        # looked at, not consumed: a value that is
        \"\"\"[^"]*+(?:"(?!"")[^"]*+)*+(?:\"\"\"|\Z)       # not a secret is scanned like the rest
      | "[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"?                 # a string, may be unterminated
      | '[^'\n]*+'?                                     # single quotes (a syntax error, still a key)
      | \[[^\[\]\n]*+\]?                                 # a list on one line
      | (?!env[ \t]*\(|(?:[-+]?[0-9][0-9.]*+(?:[eE][-+]?[0-9]++)?+|true|false)(?![^\s,;{}\[\]()\#"'=:]))
        [^\s,;{}\[\]()\#"'=:]++=*+                       # a bare word, not a number (`max_token = 10`)
    ))
  | (?<![\w-])(?:sk-|gsk_|ghp_|gho_|ghs_|github_pat_|xox[abposr]-|hf_|AKIA|AIza)
               (?P<rest>[A-Za-z0-9_\-]{8,}+)
  | \b[Bb]earer[ \t]++(?P<token>[A-Za-z0-9._~+/=\-]{8,}+)
""",
    re.X,
)
_NOT_NEWLINE = re.compile(r"[^\n]")


def _stars(text: str) -> str:
    return _NOT_NEWLINE.sub("*", text)


def _secret_range(m: "re.Match[str]") -> tuple[int, int] | None:
    """The part of a match to star, if any: inside the quotes or brackets of a value."""
    if m.group("value") is not None:
        if not _SECRET_KEY.search(m.group("key").strip("\"'")):
            return None
        value, a = m.group("value"), m.start("value")
        q = 3 if value.startswith('"""') else 1 if value[:1] in "\"'[" else 0
        closing = {'"': '"', "'": "'", "[": "]"}.get(value[:1], "")
        close = q if q and len(value) >= 2 * q and value.endswith(closing * q) else 0
        return a + q, a + len(value) - close
    group = "rest" if m.group("rest") is not None else "token"
    return m.start(group), m.end(group)


def mask_secrets(text: str) -> str:
    """`text` with every secret-looking value starred, same length, same lines."""
    pieces: list[str] = []
    done = 0  # text[:done] is in pieces
    for m in _SECRETS.finditer(text):
        span = _secret_range(m)
        if span is None or span[1] <= done:
            continue
        a, b = max(span[0], done), span[1]
        pieces += [text[done:a], _stars(text[a:b])]
        done = b
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def mask_value(value: str) -> str:
    """A value that may be a secret, for a message: at most its first 3 characters, then `…`."""
    return (value[:3] if len(value) >= 12 else "") + "…"


# ---- rendering, as a compiler prints it ----------------------------------------------------------
#
#     examples/bad.moa:3:18: error[E201]: unknown model 'qwn'
#       3 | node a = propose qwn
#         |                  ^~~
#         = hint: did you mean 'qwen'?

_COLORS = {"error": "\033[1;31m", "warning": "\033[1;33m", "hint": "\033[1;36m", "bold": "\033[1m", "dim": "\033[2m"}
_RESET = "\033[0m"


def _paint(text: str, style: str, color: bool) -> str:
    return f"{_COLORS[style]}{text}{_RESET}" if color else text


MAX_SHOWN_CELLS = 120  # of a source line, around the caret; `…` marks a cut end
_TAB_CELLS = 4  # a guess, only for deciding where to cut: tabs are printed as tabs


def _cells(ch: str) -> int:
    """Terminal columns a character takes: wide (W/F) 2, combining marks 0, others 1."""
    if ch.isascii():
        return _TAB_CELLS if ch == "\t" else 1
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _window(text: str, start: int, end: int) -> tuple[str, int, int]:
    """At most about MAX_SHOWN_CELLS of `text` around [start, end): (shown, start, end) in it.
    Only the characters near the caret are looked at, so a 1 MB line costs nothing."""
    if len(text) * 2 <= MAX_SHOWN_CELLS:  # fits whatever the characters
        return text, start, end
    budget = MAX_SHOWN_CELLS - 2  # room for the two `…`
    lo, used = start, 0
    while lo > 0 and used + _cells(text[lo - 1]) <= budget // 3:  # a third of the room before the caret
        lo -= 1
        used += _cells(text[lo])
    hi = start
    while hi < len(text) and used + _cells(text[hi]) <= budget:
        used += _cells(text[hi])
        hi += 1
    while lo > 0 and used + _cells(text[lo - 1]) <= budget:  # the line ended early: show more before
        lo -= 1
        used += _cells(text[lo])
    if lo == 0 and hi == len(text):
        return text, start, end
    left, right = ("…" if lo > 0 else ""), ("…" if hi < len(text) else "")
    shift = len(left) - lo
    return left + text[lo:hi] + right, start + shift, min(end, hi) + shift


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
        end = max(start, min(end, len(text)))
        text, start, end = _window(mask_secrets(text), start, end)  # masked again: whatever the caller gave
        width = max(1, sum(_cells(ch) for ch in text[start:end]))
        # Keep tabs in the prefix so the caret lines up however the terminal expands them; a wide
        # character takes two cells, a combining mark none.
        prefix = "".join(ch if ch == "\t" else " " * _cells(ch) for ch in text[:start])
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
