"""`moa eval` / `moa_dsl.evaluate`: compare topologies on quality, cost and latency.

Every topology answers every item of a dataset; an LLM judge compares each topology's answer with
the baseline's (MT-Bench's pairwise judge, each pair in both orders); the report puts the win rate
beside calls, tokens, cost and latency. Everything goes through the runner's `Session`s, which
share one global bound on calls in flight and one response cache: an interrupted evaluation resumes
where it stopped and a rerun sends nothing.

Scoring, per item and topology (FastChat's pairwise rule): the pair is judged with the baseline
shown first and again with it shown second. When both verdicts agree, that is the result (win 1,
tie 0.5, loss 0); when they disagree (a split, position bias) the item counts 0.5. A verdict with
no `[[A]]`/`[[B]]`/`[[C]]`, or a judge call that fails, counts as a tie and is counted in the
summary (`ties_unparseable`, `judge_errors`). An item whose run fails is never dropped: it is listed
in `failed_items`, a failed answer loses to a real one (0, or 1 when the baseline failed) without a
judge call, and two failed answers tie.

Latency is a topology's critical path per item: each node's call duration plus the slowest of its
inputs, so it does not depend on how many other items were in flight. A cached call's duration is
the one measured when it was made, kept in a small ledger beside the response cache under the same
key (`CACHE_DIR/eval-latency`); without one the item's latency is unknown and left out of the mean.

With `score="exact"` there is no judge: each topology's answer is scored against the item's `answer`
field (`exact.exact_match`), and the report gives each topology's accuracy instead of a win rate.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import IO, Any, Awaitable, Callable, Iterable, Mapping, Sequence

import networkx as nx

from ..config import DEFAULT_CONCURRENCY
from ..config import cache_dir as default_cache_dir
from ..errors import ConfigError
from ..runtime import Pipeline, ResponseCache, Session, check_concurrency, gather_or_cancel, load, run_sync
from .data import Item, read_items
from .exact import SCORES, compile_extract, exact_match, require_answers
from .judge import (
    DEFAULT_JUDGE,
    DEFAULT_JUDGE_MAX_TOKENS,
    JudgeModel,
    judge_pipeline,
    judge_prompt,
    judgment_score,
    pair_score,
    parse_judge,
    parse_verdict,
    unjudged_score,
)
from .latency import ItemRun, LatencyLedger, run_item
from .progress import Progress
from .report import EvalReport, TopologyReport

__all__ = ["aevaluate", "check_judge", "DEFAULT_OUT", "Evaluation", "evaluate", "run_evaluation"]

DEFAULT_OUT = "moa-eval"


# --- the evaluation -------------------------------------------------------------------------------


def _pipelines(topologies: Sequence[str | os.PathLike | Pipeline]) -> list[Pipeline]:
    pipes = [t if isinstance(t, Pipeline) else load(t) for t in topologies]
    if not pipes:
        raise ConfigError("no topologies to evaluate")
    return pipes


def _names(pipes: Sequence[Pipeline]) -> list[str]:
    names = [p.name or f"topology{i}" for i, p in enumerate(pipes, 1)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"two topologies are named {', '.join(dupes)} (a topology's name is its file's "
            "stem): rename one of the files"
        )
    return names


async def aevaluate(
    topologies: Sequence[str | os.PathLike | Pipeline],
    data: str | os.PathLike | Iterable[Mapping],
    *,
    limit: int | None = None,
    judge: str = DEFAULT_JUDGE,
    baseline: str | None = None,
    out: str | os.PathLike | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    judge_max_tokens: int = DEFAULT_JUDGE_MAX_TOKENS,
    progress: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
    transport: Any = None,
    verbose: bool = False,
    score: str = "judge",
    extract: str | None = None,
) -> EvalReport:
    """Run, judge (or, with `score="exact"`, compare with each item's `answer` through `extract`),
    report (see the module docstring). Raises ConfigError/MoaError before any call for bad input; a
    failing item or judge call is reported, never raised."""
    if score not in SCORES:
        raise ConfigError(f"score must be one of {', '.join(SCORES)}, not {score!r}")
    if extract is not None and score != "exact":
        raise ConfigError("extract goes with score='exact' (--extract with --score exact)")
    pipes = _pipelines(topologies)
    names = _names(pipes)
    base = names[0] if baseline is None else baseline
    if base not in names:
        raise ConfigError(f"--baseline {base}: not one of the topologies ({', '.join(names)})")
    items = read_items(data, limit=limit)
    judge_model: JudgeModel | None = None
    judge_pipe: Pipeline | None = None
    pattern: re.Pattern[str] | None = None
    if score == "exact":
        pattern = compile_extract(extract)
        require_answers(items)
    else:
        judge_model, judge_pipe = check_judge(judge, pipes, judge_max_tokens)

    async def plan(evaluation: Evaluation) -> None:
        await evaluation.run_round(names, len(items))

    report = await run_evaluation(
        dict(zip(names, pipes, strict=False)),
        items,
        base,
        judge_model,
        judge_pipe,
        plan,
        concurrency=concurrency,
        cache=cache,
        cache_dir=cache_dir,
        refresh=refresh,
        progress=Progress(items=len(items), units=0, stream=progress),
        environ=environ,
        transport=transport,
        verbose=verbose,
        exact=pattern,
    )
    if out is not None:
        report.write(out)
    return report


def check_judge(judge: str, pipes: Sequence[Pipeline], judge_max_tokens: int) -> tuple[JudgeModel, Pipeline]:
    """The judge's model and its one-node pipeline; ConfigError for a bad reference or budget."""
    judge_model, provider_cfg = parse_judge(judge, pipes)
    if isinstance(judge_max_tokens, bool) or not isinstance(judge_max_tokens, int) or judge_max_tokens < 1:
        raise ConfigError(f"judge_max_tokens must be an integer >= 1, not {judge_max_tokens!r}")
    return judge_model, judge_pipeline(judge_model, provider_cfg, max_tokens=judge_max_tokens)


async def run_evaluation(
    pipes: Mapping[str, Pipeline],
    items: list[Item],
    baseline: str,
    judge_model: JudgeModel | None,
    judge_pipe: Pipeline | None,
    plan: Callable[["Evaluation"], Awaitable[None]],
    *,
    concurrency: int,
    cache: bool,
    cache_dir: str | os.PathLike | None,
    refresh: bool,
    progress: Progress,
    environ: Mapping[str, str] | None,
    transport: Any,
    verbose: bool,
    exact: re.Pattern[str] | None = None,
) -> EvalReport:
    """Open one session per topology and one for the judge, all under one bound and one cache;
    `plan` decides which topologies answer which items (`Evaluation.run_round`); the report has
    every topology with the items it answered. With `exact` (a pattern; then no judge), each answer
    is scored against its item's `answer` instead."""
    limiter = asyncio.Semaphore(check_concurrency(concurrency))
    store = ledger = None
    sessions: list[Any] = []
    try:
        if cache:
            store = ResponseCache(default_cache_dir(cache_dir))
        ledger = LatencyLedger(default_cache_dir(cache_dir) if cache else None)
        for pipe in [*pipes.values(), *([judge_pipe] if judge_pipe is not None else [])]:
            # One bound for everything in flight, across topologies and the judge.
            sessions.append(
                Session(
                    pipe,
                    concurrency=concurrency,
                    cache=cache,
                    refresh=refresh,
                    environ=environ,
                    transport=transport,
                    response_cache=store,
                    verbose=verbose,
                    limiter=limiter,
                )
            )
        evaluation = Evaluation(
            dict(zip(pipes, sessions, strict=False)),
            sessions[-1] if judge_pipe is not None else None,
            items,
            baseline,
            ledger,
            progress,
            concurrency,
            exact=exact,
        )
        try:
            await plan(evaluation)
        finally:
            progress.close()
        return evaluation.report(judge_model)
    finally:
        for session in sessions:
            await session.aclose()
        if store is not None:
            store.close()
        if ledger is not None:
            ledger.close()


class Evaluation:
    """Topologies answering items and a judge comparing them with the baseline's answers, round by
    round: `run_round(names, upto)` has `names` (and the baseline) answer the first `upto` items,
    skipping what an earlier round already did."""

    def __init__(
        self,
        sessions: dict[str, Any],
        judge: Any,
        items: list[Item],
        baseline: str,
        ledger: LatencyLedger,
        progress: Progress,
        concurrency: int,
        *,
        exact: re.Pattern[str] | None = None,
    ):
        self.sessions, self.judge, self.items, self.baseline = sessions, judge, items, baseline
        self.exact = exact
        self.ledger, self.progress = ledger, progress
        # Bounds coroutines, not calls (the limiter does that): enough items in flight to keep every
        # slot busy, few enough that an interrupted evaluation has finished the items it started.
        self.item_slots = asyncio.Semaphore(max(2, concurrency))
        n = len(items)
        self.runs: dict[str, list[ItemRun | None]] = {name: [None] * n for name in sessions}
        # Judged scores against the baseline; with `exact` nothing is judged.
        judged = [] if exact is not None else [name for name in sessions if name != baseline]
        self.scores: dict[str, list[float | None]] = {name: [None] * n for name in judged}
        self.reports = {
            name: TopologyReport(
                name,
                [],
                None if name not in judged else [],
                priced=_priced(s.graph, s.order),
                correct=[] if exact is not None else None,
                extracted=[] if exact is not None else None,
            )
            for name, s in sessions.items()
        }
        self.listeners = {name: progress.listener(s.graph) for name, s in sessions.items()}
        self.judge_listener = progress.listener(judge.graph) if judge is not None else None
        self.judge_usage: dict[str, float] = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._judging: dict[str, asyncio.Future] = {}

    def answered(self, name: str) -> int:
        """How many items (a prefix of the dataset) `name` has answered and had judged."""
        runs, scores = self.runs[name], self.scores.get(name)
        k = 0
        while k < len(runs) and runs[k] is not None and (scores is None or scores[k] is not None):
            k += 1
        return k

    def win_rate(self, name: str) -> float:
        """The mean score over the items judged so far (0.5 for the baseline or none)."""
        done = [s for s in self.scores.get(name, []) if s is not None]
        return sum(done) / len(done) if done else 0.5

    async def run_round(self, names: Sequence[str], upto: int) -> None:
        order = [self.baseline] + [n for n in names if n != self.baseline]
        todo, units = [], 0
        for i in range(upto):
            runs = sum(1 for n in order if self.runs[n][i] is None)
            judged = sum(2 for n in order if n in self.scores and self.scores[n][i] is None)
            if runs or judged:
                todo.append(i)
                units += runs + judged
        self.progress.add(units=units)
        await gather_or_cancel(self._item(i, order) for i in todo)

    def report(self, judge_model: JudgeModel | None) -> EvalReport:
        for name, report in self.reports.items():
            k = self.answered(name)
            report.runs = [r for r in self.runs[name][:k] if r is not None]
            if report.scores is not None:
                report.scores = [s for s in self.scores[name][:k] if s is not None]
            if self.exact is not None:
                marks = [
                    exact_match(r.output, item.answer or "", self.exact)
                    for r, item in zip(report.runs, self.items, strict=False)
                ]
                report.correct = [ok for ok, _ in marks]
                report.extracted = [got for _, got in marks]
        if judge_model is None:
            return EvalReport(self.baseline, None, self.items, list(self.reports.values()), {}, score="exact")
        usage = dict(self.judge_usage)
        if judge_model.price is not None:
            usage["cost_usd"] = round(
                (usage["prompt_tokens"] * judge_model.price[0] + usage["completion_tokens"] * judge_model.price[1])
                / 1e6,
                8,
            )
        return EvalReport(self.baseline, judge_model, self.items, list(self.reports.values()), usage)

    async def _item(self, i: int, order: list[str]) -> None:
        async with self.item_slots:
            item = self.items[i]
            # One topology after another within an item (items still run side by side): two
            # topologies often make the same call (a lone model that is also a proposer). Made at
            # once, both would miss the cache and sample twice, and a rerun, served one stored answer
            # for both, would report something else. In turn, the second is served the first's answer.
            fresh = []
            for name in order:
                if self.runs[name][i] is None:
                    run = self.runs[name][i] = await self._run(name, item)
                    fresh.append(name)
                    if run.status != "ok":
                        self._report_failure(name, item, run)
            base = self.runs[self.baseline][i]
            assert base is not None
            pending = [n for n in order if n in self.scores and self.scores[n][i] is None]
            await asyncio.gather(*(self._compare(name, i, base) for name in pending))
            for name in dict.fromkeys([*fresh, *pending]):
                self.progress.variant_item(name)
            self.progress.item()

    async def _run(self, name: str, item: Item) -> ItemRun:
        try:
            return await run_item(self.sessions[name], item, ledger=self.ledger, on_event=self.listeners[name])
        finally:
            self.progress.unit()

    def _report_failure(self, name: str, item: Item, run: ItemRun) -> None:
        self.progress.note(f"{self.progress.label}: {name} failed on item {item.index}: {run.error}")

    async def _compare(self, name: str, i: int, base: ItemRun) -> None:
        run, report, scores = self.runs[name][i], self.reports[name], self.scores[name]
        assert run is not None
        if run.output is None or base.output is None:
            scores[i] = unjudged_score(candidate_ok=run.status == "ok", baseline_ok=base.status == "ok")
            self.progress.unit()
            self.progress.unit()
            return
        question = self.items[i].instruction
        first, second = await asyncio.gather(
            self._judge(report, judge_prompt(question, base.output, run.output)),
            self._judge(report, judge_prompt(question, run.output, base.output)),
        )
        scores[i] = pair_score(
            judgment_score(first, candidate_first=False), judgment_score(second, candidate_first=True)
        )

    async def _judge(self, report: TopologyReport, prompt: str) -> str | None:
        try:
            result = await self._judged(prompt)
        finally:
            self.progress.unit()
        if result.status != "ok":
            report.judge_errors += 1
            return None
        verdict = parse_verdict(result.output)
        if verdict is None:
            report.ties_unparseable += 1
        return verdict

    def _judged(self, prompt: str) -> Any:
        """One judge call per distinct prompt (two candidates can give the same answer): the same
        reason as running an item's topologies in turn, for the judge's calls made at once."""
        assert self.judge is not None
        task = self._judging.get(prompt)
        if task is None:
            task = self._judging[prompt] = asyncio.ensure_future(self.judge.run(prompt, on_event=self._judge_event))
            task.add_done_callback(lambda _: self._judging.pop(prompt, None))
        return task

    def _judge_event(self, event: Any) -> None:
        if self.judge_listener is not None:
            self.judge_listener(event)
        if event.kind == "node_finished":
            usage = event.data.get("usage", {})
            self.judge_usage["calls" if event.data.get("status") == "ok" else "cache_hits"] += 1
            self.judge_usage["prompt_tokens"] += usage.get("prompt_tokens", 0)
            self.judge_usage["completion_tokens"] += usage.get("completion_tokens", 0)
        elif event.kind == "node_failed":
            self.judge_usage["calls"] += 1


def _priced(graph: nx.DiGraph, order: Sequence[str]) -> bool:
    """Every node that calls a model has a price (a vote calls none)."""
    return all(graph.nodes[n]["params"].get("price") is not None for n in order if graph.nodes[n]["role"] != "vote")


def evaluate(
    topologies: Sequence[str | os.PathLike | Pipeline], data: str | os.PathLike | Iterable[Mapping], **options: Any
) -> EvalReport:
    """Blocking `aevaluate`: in a script, or on a loop in a worker thread inside a running loop (Jupyter)."""
    return run_sync(lambda: aevaluate(topologies, data, **options))
