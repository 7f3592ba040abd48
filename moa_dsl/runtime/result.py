"""What a run returns: `RunResult`, one `NodeResult` per node run, and `Usage`.

Token accounting: a node's `usage` is what its response cost, whether it was called now (status
"ok") or served from the cache (status "cached": those tokens were saved, not spent). The run's
totals count only what was spent in this run (ok nodes, and failed ones that reported usage: none do
today); what the cache saved is in `Usage.saved_prompt_tokens` / `saved_completion_tokens`.
`Usage.calls` is the number of nodes whose call reached a provider in this run (ok or failed, each
counted once however many attempts it took; per-node attempts are in `NodeResult.attempts`);
`cache_hits` is the number of nodes served from the cache. A `window` aggregator folds its inputs in
several calls: each counts (`calls` or `cache_hits`), and all are in its node's usage and attempts.
A `vote`, and an `agree` aggregator whose inputs agreed, make no call.

Cost: `NodeResult.cost_usd` is what the node's calls made in this run cost at its model's `price`
(USD per million prompt and completion tokens): 0.0 when it was served from the cache or made no
call, None when its model has no price (a vote has no model: 0.0). `Usage.cost_usd` sums them for the
run, None when any call made or served was unpriced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ..errors import RunFailed
from .events import Event
from .report import failure_reason, result_html, result_markdown, totals_line

__all__ = ["NODE_STATUSES", "NodeResult", "NodeStatus", "RunResult", "RunStatus", "Usage", "price_usd"]

NodeStatus = Literal["ok", "cached", "failed", "skipped", "cancelled"]
RunStatus = Literal["ok", "failed"]
NODE_STATUSES: tuple[NodeStatus, ...] = get_args(NodeStatus)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cache_hits: int = 0
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None once a call made or served was unpriced

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "cost_usd": _round(self.cost_usd),
        }


@dataclass
class NodeResult:
    status: NodeStatus
    model: str | None  # None for a vote (no model)
    provider: str | None
    text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float | None = None  # the call's duration (0 for a cache hit); None if never started
    attempts: int = 0  # requests sent (0 when cached or skipped)
    error: str | None = None  # why it failed, or why it was skipped (in words)
    started_s: float | None = None
    finished_s: float | None = None
    # The call's response-cache key (the same whether or not the cache was used); None if it never
    # got as far as a request (skipped). Not part of `--json`: it is for tools built on a run.
    cache_key: str | None = field(default=None, repr=False)
    reason: str | None = None  # why it was skipped or cancelled: "budget", "min_inputs", "quorum"
    cost_usd: float | None = None  # see the module docstring
    selected: list[str] | None = None  # rank: the chosen candidates' node names, best first
    votes: dict[str, int] | None = None  # vote: answer -> votes, in the order first cast
    agreed: bool | None = None  # aggregate with `agree`: True when it made no call
    # Calls made or served from the cache for it (a window folds in several; a vote makes none; None:
    # not said, one unless skipped), and the inputs it read (a quorum reads only K of them). Not part
    # of `--json`: for the evaluation.
    calls: int | None = field(default=None, repr=False)
    inputs_read: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @property
    def succeeded(self) -> bool:
        return self.status in ("ok", "cached")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "model": self.model,
            "provider": self.provider,
            "text": self.text,
            "usage": self.usage,
            "latency_s": _round(self.latency_s),
            "attempts": self.attempts,
            "error": self.error,
            "started_s": _round(self.started_s),
            "finished_s": _round(self.finished_s),
            "reason": self.reason,
            "cost_usd": _round(self.cost_usd),
        }
        if self.selected is not None:
            out["selected"] = list(self.selected)
        if self.votes is not None:
            out["votes"] = dict(self.votes)
        if self.agreed is not None:
            out["agreed"] = self.agreed
        return out


@dataclass
class RunResult:
    output: str | None
    output_node: str
    status: RunStatus
    elapsed_s: float
    usage: Usage
    nodes: dict[str, NodeResult]
    events: list[Event] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The README's `moa run --json` shape, exactly."""
        return {
            "output": self.output,
            "output_node": self.output_node,
            "status": self.status,
            "elapsed_s": _round(self.elapsed_s),
            "usage": self.usage.to_json(),
            "nodes": {name: node.to_json() for name, node in self.nodes.items()},
        }

    def summary(self) -> str:
        return totals_line(self.status, self.usage, self.elapsed_s)

    def _repr_html_(self) -> str:  # pure string builders: no IPython needed
        return result_html(self)

    def _repr_markdown_(self) -> str:
        return result_markdown(self)

    def raise_for_status(self) -> "RunResult":
        """Raise RunFailed when the output node failed or was skipped; return self otherwise."""
        if self.status != "ok":
            why = failure_reason(self)
            raise RunFailed(f"the output node '{self.output_node}' did not answer: {why}", result=self)
        return self


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def price_usd(price: Any, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for these tokens at `price` ([prompt, completion] USD per million tokens); None if unpriced."""
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
