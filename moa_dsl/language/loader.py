"""Files in, a validated `Topology` out: parse, splice includes, build, check, raise once.

load(path)                       a file; its includes are relative to it
loads(text, filename="<string>") text; includes are relative to the current directory
"""

from __future__ import annotations

import contextlib
import gc
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError, Diagnostic, MoaError, mask_secrets
from . import graph as graphs
from . import syntax as ast
from . import validate
from .parser import parse
from .syntax import Span
from .topology import Topology

__all__ = ["load", "load_rewritten", "loads", "MAX_SOURCE_BYTES", "MAX_INCLUDE_DEPTH"]

MAX_SOURCE_BYTES = 8 * 1024 * 1024  # a .moa file, or an include, or the text given to loads()
MAX_INCLUDE_DEPTH = 64  # files in one include chain, the top one included
_LIMIT = "8 MiB (8388608 bytes)"
_BOM = "\ufeff"


def load(path: str | os.PathLike) -> Topology:
    """Parse and validate a file. A missing or unreadable file is a ConfigError (exit 2 in the CLI);
    one over MAX_SOURCE_BYTES is E101."""
    return load_rewritten(path, None)


def load_rewritten(path: str | os.PathLike, rewrite: Callable[[ast.Module], ast.Module] | None) -> Topology:
    """`load`, with the file's syntax tree passed through `rewrite` before it is built and checked
    (`moa sweep` rewrites a layer's `MODEL * N`). Included files are not rewritten; a file that
    does not parse raises before `rewrite` is called."""
    p = Path(path)
    display = os.fspath(path)
    try:
        text = _read(p)
    except _TooLarge:
        raise MoaError(diagnostics=[_too_large(display, Span(display, 1, 1, 1, 1))]) from None
    except _Unreadable as exc:
        raise ConfigError(f"cannot read {display}: {exc.reason}") from None
    return _compile(text, display, p.resolve(), name=p.stem, rewrite=rewrite)


def loads(text: str, filename: str = "<string>") -> Topology:
    """Parse and validate text. Includes resolve against `filename`'s directory, else the cwd."""
    if not isinstance(text, str):
        kind = type(text).__name__
        decode = "; decode it first" if isinstance(text, (bytes, bytearray, memoryview)) else ""
        raise TypeError(f"loads() takes the text of a .moa file as str, not {kind}{decode}")
    if isinstance(filename, os.PathLike):
        filename = os.fspath(filename)
    if not isinstance(filename, str):
        raise TypeError(f"loads() takes filename as str, not {type(filename).__name__}")
    if _over_limit(text):
        raise MoaError(diagnostics=[_too_large(filename, Span(filename, 1, 1, 1, 1))])
    real = None if filename.startswith("<") else Path(filename).resolve()
    return _compile(text.removeprefix(_BOM), filename, real, name=None)


# ---- reading, bounded -----------------------------------------------------------------------


class _Unreadable(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class _TooLarge(Exception):
    pass


def _read(path: Path) -> str:
    """A regular file's text, BOM dropped, never more than MAX_SOURCE_BYTES + 1 bytes read.
    Raises _Unreadable (a directory, a device, a FIFO, not UTF-8, an OS error) or _TooLarge."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:
        raise _Unreadable(_reason(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise _Unreadable("is a directory")
        if not stat.S_ISREG(mode):
            raise _Unreadable("not a regular file")
        chunks, size = [], 0
        while size <= MAX_SOURCE_BYTES:
            chunk = os.read(fd, MAX_SOURCE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _Unreadable(_reason(exc)) from None
    finally:
        os.close(fd)
    if size > MAX_SOURCE_BYTES:
        raise _TooLarge()
    data = b"".join(chunks)
    del chunks
    try:
        return data.decode("utf-8").removeprefix(_BOM)
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return getattr(exc, "strerror", None) or str(exc)


def _over_limit(text: str) -> bool:
    """Over MAX_SOURCE_BYTES in UTF-8; a character takes at most 4 bytes, so most texts need no encoding."""
    if len(text) > MAX_SOURCE_BYTES:
        return True
    return len(text) * 4 > MAX_SOURCE_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES


def _too_large(display: str, span: Span, prefix: str = "") -> Diagnostic:
    return validate.error(
        "E101",
        f"{prefix}{display} is larger than {_LIMIT}, the limit for a .moa file",
        span,
        "split it with `include`" if not prefix else None,
    )


# ---- includes ------------------------------------------------------------------------------


class _Sources:
    """Every file read, by display name; includes spliced in place, each file once."""

    def __init__(self, root: Path, root_display: str) -> None:
        self.root = root  # resolved; nothing outside it is read
        self.root_display = root_display  # how messages name it
        self.texts: dict[str, str] = {}
        self.done: set[Path] = set()
        self.diags: list[Diagnostic] = []

    def expand(
        self, module: ast.Module, real: Path | None, base: Path, stack: tuple[tuple[Path | None, str], ...]
    ) -> list[ast.Statement]:
        out: list[ast.Statement] = []
        for s in module.statements:
            if isinstance(s, ast.Include):
                out += self.include(s, module.file, base, stack)
            else:
                out.append(s)
        return out

    def include(
        self, inc: ast.Include, display_from: str, base: Path, stack: tuple[tuple[Path | None, str], ...]
    ) -> list[ast.Statement]:
        rel = inc.path.value
        # Only files under the top file's directory: nothing of another target is read, nor is it
        # said whether it exists (`include "../.env"` would show the key on its first line).
        hint: str | None = f"includes stay under {self.root_display}; copy or link the file there"
        if rel and (os.path.isabs(rel) or rel.startswith("~")):
            self.error(f"cannot include '{rel}': an include path must be relative", inc.path.span, hint)
            return []
        target = _resolve(base, rel)
        if target is not None and not target.is_relative_to(self.root):  # symlinks resolved first
            self.error(f"cannot include '{rel}': it leads outside {self.root_display}", inc.path.span, hint)
            return []
        display = (
            os.path.normpath(
                os.path.join(os.path.dirname(display_from) if not display_from.startswith("<") else "", rel)
            )
            if rel
            else rel
        )
        chain = [d for p, d in stack] + [display]
        if target is not None and target in [p for p, _ in stack]:
            self.error(f"include cycle: {' -> '.join(chain)}", inc.path.span, "a file cannot include itself")
            return []
        if len(stack) >= MAX_INCLUDE_DEPTH:  # expansion recurses: bound it well below Python's limit
            self.error(
                f"include chain deeper than {MAX_INCLUDE_DEPTH} files: {chain[0]} -> ... -> {display_from}",
                inc.path.span,
            )
            return []
        if target is None:
            self.error(
                f"cannot include '{rel}': no such file",
                inc.path.span,
                f"the path is relative to {display_from}'s directory" if rel else None,
            )
            return []
        if target in self.done:  # a diamond: the file's statements are already in
            return []
        try:
            text = _read(target)
        except _TooLarge:
            self.diags.append(_too_large(display, inc.path.span, prefix=f"cannot include '{rel}': "))
            return []
        except _Unreadable as exc:
            hint = f"the path is relative to {display_from}'s directory" if exc.reason == "no such file" else None
            self.error(f"cannot include '{rel}': {exc.reason}", inc.path.span, hint)
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


_Rewrite = Callable[[ast.Module], ast.Module]


def _compile(
    text: str, display: str, real: Path | None, *, name: str | None, rewrite: _Rewrite | None = None
) -> Topology:
    with _gc_paused():
        return _compile_unpaused(text, display, real, name=name, rewrite=rewrite)


def _compile_unpaused(
    text: str, display: str, real: Path | None, *, name: str | None, rewrite: _Rewrite | None = None
) -> Topology:
    base = real.parent if real is not None else Path.cwd().resolve()
    where = "the current directory" if real is None else f"the directory of {display}"
    src = _Sources(base, where)
    if real is not None:
        src.done.add(real)
    module = src.parse(text, display)
    if module is not None and rewrite is not None:
        module = rewrite(module)
    statements = src.expand(module, real, base, ((real, display),)) if module else []
    diags = list(src.diags)
    scanned = _mask_all(src.texts)  # before any diagnostic can show a line
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
    diags += validate.check_budget_prices(built.graph, dead, built.budget_usd_at)
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
    return sorted(
        diags,
        key=lambda d: (
            (order.get(d.span.file, len(order)), d.span.line, d.span.column) if d.span else (len(order) + 1, 0, 0)
        ),
    )


def _mask_all(texts: dict[str, str]) -> dict[str, str]:
    """Every secret-looking value starred (errors.mask_secrets), whether or not the text parses."""
    return {f: mask_secrets(t) for f, t in texts.items()}


def _mask_secrets(texts: dict[str, str], spans: list[Span]) -> dict[str, str]:
    """What the checks found to be secret (a literal api_key, a secret header) starred too, same
    width, same lines: the inside of the quotes (or of the `env(...)` string) of each span."""
    by_file: dict[str, list[Span]] = {}
    for span in spans:
        if span.file in texts:
            by_file.setdefault(span.file, []).append(span)
    out = dict(texts)
    for file, found in by_file.items():
        text = out[file]
        starts = _line_starts(text)
        ranges = []
        for span in found:
            if span.end_line > len(starts):
                continue
            a = starts[span.line - 1] + span.column - 1
            b = starts[span.end_line - 1] + span.end_column - 1
            first, last = text.find('"', a, b), text.rfind('"', a, b)
            if first != -1 and last > first:  # inside the outer quotes; `"""` keeps its inner two
                q = 3 if text.startswith('"""', first) and last - first >= 5 else 1
                a, b = first + q, last + 1 - q
            elif first != -1:  # unterminated: from the quote on
                a = first + 1
            ranges.append((a, b))
        pieces, done = [], 0
        for a, b in sorted(ranges):
            a = max(a, done)
            if b > a:
                pieces += [text[done:a], "".join("\n" if c == "\n" else "*" for c in text[a:b])]
                done = b
        pieces.append(text[done:])
        out[file] = "".join(pieces)
    return out


def _line_starts(text: str) -> list[int]:
    starts = [0]
    at = text.find("\n")
    while at != -1:
        starts.append(at + 1)
        at = text.find("\n", at + 1)
    return starts
