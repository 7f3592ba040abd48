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
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import IO, Any, Iterable, Mapping, Sequence

import networkx as nx

from ..config import DEFAULT_CONCURRENCY, builtin_providers, cache_dir as default_cache_dir
from ..errors import ConfigError
from ..runtime.pipeline import Pipeline
from ..runtime.scheduler import gather_or_cancel
from ..language.syntax import Span

DEFAULT_JUDGE = 'openai:"gpt-4o"'
DEFAULT_JUDGE_MAX_TOKENS = 512
DEFAULT_OUT = "moa-eval"

# --- the judge (modelled on MT-Bench's "pair-v2" prompt) -----------------------------------------

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. Choose the assistant that follows the user's "
    "instructions and answers the user's question better, considering the helpfulness, relevance, "
    "accuracy, depth, creativity and level of detail of the responses. Begin by comparing the two "
    "responses and give a short explanation. Avoid any position bias: the order in which the "
    "responses are presented must not influence your decision. Do not let the length of the "
    "responses or the names of the assistants influence you. Be as objective as possible. After your "
    "explanation, output your final verdict strictly in this format: \"[[A]]\" if assistant A is "
    "better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)
JUDGE_USER = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return JUDGE_USER.format(question=question, answer_a=answer_a, answer_b=answer_b)


def parse_verdict(text: str | None) -> str | None:
    """The last `[[A]]`/`[[B]]`/`[[C]]` in the text (judges often quote the format first), or None."""
    found = _VERDICT.findall(text or "")
    return found[-1].upper() if found else None


def judgment_score(verdict: str | None, *, candidate_first: bool) -> float:
    """The candidate's score from one verdict: 1 win, 0 loss, 0.5 tie or unparseable."""
    if verdict == "A":
        return 1.0 if candidate_first else 0.0
    if verdict == "B":
        return 0.0 if candidate_first else 1.0
    return 0.5


def pair_score(baseline_first: float, candidate_first: float) -> float:
    """Both orders agree: that score; a split verdict: 0.5."""
    return baseline_first if baseline_first == candidate_first else 0.5


def unjudged_score(*, candidate_ok: bool, baseline_ok: bool) -> float:
    """An item where a run failed has nothing to judge: a failed answer loses to a real one, two tie."""
    if candidate_ok == baseline_ok:
        return 0.5
    return 1.0 if candidate_ok else 0.0


def win_rate(scores: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n)); None where undefined."""
    n = len(scores)
    if n == 0:
        return None, None
    mean = sum(scores) / n
    if n < 2:
        return mean, None
    var = sum((s - mean) ** 2 for s in scores) / (n - 1)
    return mean, math.sqrt(var / n)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in 0-100."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --- the dataset --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    index: int                      # 0-based position in the dataset
    turns: tuple[str, ...]          # the user's messages, one run each (MT-Bench has two)
    dataset: str
    prefix: tuple[tuple[str, str], ...] = ()   # (role, content) before the turns: a `query` conversation

    @property
    def instruction(self) -> str:
        """What model_outputs.json shows and the judge reads as the question."""
        context = "".join(f"[{role}] {content}\n\n" for role, content in self.prefix)
        if len(self.turns) == 1:
            return context + self.turns[0]
        return context + "\n\n".join(f"Turn {k}: {t}" for k, t in enumerate(self.turns, 1))


def item_from_record(record: Any, *, index: int, dataset: str, where: str) -> Item:
    """One JSONL object, read as `moa run --input` reads it: `instruction`, else `query` (a string or
    a conversation), else MT-Bench's `turns` (a list of strings, run as one growing conversation)."""
    if not isinstance(record, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    ds = record.get("dataset") if isinstance(record.get("dataset"), str) else dataset
    if "instruction" in record:
        return Item(index, (_text(record["instruction"], "instruction", where),), ds)
    if "query" in record:
        query = record["query"]
        if isinstance(query, list):
            return _conversation_item(query, index=index, dataset=ds, where=where)
        return Item(index, (_text(query, "query", where),), ds)
    if "turns" in record:
        turns = record["turns"]
        if (not isinstance(turns, list) or not turns
                or not all(isinstance(t, str) and t.strip() for t in turns)):
            raise ConfigError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        return Item(index, tuple(turns), ds)
    raise ConfigError(f"{where}: no 'instruction', 'query' or 'turns' field")


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return value


def _conversation_item(query: list, *, index: int, dataset: str, where: str) -> Item:
    from ..runtime.messages import normalize_query

    try:
        conversation = normalize_query(query)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    prefix = tuple((m["role"], m["content"]) for m in conversation[:-1])
    return Item(index, (conversation[-1]["content"],), dataset, prefix)


def read_items(data: str | os.PathLike | Iterable[Mapping], *, limit: int | None = None) -> list[Item]:
    """A JSONL file (blank lines skipped) or an iterable of records; the first `limit` of them."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be an integer >= 1, not {limit!r}")
    if isinstance(data, (str, os.PathLike)):
        return _read_jsonl(Path(data), limit)
    items = []
    for i, record in enumerate(data):
        if limit is not None and len(items) >= limit:
            break
        items.append(item_from_record(record, index=i, dataset="custom", where=f"item {i}"))
    if not items:
        raise ConfigError("the dataset is empty")
    return items


def _read_jsonl(path: Path, limit: int | None) -> list[Item]:
    return [item for _, item in read_jsonl_records(path, limit=limit)]


def read_jsonl_records(path: str | os.PathLike, *, limit: int | None = None) -> list[tuple[dict, Item]]:
    """Every line of a JSONL file as (the object as written, its Item), each line checked as it is
    read: a bad line raises ConfigError naming `file:line` before anything runs."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    records: list[tuple[dict, Item]] = []
    for lineno, line in enumerate(lines, 1):
        if limit is not None and len(records) >= limit:
            break
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from exc
        records.append((record, item_from_record(record, index=len(records), dataset=path.stem, where=where)))
    if not records:
        raise ConfigError(f"{path}: no items")
    return records


# --- the judge's model --------------------------------------------------------------------------

_MODEL_REF = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*"((?:[^"\\]|\\.)*)"\s*$')
_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


@dataclass(frozen=True)
class JudgeModel:
    ref: str                        # as the user wrote it, for the report
    provider: str
    model: str
    price: tuple[float, float] | None = None


def parse_judge(ref: str, pipes: Sequence[Pipeline]) -> tuple[JudgeModel, Any]:
    """`PROVIDER:"ID"` or a model NAME declared in one of the topologies -> (JudgeModel, ProviderConfig).

    The provider is a built-in one or one declared in the topology files (the first file that
    declares it wins). Raises ConfigError with what would have been accepted.
    """
    declared: dict[str, Any] = {}
    for pipe in pipes:
        for name, cfg in pipe.graph.graph.get("providers", {}).items():
            declared.setdefault(name, cfg)
    providers = {**builtin_providers(), **declared}
    m = _MODEL_REF.match(ref)
    if m:
        provider = m.group(1)
        try:
            model = json.loads(f'"{m.group(2)}"')
        except json.JSONDecodeError as exc:  # a bad escape such as \q
            raise ConfigError(f"--judge {ref}: the model id is not a valid string ({exc.msg})") from None
        if not model:
            raise ConfigError(f"--judge {ref}: the model id is empty")
        if provider not in providers:
            raise ConfigError(f"--judge {ref}: unknown provider '{provider}'; known: {', '.join(sorted(providers))}")
        return JudgeModel(ref.strip(), provider, model, _declared_price(pipes, provider, model)), providers[provider]
    m = _NAME.match(ref)
    if m:
        for pipe in pipes:
            for _, attrs in pipe.graph.nodes(data=True):
                if attrs.get("model_name") == m.group(1):
                    price = attrs["params"].get("price")
                    judge = JudgeModel(ref.strip(), attrs["provider"], attrs["model"],
                                       tuple(price) if price else None)
                    return judge, pipe.graph.graph["providers"][attrs["provider"]]
        raise ConfigError(f"--judge {ref}: no model named '{m.group(1)}' in the topologies; "
                          'write PROVIDER:"MODEL-ID", e.g. openai:"gpt-4o" or local:"qwen2.5-coder-1.5b"')
    raise ConfigError(f'--judge {ref!r}: expected PROVIDER:"MODEL-ID" (e.g. openai:"gpt-4o") or a declared model name')


def _declared_price(pipes: Sequence[Pipeline], provider: str, model: str) -> tuple[float, float] | None:
    """A price the topologies give the same provider+model, so the judge's cost can be reported."""
    for pipe in pipes:
        for _, attrs in pipe.graph.nodes(data=True):
            if attrs["provider"] == provider and attrs["model"] == model and attrs["params"].get("price"):
                return tuple(attrs["params"]["price"])
    return None


def judge_pipeline(judge: JudgeModel, provider_cfg: Any, *, max_tokens: int) -> Pipeline:
    """A one-node graph (the attributes of docs/architecture.md) so judge calls take the runner's path:
    same providers, cache, global bound and events. Temperature 0: a verdict should be reproducible."""
    graph = nx.DiGraph(output="judge", providers={judge.provider: provider_cfg}, dead=frozenset())
    params = {"temperature": 0.0, "max_tokens": max_tokens, "cache": True, "timeout": provider_cfg.timeout,
              "retries": provider_cfg.retries, "system": JUDGE_SYSTEM}
    graph.add_node("judge", role="propose", provider=judge.provider, model=judge.model, model_name=None,
                   sample=None, layer=None, inputs=(), params=params, span=Span("<judge>", 1, 1, 1, 1))
    return Pipeline(graph=graph, name="judge")


# --- one topology on one item --------------------------------------------------------------------

@dataclass
class ItemRun:
    """One topology's answer to one item, with what it took (cached calls included: this is what
    the topology costs, not what this particular evaluation happened to spend)."""

    status: str                     # "ok" | "failed"
    output: str | None
    error: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0    # None: some node has no price
    latency_s: float | None = 0.0   # None: a cached call's duration is not known


class LatencyLedger:
    """Call durations by response-cache key, so a cached call keeps the latency it was measured with."""

    def __init__(self, directory: Path | None):
        self._db = None
        self._fresh: set[str] = set()       # keys measured by this evaluation
        if directory is not None:
            try:
                import diskcache

                self._db = diskcache.Cache(str(directory / "eval-latency"))
            except Exception:  # an unusable directory only costs us cached latencies
                self._db = None

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def get(self, key: str) -> float | None:
        return None if self._db is None else self._db.get(key)

    def measured(self, key: str, latency_s: float) -> None:
        """A call was just made. Its first measurement in an evaluation is kept (two topologies can
        make the same call), so a rerun served from the cache reports exactly what this one did."""
        if self._db is not None and key not in self._fresh:
            self._fresh.add(key)
            self._db.set(key, latency_s)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


async def run_item(session: Any, item: Item, *, ledger: LatencyLedger, on_event: Any = None) -> ItemRun:
    """Each turn in order, the conversation growing with the topology's own answers (MT-Bench)."""
    conversation = [{"role": role, "content": content} for role, content in item.prefix]
    run = ItemRun("ok", None)
    for turn in item.turns:
        conversation.append({"role": "user", "content": turn})
        result = await session.run(list(conversation), on_event=on_event)
        _account(run, session, conversation, result, ledger)
        if result.status != "ok":
            out = result.nodes.get(result.output_node)
            run.status, run.output = "failed", None
            run.error = f"{result.output_node}: {out.error if out is not None and out.error else 'failed'}"
            return run
        run.output = result.output
        conversation.append({"role": "assistant", "content": result.output})
    return run


def _account(run: ItemRun, session: Any, conversation: list[dict[str, str]], result: Any,
             ledger: LatencyLedger) -> None:
    graph = session.graph
    finish: dict[str, float | None] = {}
    for name in session.order:
        node = result.nodes[name]
        attrs = graph.nodes[name]
        # A node starts when its last input has finished, failed or been skipped.
        waits = [finish[i] for i in attrs["inputs"]]
        ready = None if None in waits else max(waits, default=0.0)
        if node.status == "skipped":
            finish[name] = ready
            continue
        run.calls += 1
        run.prompt_tokens += node.prompt_tokens
        run.completion_tokens += node.completion_tokens
        price = attrs["params"].get("price")
        if price is None or run.cost_usd is None:
            run.cost_usd = None
        else:
            run.cost_usd += (node.prompt_tokens * price[0] + node.completion_tokens * price[1]) / 1e6
        latency = _node_latency(session, conversation, result, name, node, ledger)
        finish[name] = None if latency is None or ready is None else ready + latency
    out = finish.get(result.output_node)
    run.latency_s = None if out is None or run.latency_s is None else run.latency_s + out


def _node_latency(session: Any, conversation: list[dict[str, str]], result: Any, name: str, node: Any,
                  ledger: LatencyLedger) -> float | None:
    if node.status == "failed":
        return node.latency_s or 0.0
    if not ledger.enabled:
        return node.latency_s if node.status == "ok" else None
    key = _cache_key(session, conversation, result, name)
    if node.status == "ok":
        ledger.measured(key, node.latency_s)
    return ledger.get(key)


def _cache_key(session: Any, conversation: list[dict[str, str]], result: Any, name: str) -> str | None:
    """The node's response-cache key, rebuilt the way the runner builds it."""
    from ..runtime.cache import call_key
    from ..config import request_params
    from ..runtime.messages import build_messages

    attrs = session.graph.nodes[name]
    params = attrs["params"]
    refs = None
    if attrs["role"] == "aggregate":
        refs = [result.nodes[i].text for i in attrs["inputs"] if result.nodes[i].succeeded]
    messages = build_messages(conversation, system=params.get("system"), refs=refs, prompt=params.get("prompt"))
    provider = session.providers[attrs["provider"]]
    return call_key(provider, attrs["model"], messages, request_params(params), attrs.get("sample"))


# --- the report ----------------------------------------------------------------------------------

SUMMARY_KEYS = ("name", "win_rate", "stderr", "n", "calls", "prompt_tokens", "completion_tokens",
                "cost_usd", "latency_mean_s", "latency_p95_s")


@dataclass
class TopologyReport:
    name: str
    runs: list[ItemRun]
    scores: list[float] | None = None          # None for the baseline
    ties_unparseable: int = 0
    judge_errors: int = 0
    priced: bool = True

    def row(self, items: Sequence[Item]) -> dict[str, Any]:
        rate, stderr = win_rate(self.scores) if self.scores is not None else (None, None)
        latencies = [r.latency_s for r in self.runs if r.status == "ok" and r.latency_s is not None]
        mean = sum(latencies) / len(latencies) if latencies else None
        cost = sum(r.cost_usd or 0.0 for r in self.runs) if self.priced else None
        return {
            "name": self.name, "win_rate": _r(rate), "stderr": _r(stderr), "n": len(self.runs),
            "calls": sum(r.calls for r in self.runs),
            "prompt_tokens": sum(r.prompt_tokens for r in self.runs),
            "completion_tokens": sum(r.completion_tokens for r in self.runs),
            "cost_usd": _r(cost, 8), "latency_mean_s": _r(mean), "latency_p95_s": _r(percentile(latencies, 95)),
            "ties_unparseable": self.ties_unparseable, "judge_errors": self.judge_errors,
            "failed_items": [{"index": items[i].index, "error": r.error}
                             for i, r in enumerate(self.runs) if r.status != "ok"],
        }


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


@dataclass
class EvalReport:
    """What `moa_dsl.evaluate` returns: `summary` is summary.json; it displays itself in a notebook."""

    baseline: str
    judge: JudgeModel
    items: list[Item]
    topologies: list[TopologyReport]
    judge_usage: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    @property
    def summary(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "judge": self.judge.ref,
                "topologies": [t.row(self.items) for t in self.topologies],
                "items": len(self.items), "judge_usage": self.judge_usage}

    def model_outputs(self, name: str) -> list[dict[str, str]]:
        """AlpacaEval's format; a failed item's output is "" (it is listed in summary.json)."""
        topo = next(t for t in self.topologies if t.name == name)
        return [{"instruction": item.instruction, "output": run.output or "", "generator": name,
                 "dataset": item.dataset} for item, run in zip(self.items, topo.runs)]

    def to_markdown(self) -> str:
        head = ("| topology | win rate | ± s.e. | n | calls | prompt tok | completion tok | cost USD "
                "| mean latency s | p95 latency s | failed |")
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for row in self.summary["topologies"]:
            rate = "baseline" if row["win_rate"] is None else f"{row['win_rate']:.3f}"
            lines.append("| " + " | ".join([
                row["name"], rate, _fmt(row["stderr"], 3), str(row["n"]), str(row["calls"]),
                str(row["prompt_tokens"]), str(row["completion_tokens"]), _fmt(row["cost_usd"], 6),
                _fmt(row["latency_mean_s"], 2), _fmt(row["latency_p95_s"], 2), str(len(row["failed_items"])),
            ]) + " |")
        notes = [f"judge: `{self.judge.ref}`, each pair judged in both orders; baseline: {self.baseline}; "
                 f"{len(self.items)} items"]
        unparsed = sum(t.ties_unparseable for t in self.topologies)
        errors = sum(t.judge_errors for t in self.topologies)
        if unparsed or errors:
            notes.append(f"{unparsed} unparseable verdicts and {errors} failed judge calls counted as ties")
        return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"

    def to_svg(self) -> str:
        from .plot import render_svg

        return render_svg(self.summary["topologies"],
                          title=f"win rate vs {self.baseline} (judge {self.judge.ref}, {len(self.items)} items)")

    def write(self, out: str | os.PathLike) -> Path:
        out = Path(out)
        for topo in self.topologies:
            (out / topo.name).mkdir(parents=True, exist_ok=True)
            _write(out / topo.name / "model_outputs.json",
                   json.dumps(self.model_outputs(topo.name), indent=2, ensure_ascii=False) + "\n")
        _write(out / "summary.json", json.dumps(self.summary, indent=2, ensure_ascii=False) + "\n")
        _write(out / "summary.md", self.to_markdown())
        _write(out / "summary.svg", self.to_svg())
        self.out = out
        return out

    def _repr_html_(self) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{escape(c.strip())}</td>" for c in line.strip("|").split("|"))
                       + "</tr>" for line in self.to_markdown().splitlines()[2:] if line.startswith("|"))
        head = "".join(f"<th>{escape(c.strip())}</th>" for c in self.to_markdown().splitlines()[0].strip("|").split("|"))
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
                f"<p>{escape(self.to_markdown().split(chr(10) * 2, 1)[1].strip())}</p>{self.to_svg()}")

    def __str__(self) -> str:
        return self.to_markdown()


def _fmt(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _write(path: Path, text: str) -> None:
    """Write beside, then rename: an interrupted write never leaves half a summary."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- progress -------------------------------------------------------------------------------------

class Progress:
    """One line on stderr: items done, calls, cache hits, tokens, ETA. Redrawn in a terminal,
    printed every few seconds otherwise (a log file should not get a line per event)."""

    def __init__(self, *, items: int, units: int, stream: IO[str] | None):
        self.items, self.units, self.stream = items, units, stream
        self.items_done = self.units_done = self.calls = self.hits = self.tokens = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def on_event(self, event: Any) -> None:
        if event.kind == "node_finished" and event.data.get("status") == "ok":
            self.calls += 1
            usage = event.data.get("usage", {})
            self.tokens += usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        elif event.kind == "node_failed":
            self.calls += 1
        elif event.kind == "cache_hit":
            self.hits += 1

    def unit(self) -> None:
        self.units_done += 1
        self.draw()

    def item(self) -> None:
        self.items_done += 1
        self.draw()

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        left = self.units - self.units_done
        eta = _duration(elapsed / self.units_done * left) if self.units_done and left else "—"
        return (f"eval: {self.items_done}/{self.items} items, {self.calls} calls, {self.hits} cache hits, "
                f"{self.tokens} tokens, {_duration(elapsed)} elapsed, ETA {eta}")

    def draw(self, *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if self._tty:
            self.stream.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
        elif final or now - self._last >= 5.0:
            self.stream.write(self.line() + "\n")
        else:
            return
        self._last = now
        self.stream.flush()


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --- the evaluation -------------------------------------------------------------------------------

def _pipelines(topologies: Sequence[str | os.PathLike | Pipeline]) -> list[Pipeline]:
    from ..language.loader import load

    pipes = [t if isinstance(t, Pipeline) else load(t) for t in topologies]
    if not pipes:
        raise ConfigError("no topologies to evaluate")
    return pipes


def _names(pipes: Sequence[Pipeline]) -> list[str]:
    names = [p.name or f"topology{i}" for i, p in enumerate(pipes, 1)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two topologies are named {', '.join(dupes)} (a topology's name is its file's "
                          "stem): rename one of the files")
    return names


async def aevaluate(topologies: Sequence[str | os.PathLike | Pipeline],
                    data: str | os.PathLike | Iterable[Mapping], *, limit: int | None = None,
                    judge: str = DEFAULT_JUDGE, baseline: str | None = None, out: str | os.PathLike | None = None,
                    concurrency: int = DEFAULT_CONCURRENCY, cache: bool = True,
                    cache_dir: str | os.PathLike | None = None, refresh: bool = False,
                    judge_max_tokens: int = DEFAULT_JUDGE_MAX_TOKENS, progress: IO[str] | None = None,
                    environ: Mapping[str, str] | None = None, transport: Any = None,
                    verbose: bool = False) -> EvalReport:
    """Run, judge, report (see the module docstring). Raises ConfigError/MoaError before any call
    for bad input; a failing item or judge call is reported, never raised."""
    from ..runtime.scheduler import Session, check_concurrency

    pipes = _pipelines(topologies)
    names = _names(pipes)
    base = names[0] if baseline is None else baseline
    if base not in names:
        raise ConfigError(f"--baseline {base}: not one of the topologies ({', '.join(names)})")
    items = read_items(data, limit=limit)
    judge_model, provider_cfg = parse_judge(judge, pipes)
    if isinstance(judge_max_tokens, bool) or not isinstance(judge_max_tokens, int) or judge_max_tokens < 1:
        raise ConfigError(f"judge_max_tokens must be an integer >= 1, not {judge_max_tokens!r}")
    judge_pipe = judge_pipeline(judge_model, provider_cfg, max_tokens=judge_max_tokens)
    limiter = asyncio.Semaphore(check_concurrency(concurrency))

    store = ledger = None
    sessions: list[Any] = []
    try:
        if cache:
            from ..runtime.cache import ResponseCache

            store = ResponseCache(default_cache_dir(cache_dir))
        ledger = LatencyLedger(default_cache_dir(cache_dir) if cache else None)
        for pipe in [*pipes, judge_pipe]:
            # One bound for everything in flight, across topologies and the judge.
            sessions.append(Session(pipe, concurrency=concurrency, cache=cache, refresh=refresh, environ=environ,
                                    transport=transport, response_cache=store, verbose=verbose, limiter=limiter))
        evaluation = _Evaluation(dict(zip(names, sessions)), sessions[-1], items, base, ledger,
                                 Progress(items=len(items), units=len(items) * (len(names) + 2 * (len(names) - 1)),
                                          stream=progress), concurrency)
        report = await evaluation.run(judge_model)
    finally:
        for session in sessions:
            await session.aclose()
        if store is not None:
            store.close()
        if ledger is not None:
            ledger.close()
    if out is not None:
        report.write(out)
    return report


class _Evaluation:
    def __init__(self, sessions: dict[str, Any], judge: Any, items: list[Item], baseline: str,
                 ledger: LatencyLedger, progress: Progress, concurrency: int):
        self.sessions, self.judge, self.items, self.baseline = sessions, judge, items, baseline
        self.ledger, self.progress = ledger, progress
        # Bounds coroutines, not calls (the limiter does that): enough items in flight to keep every
        # slot busy, few enough that an interrupted evaluation has finished the items it started.
        self.item_slots = asyncio.Semaphore(max(2, concurrency))
        n = len(items)
        self.runs: dict[str, list[ItemRun]] = {name: [None] * n for name in sessions}  # type: ignore[misc]
        self.reports = {name: TopologyReport(name, self.runs[name], None if name == baseline else [0.0] * n,
                                             priced=_priced(s.graph, s.order))
                        for name, s in sessions.items()}
        self.judge_usage = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._judging: dict[str, asyncio.Future] = {}

    async def run(self, judge_model: JudgeModel) -> EvalReport:
        try:
            await gather_or_cancel(self._item(i) for i in range(len(self.items)))
        finally:
            self.progress.draw(final=True)
        usage = dict(self.judge_usage)
        if judge_model.price is not None:
            usage["cost_usd"] = round((usage["prompt_tokens"] * judge_model.price[0]
                                       + usage["completion_tokens"] * judge_model.price[1]) / 1e6, 8)
        return EvalReport(self.baseline, judge_model, self.items, list(self.reports.values()), usage)

    async def _item(self, i: int) -> None:
        async with self.item_slots:
            item = self.items[i]
            names = list(self.sessions)
            # One topology after another within an item (items still run side by side): two
            # topologies often make the same call (a lone model that is also a proposer). Made at
            # once, both would miss the cache and sample twice, and a rerun, served one stored answer
            # for both, would report something else. In turn, the second is served the first's answer.
            for name in names:
                run = self.runs[name][i] = await self._run(name, item)
                if run.status != "ok":
                    self._report_failure(name, item, run)
            base = self.runs[self.baseline][i]
            await asyncio.gather(*(self._compare(name, i, base) for name in names if name != self.baseline))
            self.progress.item()

    async def _run(self, name: str, item: Item) -> ItemRun:
        try:
            return await run_item(self.sessions[name], item, ledger=self.ledger, on_event=self.progress.on_event)
        finally:
            self.progress.unit()

    def _report_failure(self, name: str, item: Item, run: ItemRun) -> None:
        stream = self.progress.stream
        if stream is not None:
            stream.write(("\r\x1b[K" if self.progress._tty else "")
                         + f"eval: {name} failed on item {item.index}: {run.error}\n")
            stream.flush()

    async def _compare(self, name: str, i: int, base: ItemRun) -> None:
        run, report = self.runs[name][i], self.reports[name]
        if run.status != "ok" or base.status != "ok":
            report.scores[i] = unjudged_score(candidate_ok=run.status == "ok", baseline_ok=base.status == "ok")
            self.progress.unit()
            self.progress.unit()
            return
        question = self.items[i].instruction
        first, second = await asyncio.gather(
            self._judge(report, judge_prompt(question, base.output, run.output)),
            self._judge(report, judge_prompt(question, run.output, base.output)))
        report.scores[i] = pair_score(judgment_score(first, candidate_first=False),
                                      judgment_score(second, candidate_first=True))

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
        task = self._judging.get(prompt)
        if task is None:
            task = self._judging[prompt] = asyncio.ensure_future(self.judge.run(prompt, on_event=self._judge_event))
            task.add_done_callback(lambda _: self._judging.pop(prompt, None))
        return task

    def _judge_event(self, event: Any) -> None:
        self.progress.on_event(event)
        if event.kind == "node_finished":
            usage = event.data.get("usage", {})
            self.judge_usage["calls" if event.data.get("status") == "ok" else "cache_hits"] += 1
            self.judge_usage["prompt_tokens"] += usage.get("prompt_tokens", 0)
            self.judge_usage["completion_tokens"] += usage.get("completion_tokens", 0)
        elif event.kind == "node_failed":
            self.judge_usage["calls"] += 1


def _priced(graph: nx.DiGraph, order: Sequence[str]) -> bool:
    return all(graph.nodes[n]["params"].get("price") is not None for n in order)


def evaluate(topologies: Sequence[str | os.PathLike | Pipeline], data: str | os.PathLike | Iterable[Mapping],
             **options: Any) -> EvalReport:
    """Blocking `aevaluate`; in a running loop (Jupyter) it runs on a loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(aevaluate(topologies, data, **options))
    from anyio.from_thread import start_blocking_portal

    async def main() -> EvalReport:
        return await aevaluate(topologies, data, **options)

    with start_blocking_portal(backend="asyncio") as portal:
        future = portal.start_task_soon(main)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise
