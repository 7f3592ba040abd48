"""`moa eval A.moa B.moa ... --input DATA.jsonl`: compare topologies on quality, cost and latency.

Every topology answers every item; an LLM judge compares each one's answers with the baseline's
(the first file unless --baseline), each pair in both orders. Results go to --out (per topology
NAME/model_outputs.json in AlpacaEval's format, summary.json, summary.md, summary.svg) and the
table is printed. With --score exact there is no judge: each answer's first match of --extract is
compared with the item's `answer` and each topology's accuracy is reported. Every call goes through
the response cache: an interrupted evaluation resumes, a rerun calls nothing. Exit codes: 0 done
(failed items are reported, not fatal), 1 a topology file has errors, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MoaError
from . import EXIT_INVALID, EXIT_OK, add_call_options, usage_error

__all__ = ["HELP", "add_judge_options", "check_common_args", "main", "register", "report_outcome"]

HELP = "compare topologies on a dataset (pairwise LLM judge, cost, latency)"


def register(sub: Any) -> None:
    from ..evaluation.compare import DEFAULT_OUT

    p = sub.add_parser(
        "eval", help=HELP, description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("files", metavar="FILE", nargs="+", help=".moa topologies; each is named by its file's stem")
    p.add_argument(
        "--input",
        required=True,
        metavar="DATA.jsonl",
        help="one JSON object a line: instruction, query or turns (MT-Bench); or the name of a "
        "shipped dataset, alpaca-eval, mt-bench or arithmetic (a name is a name only when no file of "
        "that name exists)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the first N items")
    add_judge_options(p)
    p.add_argument(
        "--score",
        choices=("judge", "exact"),
        default="judge",
        help="judge: pairwise LLM judge against the baseline (default); exact: compare each answer with "
        "the item's `answer` field (accuracy, no judge)",
    )
    p.add_argument(
        "--extract",
        metavar="REGEX",
        help="with --score exact: the part of an answer compared (its first group, if any; default "
        "'####\\s*(-?[0-9][0-9,]*(?:\\.[0-9]+)?)', the number after ####)",
    )
    p.add_argument("--baseline", metavar="NAME", help="the topology the others are judged against (default: the first)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"where results go (default {DEFAULT_OUT}/)")
    add_call_options(p, bound=", all topologies and items together")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=main)


def _usage(message: str) -> int:
    return usage_error("eval", message)


def main(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        return _usage(problem)
    pipes = _load(args.files)
    if isinstance(pipes, int):
        return pipes
    from ..evaluation import evaluate

    try:
        report = evaluate(
            pipes,
            args.input,
            limit=args.limit,
            judge=args.judge,
            baseline=args.baseline,
            out=args.out,
            concurrency=args.concurrency,
            cache=not args.no_cache,
            cache_dir=args.cache_dir,
            refresh=args.refresh,
            judge_max_tokens=args.judge_max_tokens,
            progress=None if args.quiet else sys.stderr,
            verbose=args.verbose,
            score=args.score,
            extract=args.extract,
        )
    except ConfigError as exc:
        return _usage(str(exc))
    except OSError as exc:  # --out not writable
        return _usage(f"cannot write {exc.filename or args.out}: {exc.strerror or exc}")
    return report_outcome("eval", report, args.out)


def _check_args(args: argparse.Namespace) -> str | None:
    problem = check_common_args(args)
    if problem is not None:
        return problem
    if args.extract is not None and args.score != "exact":
        return "--extract goes with --score exact"
    for f in args.files:  # --input (a file or a dataset's name) is checked as it is read, line by line
        if not Path(f).is_file():
            return f"no such file: {f}"
    return None


def _load(files: list[str]) -> list[Any] | int:
    """Every file, every diagnostic printed, before anything is called."""
    from ..runtime import load

    pipes, bad = [], False
    for f in files:
        try:
            pipes.append(load(f))
        except MoaError as exc:
            bad = True
            print(
                exc.render(color=sys.stderr.isatty()) if exc.diagnostics else f"moa eval: error: {exc}", file=sys.stderr
            )
    return EXIT_INVALID if bad else pipes


def add_judge_options(p: argparse.ArgumentParser) -> None:
    """--judge and --judge-max-tokens, as `moa eval` and `moa sweep` take them."""
    from ..evaluation.judge import DEFAULT_JUDGE, DEFAULT_JUDGE_MAX_TOKENS

    p.add_argument(
        "--judge",
        default=DEFAULT_JUDGE,
        metavar="MODELREF",
        help=f'the judge, as in a .moa file: PROVIDER:"ID" (default {DEFAULT_JUDGE})',
    )
    p.add_argument(
        "--judge-max-tokens",
        type=int,
        default=DEFAULT_JUDGE_MAX_TOKENS,
        metavar="N",
        help=f"the judge's completion budget (default {DEFAULT_JUDGE_MAX_TOKENS})",
    )


def check_common_args(args: argparse.Namespace) -> str | None:
    """The checks `moa eval` and `moa sweep` share: the bound, --limit, the judge's budget, the cache flags."""
    if args.concurrency < 1:
        return f"--concurrency must be >= 1, not {args.concurrency}"
    if args.limit is not None and args.limit < 1:
        return f"--limit must be >= 1, not {args.limit}"
    if args.judge_max_tokens < 1:
        return f"--judge-max-tokens must be >= 1, not {args.judge_max_tokens}"
    if args.no_cache and args.refresh:
        return "--no-cache and --refresh contradict each other"
    return None


def report_outcome(command: str, report: Any, out: str) -> int:
    """The summary table on stdout; failed item runs and where the results are on stderr."""
    sys.stdout.write(report.to_markdown())
    failed = sum(len(row["failed_items"]) for row in report.summary["topologies"])
    if failed:
        print(f"moa {command}: {failed} item runs failed (listed in {Path(out) / 'summary.json'})", file=sys.stderr)
    print(f"moa {command}: results in {out}/", file=sys.stderr)
    return EXIT_OK
