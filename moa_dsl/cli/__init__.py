"""`moa`: argv in, exit code out. Each command lives in its own module with a `register(sub)`."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import NoReturn, Sequence

from ..errors import ConfigError, MoaError

__all__ = ["add_call_options", "build_parser", "main", "run", "usage_error"]

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3

_COMMANDS = ("check", "run", "eval", "sweep", "cache", "models", "serve")  # modules under moa_dsl.cli


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own exit code is already 2; keep it short
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"moa: error: {message}\n")


def add_call_options(p: argparse.ArgumentParser, *, bound: str) -> None:
    """The options of every command that makes calls: the cache, the bound, llama.cpp's logs."""
    from ..config import DEFAULT_CONCURRENCY

    p.add_argument("--cache-dir", metavar="DIR", help="response cache (default $MOA_CACHE_DIR or ~/.cache/moa-dsl)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--refresh", action="store_true", help="call again and overwrite cached responses")
    p.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"global bound on calls in flight{bound} (default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument("--verbose", action="store_true", help="show the embedded llama.cpp runtime's logs")


def usage_error(command: str, message: str) -> int:
    print(f"moa {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="moa", description="Mixture-of-Agents topologies: check, draw, run, compare.")
    parser.add_argument("--version", action="version", version=f"moa-dsl {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":  # command not built yet
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moa-dsl")
    except PackageNotFoundError:
        return "0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..providers.local import registry
    from .progress import byte_bars

    registry.use_byte_progress(byte_bars)  # a run's first use of a local model pulls it with a bar
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"moa: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MoaError as exc:
        print(exc.render(color=sys.stderr.isatty()) if exc.diagnostics else f"moa: error: {exc}", file=sys.stderr)
        return EXIT_INVALID if exc.diagnostics else EXIT_RUN_FAILED
    except KeyboardInterrupt:
        print("moa: interrupted; completed calls are kept in the cache", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, without Python's source line: the runtime warns (it never
    prints), the CLI says it the way a command does."""
    from ..runtime.cache import CacheWarning

    if isinstance(message, CacheWarning):
        text = f"response cache at {message.directory} unusable ({message.reason}); continuing without it"
    else:
        text = str(message)
    print(f"moa: warning: {text}", file=sys.stderr)


def run() -> None:
    sys.exit(main())
