"""`moa sweep FILE --grid KEY=V1,V2,... --input DATA.jsonl`: search a topology's settings.

Every combination of the --grid values is a variant of FILE, named by its settings
(`temperature=0.3,p.n=4`); KEY is what --set takes (temperature, final.max_tokens, p.quorum, ...)
or LAYER.n, the sample count of a one-member layer. The variants are evaluated as `moa eval`
evaluates topologies, against FILE as written (or the variant --baseline names), under one bound on
calls in flight and one response cache (a call two variants share is made once; a rerun makes
none). --halving: successive halving, all variants on the first N/8 items, the better half on twice
as many, ... until all N. Results go to --out: eval's files plus sweep-KEY.svg per key. Exit codes:
0 done, 1 the file has errors, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MoaError
from . import EXIT_INVALID, add_call_options, usage_error
from .eval import add_judge_options, check_common_args, report_outcome

__all__ = ["main", "register"]

HELP = "search a topology's settings on a dataset (a grid of variants, judged like moa eval)"


def register(sub: Any) -> None:
    from ..evaluation.search import DEFAULT_SWEEP_OUT

    p = sub.add_parser(
        "sweep", help=HELP, description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("file", metavar="FILE", help="the .moa topology whose settings are searched")
    p.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=V1,V2,...",
        help="values to try for one key (repeatable; every combination is a variant). KEY: what "
        "--set takes, or LAYER.n for a one-member layer's sample count",
    )
    p.add_argument(
        "--input",
        required=True,
        metavar="DATA.jsonl",
        help="one JSON object a line: instruction, query or turns (MT-Bench); or a shipped "
        "dataset's name: alpaca-eval, mt-bench, arithmetic",
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the first N items")
    add_judge_options(p)
    p.add_argument(
        "--baseline", metavar="NAME", help="a variant to judge the others against (default: FILE as written)"
    )
    p.add_argument(
        "--halving",
        action="store_true",
        help="successive halving: drop the worse half of the variants at N/8, N/4, N/2 items",
    )
    p.add_argument(
        "--out", default=DEFAULT_SWEEP_OUT, metavar="DIR", help=f"where results go (default {DEFAULT_SWEEP_OUT}/)"
    )
    add_call_options(p, bound=", all variants and items together")
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    p.set_defaults(func=main)


def _usage(message: str) -> int:
    return usage_error("sweep", message)


def main(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        return _usage(problem)
    from ..evaluation.search import parse_grid, sweep

    try:
        grid = parse_grid(args.grid)
        report = sweep(
            args.file,
            grid,
            args.input,
            limit=args.limit,
            judge=args.judge,
            baseline=args.baseline,
            out=args.out,
            halving=args.halving,
            concurrency=args.concurrency,
            cache=not args.no_cache,
            cache_dir=args.cache_dir,
            refresh=args.refresh,
            judge_max_tokens=args.judge_max_tokens,
            progress=None if args.quiet else sys.stderr,
            verbose=args.verbose,
        )
    except ConfigError as exc:
        return _usage(str(exc))
    except MoaError as exc:
        if not exc.diagnostics:
            raise
        print(exc.render(color=sys.stderr.isatty()), file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # --out not writable
        return _usage(f"cannot write {exc.filename or args.out}: {exc.strerror or exc}")
    return report_outcome("sweep", report, args.out)


def _check_args(args: argparse.Namespace) -> str | None:
    problem = check_common_args(args)
    if problem is not None:
        return problem
    if not Path(args.file).is_file():
        return f"no such file: {args.file}"
    return None  # --input is read (and its errors named) by the dataset reader
