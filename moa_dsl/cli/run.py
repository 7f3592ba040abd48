"""`moa run FILE [QUERY] [options]`: run a topology on a query, or on every line of a JSONL file.

stdout gets the output node's answer as it streams (or, with --json, one JSON object); stderr gets
one line per node event and a summary. Exit codes: 0 ok, 1 the file has errors, 2 usage, 3 the run
failed (in a batch: any item failed).

Batches (`--input`): every item runs concurrently through one Session, so `--concurrency` bounds the
calls in flight across the whole batch. An item's query is its `instruction`, else its `query` (a
string or a conversation), else its `turns` (MT-Bench): turns run as a real conversation, turn 1
first, then turn 2 with turn 1's answer as the assistant message between them. Each output line is
the input object plus `output` (the last turn's answer, null if it failed), `status`, `error`,
`usage`, `elapsed_s`, `generator` (the file's stem), and for `turns` items `outputs` (one answer
per turn). With `--score exact`, each line also has `extracted` (the first match of `--extract` in
the answer) and `correct` (it equals the item's `answer` field), and the accuracy is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import IO, Any, TextIO

from ..errors import MoaError
from ..runtime.events import Event, TraceWriter
from ..runtime.report import failure_reason, totals_line
from . import EXIT_INVALID, EXIT_OK, EXIT_RUN_FAILED, add_call_options, usage_error

__all__ = ["HELP", "main", "NodeLines", "Progress", "register", "run_item"]

HELP = "run the topology on a query"


def register(sub: Any) -> None:
    p = sub.add_parser("run", help=HELP, description=HELP + ". " + __doc__.split("\n\n")[1])
    p.add_argument("file", metavar="FILE", help="the .moa topology")
    p.add_argument("query_arg", metavar="QUERY", nargs="?", help="the query; '-' reads it from stdin")
    p.add_argument("-q", "--query", help="the query (instead of QUERY)")
    p.add_argument(
        "--input",
        metavar="FILE.jsonl",
        help="run every line (instruction, query or turns); '-' reads stdin; the names "
        "alpaca-eval, mt-bench and arithmetic are the shipped datasets (a name is a name only when "
        "no file of that name exists)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="with --input: only the first N items")
    p.add_argument("--output", metavar="FILE.jsonl", help="with --input: where results go (default stdout)")
    p.add_argument(
        "--score",
        choices=("exact",),
        help="with --input: exact compares each answer with the item's `answer` field (adds `correct` "
        "and `extracted` to each row; the accuracy is printed at the end)",
    )
    p.add_argument(
        "--extract",
        metavar="REGEX",
        help="with --score exact: the part of an answer compared (its first group, if any; default: "
        "the number after ####)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="[NODE.]KEY=VALUE",
        help="override a parameter for every node, or for one (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan; call nothing")
    p.add_argument("--quiet", action="store_true", help="silence stderr except errors")
    p.add_argument("--json", action="store_true", help="print one JSON result object instead of the text")
    p.add_argument("--trace", metavar="PATH", help="append the run's events as JSON lines")
    p.add_argument(
        "--budget-usd", type=float, metavar="X", help="cap one query's cost in USD (replaces the file's budget usd)"
    )
    p.add_argument(
        "--budget-tokens", type=int, metavar="N", help="cap one query's tokens (replaces the file's budget tokens)"
    )
    p.add_argument(
        "--budget-calls", type=int, metavar="M", help="cap one query's calls (replaces the file's budget calls)"
    )
    add_call_options(p, bound="")
    p.set_defaults(func=main)


def _usage(message: str) -> int:
    return usage_error("run", message)


def main(args: argparse.Namespace) -> int:
    given = [x for x in (args.query_arg, args.query, args.input) if x is not None]
    if len(given) > 1:
        return _usage("give the query once: QUERY, -q TEXT, or --input FILE.jsonl")
    if not given:
        return _usage("no query: give QUERY, -q TEXT, '-' to read stdin, or --input FILE.jsonl")
    if args.concurrency < 1:
        return _usage(f"--concurrency must be >= 1, not {args.concurrency}")
    if args.output and not args.input:
        return _usage("--output goes with --input")
    if args.limit is not None and not args.input:
        return _usage("--limit goes with --input")
    if args.score is not None and not args.input:
        return _usage("--score goes with --input")
    if args.extract is not None and args.score != "exact":
        return _usage("--extract goes with --score exact")
    if args.limit is not None and args.limit < 1:
        return _usage(f"--limit must be >= 1, not {args.limit}")
    if args.no_cache and args.refresh:
        return _usage("--no-cache and --refresh contradict each other")
    for flag in ("usd", "tokens", "calls"):
        value = getattr(args, f"budget_{flag}")
        if value is not None and not (value > 0 and value != float("inf")):
            return _usage(f"--budget-{flag} must be a number > 0, not {value}")
    if not Path(args.file).is_file():
        return _usage(f"no such file: {args.file}")
    pipe = _load(args)
    if isinstance(pipe, int):
        return pipe
    if args.input:
        return _batch(pipe, args)
    query = _read_stdin() if args.query_arg == "-" else given[0]
    if query is None or not _is_utf8(query):
        return _usage("the query is not valid UTF-8")
    if not query.strip():
        return _usage("the query is empty")
    if args.dry_run:
        return _dry_run(pipe, query, args)
    trace = _open(args.trace, "a", "--trace") if args.trace else None
    if isinstance(trace, int):
        return trace
    stdout = _Sink(sys.stdout, "stdout")
    try:
        code = _single(pipe, query, args, trace, stdout)
    finally:
        if trace is not None:
            trace.close()
    return _unwritten([stdout, trace]) or code


def _read_stdin() -> str | None:
    """The query from stdin, decoded strictly (None when it is not UTF-8; a UTF-8 BOM is dropped)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream with no bytes under it (a test's StringIO)
        return sys.stdin.read()
    try:
        return buffer.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _is_utf8(text: str) -> bool:
    """False for argv with bytes that were not UTF-8 (Python carries them as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _open(path: str, mode: str, flag: str) -> "_Sink | int":
    """The file, opened now so a bad path is a usage error (exit 2) before any call is made, not a
    traceback after every call was."""
    try:
        return _Sink(open(path, mode, encoding="utf-8"), f"{flag} {path}", owned=True)
    except OSError as exc:
        return _usage(f"{flag} {path}: cannot open it ({exc.strerror or exc})")


def _unwritten(sinks: list["_Sink | None"]) -> int:
    """After the run: each destination that could not be written (a full disk), said once; exit 3,
    since the run did not deliver what it was asked for (its completed calls are in the cache)."""
    failed = [s for s in sinks if s is not None and s.error is not None]
    for sink in failed:
        why = (sink.error.strerror if sink.error is not None else None) or sink.error
        print(f"moa run: cannot write {sink.label}: {why}", file=sys.stderr)
    if failed:
        print(
            "moa run: the completed calls are in the response cache; a rerun makes only the missing ones",
            file=sys.stderr,
        )
    return EXIT_RUN_FAILED if failed else EXIT_OK


def _load(args: argparse.Namespace) -> Any:
    from ..runtime import load

    try:
        pipe = load(args.file)
    except MoaError as exc:
        print(exc.render(color=sys.stderr.isatty()) if exc.diagnostics else f"moa run: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if pipe.warnings and not args.quiet:
        print(
            MoaError(diagnostics=pipe.warnings, sources=pipe.sources).render(color=sys.stderr.isatty()), file=sys.stderr
        )
    if args.sets:
        try:
            pipe = pipe.with_overrides(args.sets)
        except MoaError as exc:
            return _usage(exc.render() if exc.diagnostics else str(exc))
    return pipe


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    """--budget-usd/-tokens/-calls, each replacing the file's key of the same name (docs/language.md, "budget")."""
    return {
        key: value for key in ("usd", "tokens", "calls") if (value := getattr(args, f"budget_{key}", None)) is not None
    }


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "concurrency": args.concurrency,
        "cache": not args.no_cache,
        "cache_dir": args.cache_dir,
        "refresh": args.refresh,
        "budget": _budget(args),
    }


def _dry_run(pipe: Any, query: str, args: argparse.Namespace) -> int:
    from ..runtime.dryrun import format_plan, plan
    from ..runtime.operators import budget_caps

    rows = plan(pipe, query, cache=not args.no_cache, cache_dir=args.cache_dir, refresh=args.refresh)
    print(format_plan(rows, budget_caps(pipe.graph.graph.get("budget"), _budget(args))))
    return EXIT_OK


# --- one query ---------------------------------------------------------------------------------


class NodeLines:
    """One stderr line per node event; with `quiet`, only failures."""

    def __init__(self, stream: TextIO, *, quiet: bool = False):
        self.stream, self.quiet = stream, quiet

    def __call__(self, e: Event) -> None:
        line = self._line(e)
        if line is not None:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _line(self, e: Event) -> str | None:
        d = e.data
        if e.kind == "node_failed":
            return f"  failed   {e.node}: {d['error']}"
        if self.quiet:
            return None
        if e.kind == "node_started":
            return f"  started  {e.node} ({d['provider']}:{d['model']})"
        if e.kind == "retry":
            wait = d.get("delay_s", 0)
            return f"  retry    {e.node}: attempt {d.get('attempt')} failed ({d.get('error')}), waiting {wait:.1f}s"
        if e.kind == "node_cancelled":
            return f"  cancelled {e.node}: {d.get('reason')}"
        if e.kind == "node_finished" and d.get("agreed"):
            return f"  agreed   {e.node}: its inputs gave the same answer, no call"
        if e.kind == "node_finished" and d.get("votes") is not None:
            tally = ", ".join(f"{answer[:40]!r} {n}" for answer, n in d["votes"].items())
            return f"  voted    {e.node}: {tally}"
        if e.kind == "node_finished" and d["status"] == "ok":
            selected = f", selected {', '.join(d['selected'])}" if d.get("selected") else ""
            return f"  done     {e.node}: {d['usage']['completion_tokens']} tokens in {d['latency_s']:.2f}s" + selected
        if e.kind == "node_finished":
            u = d["usage"]
            selected = f", selected {', '.join(d['selected'])}" if d.get("selected") else ""
            return f"  cached   {e.node} ({u['prompt_tokens'] + u['completion_tokens']} tokens saved{selected})"
        if e.kind == "node_skipped":
            return f"  skipped  {e.node}: {d['reason']}"
        return None


def _single(pipe: Any, query: str, args: argparse.Namespace, trace: "_Sink | None", write: "_Sink") -> int:
    from ..runtime.scheduler import arun

    streamed: list[str] = []
    lines = NodeLines(sys.stderr, quiet=args.quiet)

    def end_line() -> None:  # the answer's last line, ended before stderr's next line shares the terminal
        if streamed and not streamed[-1].endswith("\n") and not args.json:
            write("\n")
            streamed.append("\n")

    def on_token(text: str) -> None:
        streamed.append(text)
        if not args.json:
            write(text)

    def on_event(e: Event) -> None:
        if e.node == pipe.output and e.kind in ("node_finished", "node_failed"):
            end_line()
        lines(e)

    result = asyncio.run(
        arun(pipe, query, **_options(args), on_event=on_event, trace=trace, on_token=on_token, **_verbose(args))
    )
    if args.json:
        write(json.dumps(result.to_json(), ensure_ascii=False, indent=2, allow_nan=False) + "\n")
    elif result.output is not None and not streamed:  # a provider that could not stream
        write(result.output if result.output.endswith("\n") else result.output + "\n")
    end_line()
    if result.status != "ok":
        print(
            f"moa run: the output node '{result.output_node}' did not answer: {failure_reason(result)}", file=sys.stderr
        )
    if not args.quiet:
        print(f"moa: {result.summary()}", file=sys.stderr)
    return EXIT_OK if result.status == "ok" else EXIT_RUN_FAILED


class _Sink:
    """Where the run writes as it goes (stdout, --output, --trace), flushed at every write.

    A failure to write never reaches the runner (raised inside on_token or an event listener it
    would fail the node being written about, or tear the run down mid-call): stdout's reader going
    away (`| head -1`) silences stdout for the rest of the run; any other OSError (a full disk) is
    kept in `error`, later writes are dropped, and the CLI reports it when the run is over.
    """

    def __init__(self, out: IO[str], label: str, *, owned: bool = False):
        self.out, self.label, self.owned = out, label, owned
        self.reader_gone = False
        self.error: OSError | None = None

    def __call__(self, text: str) -> None:
        self.write(text)

    def write(self, text: str) -> None:
        if self.reader_gone or self.error is not None:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            if self.out is not sys.stdout:  # only stdout's reader may leave: a file is not a pipe
                self.error = OSError(32, "its reader went away")
            self.reader_gone = True
            self._abandon()
        except OSError as exc:
            self.error = exc
            self._abandon()

    def flush(self) -> None:  # every write is flushed already (TraceWriter calls this)
        pass

    def close(self) -> None:
        if not self.owned:
            return
        try:
            self.out.close()
        except OSError as exc:  # the last buffered bytes did not fit either
            if self.error is None:
                self.error = exc

    def _abandon(self) -> None:
        """What is still buffered can never be written: drop it, so neither close() nor the
        interpreter's flush at exit raises again."""
        if self.out is sys.stdout:
            _discard_stdout()
        elif self.owned:
            try:
                self.out.close()
            except OSError:
                pass
            self.owned = False


def _discard_stdout() -> None:
    """Point stdout's descriptor at /dev/null, so the interpreter's flush at exit does not raise
    BrokenPipeError again (the recipe in Python's `signal` docs)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's stand-in)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _verbose(args: argparse.Namespace) -> dict[str, Any]:
    return {"verbose": True} if args.verbose else {}


# --- a batch -----------------------------------------------------------------------------------


async def run_item(session: Any, item: Any, on_event: Any = None) -> dict[str, Any]:
    """One batch item (an evaluate.Item) through a shared session: its turns as one conversation.

    Not evaluate.run_item: that one accounts latency and cost per node for a report, this one
    reports per-turn outputs, cache hits and wall time for the output file.
    """
    conversation = [{"role": role, "content": content} for role, content in item.prefix]
    outputs: list[str | None] = []
    usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0, "cache_hits": 0, "cost_usd": 0.0}
    elapsed, status, error = 0.0, "ok", None
    for turn in item.turns:
        conversation.append({"role": "user", "content": turn})
        # A lone user message goes as the plain string, as `moa run QUERY` sends it.
        query = turn if len(conversation) == 1 else list(conversation)
        result = await session.run(query, on_event=on_event)
        elapsed += result.elapsed_s
        for k, v in result.usage.to_json().items():
            if k == "cost_usd":  # None (an unpriced call) stays None
                usage[k] = None if v is None or usage[k] is None else round(usage[k] + v, 6)
            else:
                usage[k] += v
        outputs.append(result.output)
        if result.status != "ok":  # later turns need this answer: stop here
            status, error = "failed", _error(result)
            break
        conversation.append({"role": "assistant", "content": result.output})
    outputs += [None] * (len(item.turns) - len(outputs))
    return {
        "output": outputs[-1],
        "outputs": outputs,
        "status": status,
        "error": error,
        "usage": usage,
        "elapsed_s": round(elapsed, 6),
    }


def _error(result: Any) -> str | None:
    return None if result.status == "ok" else failure_reason(result)


class Progress:
    """A tqdm bar on a terminal (items, rate, ETA, failures), like `moa eval`'s; elsewhere a line every 10%."""

    def __init__(self, total: int, stream: TextIO, *, quiet: bool):
        self.total, self.done, self.failed, self.stream, self.quiet = total, 0, 0, stream, quiet
        self.tty = stream.isatty()
        self._next_line = 0
        self._bar: Any = None
        if self.tty and not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=stream, unit="item", desc="moa run", dynamic_ncols=True, leave=True)

    def step(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        if self.quiet:
            return
        if self._bar is not None:
            if self.failed:
                self._bar.set_postfix(failed=self.failed, refresh=False)
            self._bar.update(1)
            if self.done == self.total:
                self._bar.close()
            return
        if self.done * 10 >= self._next_line * self.total or self.done == self.total:
            failed = f", {self.failed} failed" if self.failed else ""
            self.stream.write(f"{self.done}/{self.total} done{failed}\n")
            self._next_line = self.done * 10 // self.total + 1
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _batch(pipe: Any, args: argparse.Namespace) -> int:
    if args.json or args.dry_run:
        return _usage("--json and --dry-run take a single query, not --input")
    from ..errors import ConfigError
    from ..evaluation.data import read_jsonl_records, read_jsonl_stream
    from ..evaluation.exact import compile_extract, require_answers

    # Every line checked before anything runs (ConfigError names file:line: exit 2).
    if args.input == "-":
        records = read_jsonl_stream(sys.stdin.buffer, name="<stdin>", dataset="stdin", limit=args.limit)
    else:
        records = read_jsonl_records(args.input, limit=args.limit)
    pattern = None
    if args.score == "exact":
        try:
            pattern = compile_extract(args.extract)
            require_answers([item for _, item in records])
        except ConfigError as exc:
            return _usage(str(exc))
    output = _open(args.output, "w", "--output") if args.output else _Sink(sys.stdout, "stdout")
    if isinstance(output, int):
        return output
    trace = _open(args.trace, "a", "--trace") if args.trace else None
    try:
        if isinstance(trace, int):
            return trace
        rows = asyncio.run(_abatch(pipe, records, args, trace, _RowWriter(output), pattern))
    finally:
        for sink in (output, trace):
            if isinstance(sink, _Sink):
                sink.close()
    unwritten = _unwritten([output, trace])
    failed = sum(row["status"] != "ok" for row in rows)
    if not args.quiet:
        usage = {
            k: sum(row["usage"][k] for row in rows)
            for k in ("calls", "cache_hits", "prompt_tokens", "completion_tokens")
        }
        print(f"moa: {totals_line(f'{len(rows) - failed}/{len(rows)} ok', usage, None)}", file=sys.stderr)
    if pattern is not None:
        right = sum(1 for row in rows if row["correct"])
        print(f"moa: accuracy {right / len(rows):.3f} ({right}/{len(rows)} correct, exact match)", file=sys.stderr)
    return unwritten or (EXIT_OK if not failed else EXIT_RUN_FAILED)


class _RowWriter:
    """Output rows in input order, each written (and flushed) as soon as every row before it is done:
    a batch that is killed or interrupted leaves a valid prefix of its output, not nothing."""

    def __init__(self, out: _Sink):
        self.write, self.written = out, 0
        self.rows: dict[int, dict[str, Any]] = {}

    def done(self, index: int, row: dict[str, Any]) -> None:
        self.rows[index] = row
        while self.written in self.rows:
            self.write(json.dumps(self.rows.pop(self.written), ensure_ascii=False, allow_nan=False) + "\n")
            self.written += 1


async def _abatch(
    pipe: Any,
    records: list[tuple[dict, Any]],
    args: argparse.Namespace,
    trace: _Sink | None,
    rows_out: _RowWriter,
    pattern: Any = None,
) -> list[dict[str, Any]]:
    from ..evaluation.exact import exact_match
    from ..runtime.scheduler import Session, gather_or_cancel

    progress = Progress(len(records), sys.stderr, quiet=args.quiet)
    writer = TraceWriter(trace) if trace is not None else None
    try:
        async with Session(pipe, **_options(args), **_verbose(args)) as session:

            async def one(i: int, record: dict, item: Any) -> dict[str, Any]:
                on_event = (lambda e: writer.write(e, item=i)) if writer is not None else None
                row = await run_item(session, item, on_event)
                if "instruction" in record or "query" in record:
                    del row["outputs"]  # only `turns` items list an answer per turn
                progress.step(row["status"] == "ok")
                row = {**record, **row, "generator": pipe.name}
                if pattern is not None:
                    correct, extracted = exact_match(row["output"], item.answer, pattern)
                    row.update(extracted=extracted, correct=correct)
                rows_out.done(i, row)
                return row

            # A bug or Ctrl-C in one item stops the others' calls instead of leaving them running.
            return await gather_or_cancel((one(i, rec, item) for i, (rec, item) in enumerate(records)), step=8)
    finally:
        progress.close()
        if writer is not None:
            writer.close()
