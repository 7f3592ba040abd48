"""What a run returns: `RunResult`, one `NodeResult` per node run, and `Usage`.

Token accounting: a node's `usage` is what its response cost, whether it was called now (status
"ok") or served from the cache (status "cached": those tokens were saved, not spent). The run's
totals count only what was spent in this run (ok nodes, and failed ones that reported usage: none do
today); what the cache saved is in `Usage.saved_prompt_tokens` / `saved_completion_tokens`.
`Usage.calls` is the number of nodes whose call reached a provider in this run (ok or failed, each
counted once however many attempts it took; per-node attempts are in `NodeResult.attempts`);
`cache_hits` is the number of nodes served from the cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_args

from ..errors import RunFailed
from .events import Event
from .report import failure_reason, result_html, result_markdown, totals_line

__all__ = ["NODE_STATUSES", "NodeResult", "NodeStatus", "RunResult", "RunStatus", "Usage"]

NodeStatus = Literal["ok", "cached", "failed", "skipped"]
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

    def to_json(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "calls": self.calls, "cache_hits": self.cache_hits}


class _LazyKey:
    """A field that may be given as a zero-argument callable, called (once) at first read: the runner
    passes the call's cache key this way when the cache is off, so no run pays for a SHA-256 per call
    that nobody reads."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = "_" + name            # a plain attribute: reading obj.__dict__ would build a dict per result

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return None                    # the dataclass field's default
        value = getattr(obj, self._slot)
        if callable(value):
            value = value()
            setattr(obj, self._slot, value)
        return value

    def __set__(self, obj: Any, value: str | Callable[[], str] | None) -> None:
        setattr(obj, self._slot, None if value is self else value)   # `self`: the default, not given


@dataclass
class NodeResult:
    status: NodeStatus
    model: str
    provider: str
    text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float | None = None      # the call's duration (0 for a cache hit); None if never started
    attempts: int = 0                   # requests sent (0 when cached or skipped)
    error: str | None = None            # why it failed, or why it was skipped
    started_s: float | None = None
    finished_s: float | None = None
    # The call's response-cache key (the same whether or not the cache was used); None if it never
    # got as far as a request (skipped). Not part of `--json`: it is for tools built on a run.
    # Computed at first read when the run's cache was off (the runner passes a callable).
    cache_key: str | None = field(default=_LazyKey(), repr=False)  # type: ignore[assignment]

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @property
    def succeeded(self) -> bool:
        return self.status in ("ok", "cached")

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status, "model": self.model, "provider": self.provider, "text": self.text,
            "usage": self.usage, "latency_s": _round(self.latency_s), "attempts": self.attempts,
            "error": self.error, "started_s": _round(self.started_s), "finished_s": _round(self.finished_s),
        }


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
        """INTERFACES.md's `moa run --json` shape, exactly."""
        return {
            "output": self.output, "output_node": self.output_node, "status": self.status,
            "elapsed_s": _round(self.elapsed_s), "usage": self.usage.to_json(),
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
