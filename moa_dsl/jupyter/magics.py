"""`%%moa` and `%moa`: write a topology in a cell, see its graph, run it with a live panel.

    %load_ext moa_dsl
    %%moa [--as NAME]                        validate, show the graph, bind the Pipeline (moa_pipeline)
    %%moa -q QUERY [-o VAR] [run options]    ... and run it; the RunResult goes to VAR (_moa)
    %moa run NAME -q QUERY [run options]     run a Pipeline bound earlier

The magic's line is split into arguments first and each argument is then expanded from the user's
namespace (`{expr}`, `$name`), so `-q {question}` passes a question with spaces as one argument.
The cell body is never expanded: `{x}` in a prompt is text.

Runs happen on a fresh event loop in a worker thread (the kernel's own loop is already running, so
`asyncio.run` cannot be used). Events come back through a queue and the kernel's main thread folds
them into the panel, so every widget update is made from the thread that owns the widgets, and a
KeyboardInterrupt (the kernel's interrupt button) lands in that loop and cancels the run.

Errors (a syntax or validation error, a missing API key, a failed run) are raised as `MoaError`s,
whose `_render_traceback_` makes IPython print the diagnostic instead of a traceback; raising (rather
than printing) marks the cell as failed, so "Run all" stops there.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import queue
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from IPython.utils.text import DollarFormatter

from ..errors import MoaError, RunFailed, render_diagnostics
from ..language.export import topology_text
from ..runtime import arun, failure_reason, format_plan, loads, plan, run_sync
from .panel import RunPanel

if TYPE_CHECKING:  # pragma: no cover
    from ..runtime.pipeline import Pipeline
    from ..runtime.result import RunResult

__all__ = [
    "CELL_FILENAME",
    "DEFAULT_PIPELINE_VAR",
    "DEFAULT_RESULT_VAR",
    "load_cell",
    "load_ipython_extension",
    "MoaMagics",
    "run_with_panel",
    "RunInterrupted",
    "show_answer",
    "show_pipeline",
    "show_plan",
    "split_and_expand",
]

DEFAULT_PIPELINE_VAR = "moa_pipeline"
DEFAULT_RESULT_VAR = "_moa"
CELL_FILENAME = "<cell>"
_TICK_S = 0.25  # how often running rows' elapsed time refreshes while no event arrives
_FOLD_S = 0.05  # how often the kernel's thread folds the run's events into the panel
_NO_FRONTEND_PANEL = None  # None: widgets when a Jupyter frontend is there, text otherwise


class RunInterrupted(MoaError):
    """The user interrupted the kernel during a run; completed calls stay in the cache."""


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(MoaMagics)
    _use_notebook_byte_bars()


def _use_notebook_byte_bars() -> None:
    """A local model pulled on a run's first use shows one tqdm.auto bar (an ipywidgets bar in a
    notebook) with bytes, rate and ETA, instead of a line per part on stderr."""
    from ..providers.local import registry

    registry.use_byte_progress(_NotebookByteBars)


class _NotebookByteBars:
    """`on_bytes(model, done, total)` for registry.pull: one tqdm.auto bar per model."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, model: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        bar = self.bars.get(model)
        if bar is None:
            bar = self.bars[model] = tqdm(
                total=total, desc=f"pulling {model}", unit="B", unit_scale=True, unit_divisor=1024
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


# -- the arguments -------------------------------------------------------------------------------


def _run_options(func: Callable) -> Callable:
    """The options shared by `%%moa -q` and `%moa run` (README, "Notebook")."""
    options = [
        argument("-q", "--query", default=None, help="run the topology on this query"),
        argument(
            "-o",
            "--out",
            default=DEFAULT_RESULT_VAR,
            metavar="VAR",
            help=f"bind the RunResult to VAR (default {DEFAULT_RESULT_VAR})",
        ),
        argument("--no-cache", action="store_true", help="neither read nor write the response cache"),
        argument("--refresh", action="store_true", help="call again and overwrite cached responses"),
        argument("--concurrency", type=int, default=None, metavar="N", help="bound on calls in flight"),
        argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="K=V",
            help="a parameter for every node (K=V) or one node (NODE.K=V); repeatable",
        ),
        argument("--dry-run", action="store_true", help="print the plan and call nothing"),
        argument("--cache-dir", default=None, metavar="DIR", help="the response cache's directory"),
    ]
    for deco in reversed(options):
        func = deco(func)
    return func


def _expand(token: str, ns: dict[str, Any]) -> str:
    """IPython's `{expr}` / `$name` expansion of one argument; left as it is if it cannot expand."""
    try:
        return DollarFormatter().vformat(token, args=[], kwargs=ns)
    except Exception:  # IPython's own var_expand behaves the same way
        return token


def split_and_expand(line: str, ns: dict[str, Any]) -> list[str]:
    """Split like a shell, then expand each argument; a single-quoted argument is not expanded."""
    lexer = shlex.shlex(line, posix=False)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        tokens = list(lexer)
    except ValueError as exc:  # an unterminated quote
        raise UsageError(f"%moa: {exc}") from None
    out = []
    for tok in tokens:
        if len(tok) >= 2 and tok[0] == tok[-1] == "'":
            out.append(tok[1:-1])
        elif len(tok) >= 2 and tok[0] == tok[-1] == '"':
            out.append(_expand(tok[1:-1], ns))
        else:
            out.append(_expand(tok, ns))
    return out


# -- the magics ------------------------------------------------------------------------------------


@magics_class
class MoaMagics(Magics):
    @no_var_expand  # expanded per argument in split_and_expand instead
    @magic_arguments()
    @argument(
        "--as",
        dest="name",
        default=DEFAULT_PIPELINE_VAR,
        metavar="NAME",
        help=f"bind the Pipeline to NAME (default {DEFAULT_PIPELINE_VAR})",
    )
    @_run_options
    @line_cell_magic
    def moa(self, line: str, cell: str | None = None) -> None:
        """Define a Mixture-of-Agents topology in a cell and, with -q, run it.

        As a line magic: `%moa run NAME -q QUERY [options]` runs a Pipeline bound earlier.
        """
        assert self.shell is not None  # a Magics registered on a shell always has it
        tokens = split_and_expand(line, self.shell.user_ns)
        if cell is None:
            return self._line(tokens)
        args = self.moa.parser.parse_args(tokens)
        pipe = load_cell(cell, name=args.name)
        self.shell.user_ns[args.name] = pipe
        show_pipeline(pipe)
        if args.query is not None or args.dry_run:
            self._run(pipe, args)
        return None

    def _line(self, tokens: list[str]) -> None:
        if not tokens or tokens[0] != "run":
            raise UsageError("usage: %moa run NAME -q QUERY [options]  (or %%moa as a cell magic)")
        args = self.moa_run.parser.parse_args(tokens[1:])
        assert self.shell is not None  # a Magics registered on a shell always has it
        pipe = self.shell.user_ns.get(args.pipeline)
        if pipe is None:
            raise UsageError(f"%moa run: no pipeline named {args.pipeline!r}; bind one with %%moa --as NAME")
        if not hasattr(pipe, "graph") or not hasattr(pipe, "arun"):
            raise UsageError(f"%moa run: {args.pipeline!r} is a {type(pipe).__name__}, not a moa_dsl Pipeline")
        self._run(pipe, args)

    @magic_arguments(name="moa run")
    @argument("pipeline", metavar="NAME", help="a Pipeline bound by %%moa --as NAME or moa_dsl.load")
    @_run_options
    def moa_run(self, *_: Any) -> None:  # pragma: no cover - only its parser is used
        """%moa run NAME -q QUERY [options]"""

    def _run(self, pipe: "Pipeline", args: Any) -> None:
        if args.query is None:
            raise UsageError("%moa: -q QUERY is needed to run (or to plan with --dry-run)")
        if args.concurrency is not None and args.concurrency < 1:
            raise UsageError(f"%moa: --concurrency must be at least 1, not {args.concurrency}")
        if args.sets:
            pipe = pipe.with_overrides(args.sets)
        options = {"cache": not args.no_cache, "refresh": args.refresh, "cache_dir": args.cache_dir}
        if args.dry_run:
            show_plan(pipe, args.query, cache=options["cache"], cache_dir=args.cache_dir)
            return
        if args.concurrency is not None:
            options["concurrency"] = args.concurrency
        panel = RunPanel.for_pipeline(pipe, widgets=_NO_FRONTEND_PANEL)
        panel.show()
        result = run_with_panel(pipe, args.query, panel=panel, **options)
        assert self.shell is not None  # a Magics registered on a shell always has it
        self.shell.user_ns[args.out] = result
        if not panel.shows_answer:  # the widget panel has rendered it in place already
            show_answer(result)
        if result.status != "ok":
            raise RunFailed(_failure_message(result, args.out), result)


# -- loading and showing ----------------------------------------------------------------------------


def load_cell(cell: str, *, name: str | None = None) -> "Pipeline":
    """Parse and validate the cell body. The leading newline makes diagnostics' line numbers those
    of the cell, whose first line is the `%%moa` line. The pipeline is named after the variable it
    is bound to, as a file's is after its stem (reports such as `moa_dsl.evaluate` use the name)."""
    pipe = loads("\n" + cell, filename=CELL_FILENAME)
    if pipe.warnings:
        _print_warnings(pipe)
    return dataclasses.replace(pipe, name=name) if name else pipe


def _print_warnings(pipe: "Pipeline") -> None:
    print(render_diagnostics(list(pipe.warnings), pipe.sources), file=sys.stderr)


def show_pipeline(pipe: "Pipeline") -> None:
    display({"text/html": pipe._repr_html_(), "text/plain": topology_text(pipe.graph, name=pipe.name)}, raw=True)


def show_answer(result: "RunResult") -> None:
    if result.output:
        display({"text/markdown": result.output, "text/plain": ""}, raw=True)


def _failure_message(result: "RunResult", var: str) -> str:
    why = failure_reason(result)
    return f"run failed: the output node {result.output_node!r} failed: {why}\n(the RunResult is in {var})"


def show_plan(pipe: "Pipeline", query: Any, *, cache: bool, cache_dir: Any) -> None:
    # On a thread without a running loop: plan() closes its provider pool with asyncio.run.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-plan") as pool:
        rows = pool.submit(plan, pipe, query, cache=cache, cache_dir=cache_dir).result()
    head = "<tr><th>node</th><th>role</th><th>model</th><th>inputs</th><th>calls</th><th>cache</th></tr>"
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(c)}</td>"
            for c in (
                r.node,
                r.role,
                f"{r.provider}:{r.model}",
                ", ".join(r.inputs) or "(query)",
                "?" if r.calls is None else str(r.calls),
                r.cache,
            )
        )
        + "</tr>"
        for r in rows
    )
    text = format_plan(rows)
    summary = html.escape(text.splitlines()[-1])
    display(
        {
            "text/plain": text,
            "text/html": f"<table><thead>{head}</thead><tbody>{body}</tbody></table><div>{summary}</div>",
        },
        raw=True,
    )


# -- running ----------------------------------------------------------------------------------------


def run_with_panel(
    pipe: "Pipeline",
    query: Any,
    *,
    panel: RunPanel | None = None,
    widgets: bool | None = _NO_FRONTEND_PANEL,
    **options: Any,
) -> "RunResult":
    """Run on a worker thread's loop (runtime.bridge); fold its events into `panel` on this thread
    until it ends, so every widget update comes from the thread that owns the widgets.

    KeyboardInterrupt cancels the run (calls in flight are abandoned, completed ones are already
    cached) and is reported as RunInterrupted once the worker has really stopped.
    """
    if panel is None:
        panel = RunPanel.for_pipeline(pipe, widgets=widgets)
        panel.show()
    events: queue.SimpleQueue = queue.SimpleQueue()
    last_tick = [time.monotonic()]

    def fold() -> None:
        batch = _take_all(events)
        if batch:
            panel.handle_many(batch)
        elif time.monotonic() - last_tick[0] >= _TICK_S:
            panel.tick()
        else:
            return
        last_tick[0] = time.monotonic()

    try:
        result = run_sync(
            functools.partial(arun, pipe, query, on_event=events.put, **options), on_idle=fold, tick=_FOLD_S
        )
    except KeyboardInterrupt:
        _drain(events, panel)
        panel.interrupt()
        panel.close()
        done = sum(r.state in ("done", "cached") for r in panel.state.rows.values())
        raise RunInterrupted(
            f"interrupted: the calls in flight were cancelled; {done} completed "
            "node(s) are cached, so running the cell again resumes from there"
        ) from None
    except BaseException:  # a missing key, a bad query, a bug: no run_finished event will come
        _drain(events, panel)
        if panel.state.status == "waiting":
            panel.discard()
        else:
            panel.state.status = "error"
            panel.close()
        raise
    _drain(events, panel)
    panel.close(answer=result.output)
    return result


def _drain(events: queue.SimpleQueue, panel: RunPanel) -> None:
    batch = _take_all(events)
    if batch:
        panel.handle_many(batch)


def _take_all(events: queue.SimpleQueue) -> list:
    out = []
    while True:
        try:
            out.append(events.get_nowait())
        except queue.Empty:
            return out
