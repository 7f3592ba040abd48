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

Third-party exceptions (httpx, lark, xllamacpp, diskcache) are translated into this tree at one
boundary each, `raise ... from exc`. No message ever contains a credential.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .syntax import Span


@dataclass(frozen=True)
class Diagnostic:
    severity: str            # "error" | "warning"
    code: str                # "E101" ... "W302"
    message: str
    span: Span | None
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_json(self) -> dict[str, Any]:
        s = self.span
        return {
            "severity": self.severity, "code": self.code, "message": self.message,
            "file": s.file if s else None, "line": s.line if s else None,
            "column": s.column if s else None, "end_line": s.end_line if s else None,
            "end_column": s.end_column if s else None, "hint": self.hint,
        }


class MoaError(Exception):
    """Base of the tree. With diagnostics, it renders them like `moa check` does."""

    def __init__(self, message: str | None = None, diagnostics: Iterable[Diagnostic] = (),
                 sources: dict[str, str] | None = None):
        self.diagnostics = list(diagnostics)
        self.sources = dict(sources or {})
        super().__init__(message if message is not None else self.render())

    def render(self, color: bool = False) -> str:
        if not self.diagnostics:
            return str(self.args[0]) if self.args else ""
        from .render import render_diagnostics  # the renderer lives with the compiler
        return render_diagnostics(self.diagnostics, self.sources, color=color)

    def _render_traceback_(self) -> list[str]:
        """IPython calls this instead of printing a traceback."""
        return self.render().splitlines()


class ConfigError(MoaError):
    pass


class ProviderError(MoaError):
    def __init__(self, message: str, *, node: str | None = None, provider: str | None = None,
                 status: int | None = None, retryable: bool = False):
        self.node, self.provider, self.status, self.retryable = node, provider, status, retryable
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
