"""Files in, a validated `Topology` out: parse, splice includes, build, check, raise once.

    load(path)                       a file; its includes are relative to it
    loads(text, filename="<string>") text; includes are relative to the current directory
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
from pathlib import Path
from typing import Iterator

from . import graph as graphs
from . import syntax as ast
from . import validate
from ..errors import ConfigError, Diagnostic, MoaError
from .parser import parse
from .topology import Topology

__all__ = ["load", "loads"]
from .syntax import Span


def load(path: str | os.PathLike) -> Topology:
    """Parse and validate a file. A missing or unreadable file is a ConfigError (exit 2 in the CLI)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {os.fspath(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
    return _compile(text, os.fspath(path), p.resolve(), name=p.stem)


def loads(text: str, filename: str = "<string>") -> Topology:
    """Parse and validate text. Includes resolve against `filename`'s directory, else the cwd."""
    real = None if filename.startswith("<") else Path(filename).resolve()
    return _compile(text, filename, real, name=None)


# ---- includes ------------------------------------------------------------------------------

class _Sources:
    """Every file read, by display name; includes spliced in place, each file once."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.done: set[Path] = set()
        self.diags: list[Diagnostic] = []

    def expand(self, module: ast.Module, real: Path | None, base: Path,
               stack: tuple[tuple[Path | None, str], ...]) -> list[ast.Statement]:
        out: list[ast.Statement] = []
        for s in module.statements:
            if isinstance(s, ast.Include):
                out += self.include(s, module.file, base, stack)
            else:
                out.append(s)
        return out

    def include(self, inc: ast.Include, display_from: str, base: Path,
                stack: tuple[tuple[Path | None, str], ...]) -> list[ast.Statement]:
        rel = inc.path.value
        target = _resolve(base, rel)
        display = os.path.normpath(os.path.join(os.path.dirname(display_from) if not display_from.startswith("<")
                                                else "", rel)) if rel else rel
        chain = [d for p, d in stack] + [display]
        if target is not None and target in [p for p, _ in stack]:
            self.error(f"include cycle: {' -> '.join(chain)}", inc.path.span, "a file cannot include itself")
            return []
        if target is None or not _is_file(target):
            self.error(f"cannot include '{rel}': no such file", inc.path.span,
                       f"the path is relative to {display_from}'s directory" if rel else None)
            return []
        if target in self.done:  # a diamond: the file's statements are already in
            return []
        try:
            text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error(f"cannot include '{rel}': {getattr(exc, 'strerror', None) or exc}", inc.path.span)
            return []
        self.done.add(target)
        module = self.parse(text, display)
        if module is None:
            return []
        return self.expand(module, target, target.parent, stack + ((target, display),))

    def parse(self, text: str, display: str) -> ast.Module | None:
        self.texts[display] = text
        module, errors = parse(text, display)
        self.diags += errors
        return module if not errors else None

    def error(self, message: str, span: Span, hint: str | None = None) -> None:
        self.diags.append(validate.error("E208", message, span, hint))


def _resolve(base: Path, rel: str) -> Path | None:
    try:
        return (base / rel).resolve() if rel else None
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops: not a file we can read
        return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # e.g. a name too long
        return False


# ---- compile -------------------------------------------------------------------------------

@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Compiling allocates many small objects and frees none, which makes CPython's collector
    rescan an ever larger heap (a third of the time at 30,000 nodes); nothing here needs it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _compile(text: str, display: str, real: Path | None, *, name: str | None) -> Topology:
    with _gc_paused():
        return _compile_unpaused(text, display, real, name=name)


def _compile_unpaused(text: str, display: str, real: Path | None, *, name: str | None) -> Topology:
    src = _Sources()
    if real is not None:
        src.done.add(real)
    module = src.parse(text, display)
    base = real.parent if real is not None else Path.cwd()
    statements = src.expand(module, real, base, ((real, display),)) if module else []
    diags = list(src.diags)
    scanned = {f: _scan_mask(t) for f, t in src.texts.items()}  # before any diagnostic can show a line
    if any(d.is_error for d in diags):
        raise MoaError(diagnostics=_ordered(diags, scanned), sources=scanned)
    built = graphs.build(statements)
    diags += built.diagnostics
    end = module.end if module else Span(display, 1, 1, 1, 1)
    output, found = graphs.resolve_output(built, end)
    diags += found
    cycles = validate.check_cycles(built.graph)
    diags += cycles
    dead: frozenset[str] = frozenset()
    if output is not None:  # ancestors() is a reverse BFS: cycles do not bother it
        dead = validate.dead_nodes(built.graph, output)
        diags += validate.check_dead(built.graph, output, dead)
    built.graph.graph["output"] = output
    built.graph.graph["dead"] = dead
    sources = _mask_secrets(scanned, validate.secret_spans(diags))
    diags = _ordered(diags, sources)
    if any(d.is_error for d in diags):
        raise MoaError(diagnostics=diags, sources=sources)
    return Topology(graph=built.graph, sources=sources, warnings=tuple(diags), name=name)


def _ordered(diags: list[Diagnostic], sources: dict[str, str]) -> list[Diagnostic]:
    """By file (in the order read), then position; stable for equal positions."""
    order = {f: i for i, f in enumerate(sources)}
    return sorted(diags, key=lambda d: (order.get(d.span.file, len(order)), d.span.line, d.span.column)
                  if d.span else (len(order) + 1, 0, 0))


def _mask_secrets(texts: dict[str, str], spans: list[Span]) -> dict[str, str]:
    """A literal api_key must not reach a rendered diagnostic: star it out, same width, same lines."""
    out = dict(texts)
    for span in spans:
        if span.file not in out:
            continue
        text = out[span.file]
        starts = _line_starts(text)
        if span.end_line > len(starts):
            continue
        a = starts[span.line - 1] + span.column - 1
        b = starts[span.end_line - 1] + span.end_column - 1
        out[span.file] = _star(text, a, b)
    return out


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _star(text: str, a: int, b: int) -> str:
    """Mask the inside of the string token text[a:b] (quotes kept); newlines kept so lines stay put."""
    q = 3 if text.startswith('"""', a) else 1
    inner = text[a + q:b - q] if text.endswith('"' * q, a, b) and b - a >= 2 * q else text[a + q:b]
    return text[:a + q] + re.sub(r"[^\n]", "*", inner) + text[a + q + len(inner):]


# A lexer just good enough to find secrets in text that may not parse: strings (terminated or not),
# comments, names, and single characters. Same token rules as grammar/moa.lark.
_TOKEN = re.compile(r'''(?P<str>"""(?:[^"]|"(?!""))*(?:"""|$)|"(?:[^"\\\n]|\\[^\n])*(?:"|$|(?=\n)))'''
                    r"|(?P<comment>#[^\n]*)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<space>\s+)|(?P<other>.)", re.S)
_IN_COMMENT = re.compile(r'(api_key\s*=\s*")([^"\n]*)', re.I)


def _scan_mask(text: str) -> str:
    """Star out the value of every `api_key = "..."`, and of secret-looking keys inside a
    `headers` map, without needing the text to parse: a syntax error renders source lines too."""
    spans: list[tuple[int, int]] = []
    toks = [(m.lastgroup, m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)
            if m.lastgroup != "space"]
    depth, headers_at = 0, None   # brace depth; the depth inside the open `headers` map, if any
    for i, (kind, value, a, b) in enumerate(toks):
        if kind == "comment":
            spans += [(a + m.start(2), a + m.end(2)) for m in _IN_COMMENT.finditer(value)]
            continue
        if value == "{":
            depth += 1
            if i >= 2 and toks[i - 1][1] == "=" and _key(toks[i - 2]) == "headers":
                headers_at = depth
        elif value == "}":
            if headers_at == depth:
                headers_at = None
            depth -= 1
        elif value == "=" and i >= 1 and i + 1 < len(toks) and toks[i + 1][0] == "str":
            key = _key(toks[i - 1])
            if key == "api_key" or (headers_at == depth and any(w in key for w in validate._SECRET_HEADER_WORDS)):
                spans.append((toks[i + 1][2], toks[i + 1][3]))
    for a, b in spans:
        text = _star(text, a, b) if text[a:a + 1] == '"' else text[:a] + "*" * (b - a) + text[b:]
    return text


def _key(tok: tuple[str | None, str, int, int]) -> str:
    kind, value = tok[0], tok[1]
    if kind == "str":
        return value.strip('"').lower()
    return value.lower() if kind == "name" else ""
