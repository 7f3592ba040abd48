"""`moa check FILE... [--format text|json]` and `moa graph FILE [--format ...] [-o PATH]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError, Diagnostic, MoaError, render_diagnostics, summary
from ..language.export import FORMATS
from ..language.loader import load
from . import EXIT_INVALID, EXIT_OK, EXIT_USAGE

__all__ = ["register", "run_check", "run_graph"]


def register(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="parse and validate .moa files; print every diagnostic",
        description="Parse and validate each FILE and print every diagnostic. "
        "Exit 0 if there are no errors (warnings allowed), 1 if there are.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.add_argument("--color", action="store_true", help="colour the text diagnostics")
    check.set_defaults(func=run_check)

    graph = sub.add_parser(
        "graph",
        help="print the validated graph (mermaid, dot, json or svg)",
        description="Validate FILE and print its graph; nothing is called.",
    )
    graph.add_argument("file", metavar="FILE")
    graph.add_argument("--format", choices=tuple(FORMATS), default="mermaid")
    graph.add_argument("-o", "--output", metavar="PATH", help="write to PATH instead of stdout")
    graph.set_defaults(func=run_graph)


def _check_one(path: str) -> tuple[list[Diagnostic], dict[str, str], str | None]:
    """(diagnostics, sources, usage error)."""
    try:
        pipe = load(path)
    except ConfigError as exc:
        return [], {}, str(exc)
    except MoaError as exc:
        return exc.diagnostics, exc.sources, None
    return list(pipe.warnings), pipe.sources, None


def run_check(args: argparse.Namespace) -> int:
    every: list[Diagnostic] = []
    usage, checked = False, 0
    for path in args.files:
        diags, sources, problem = _check_one(path)
        if problem:
            usage = True
            print(f"moa: error: {problem}", file=sys.stderr)
            continue
        checked += 1
        every += diags
        if args.format == "text" and diags:
            print(render_diagnostics(diags, sources, color=args.color))
    if args.format == "json":
        print(json.dumps([d.to_json() for d in every], indent=2, ensure_ascii=False, allow_nan=False))
    elif checked:
        print(f"{summary(every)} in {checked} file{'s' if checked != 1 else ''}", file=sys.stderr)
    if usage:
        return EXIT_USAGE
    return EXIT_INVALID if any(d.is_error for d in every) else EXIT_OK


def run_graph(args: argparse.Namespace) -> int:
    pipe = load(args.file)  # MoaError / ConfigError: rendered by cli.main (exit 1 / 2)
    if pipe.warnings:
        print(render_diagnostics(pipe.warnings, pipe.sources), file=sys.stderr)
    text = FORMATS[args.format](pipe.graph)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"moa: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        sys.stdout.write(text)
    return EXIT_OK
