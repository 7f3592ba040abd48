"""The pure parts of the operators beyond propose and aggregate (docs/language.md, "Beyond propose and
aggregate"): how a vote reads an answer, how a ranking reply is read, how a window folds its inputs,
and the budget's ledger. The scheduler decides when; this module decides what.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from .result import price_usd

__all__ = [
    "BUDGET_KEYS",
    "Budget",
    "Reservation",
    "agree",
    "budget_caps",
    "normalize_answer",
    "parse_ranking",
    "tally",
    "vote_of",
    "window_steps",
    "worst_case",
]

BUDGET_KEYS = ("usd", "tokens", "calls")
_RANK_MARK = re.compile(r"\[(\d+)\]")
_TRAILING = ".,;:"


def normalize_answer(text: str) -> str:
    """Lowercased, whitespace collapsed, surrounding whitespace and trailing `.,;:` stripped until
    neither is left: `" Paris. "` and `"paris"` are the same vote."""
    text = " ".join(text.lower().split())
    while True:
        stripped = text.rstrip(_TRAILING).strip()
        if stripped == text:
            return text
        text = stripped


def _pattern(extract: Any) -> re.Pattern[str] | None:
    if extract is None:
        return None
    return extract if isinstance(extract, re.Pattern) else re.compile(extract)


def vote_of(text: str, extract: Any = None, normalize: bool = True) -> str | None:
    """The answer `text` casts: the first match of `extract` (its first capture group if it has one),
    or the whole text; None when it does not match (it does not vote)."""
    pattern = _pattern(extract)
    if pattern is not None:
        m = pattern.search(text)
        if m is None:
            return None
        text = m.group(1) if pattern.groups else m.group(0)
        if text is None:  # an optional group that took no part in the match
            return None
    return normalize_answer(text) if normalize else text


def tally(texts: Sequence[str], extract: Any = None, normalize: bool = True) -> tuple[dict[str, int], dict[str, int]]:
    """(answer -> votes, in the order first cast; answer -> index of the first text that cast it)."""
    pattern = _pattern(extract)
    votes: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        answer = vote_of(text, pattern, normalize)
        if answer is None:
            continue
        votes[answer] = votes.get(answer, 0) + 1
        first.setdefault(answer, i)
    return votes, first


def agree(texts: Sequence[str], extract: Any = None, normalize: bool = True) -> bool:
    """At least two answers, and every one gives the same answer (as a vote compares them)."""
    if len(texts) < 2:
        return False
    pattern = _pattern(extract)
    answers = {vote_of(t, pattern, normalize) for t in texts}
    return len(answers) == 1 and None not in answers


def parse_ranking(reply: str, n: int) -> list[int] | None:
    """0-based candidate indices, best first: the first occurrence of each valid `[i]` in the reply,
    then those never mentioned, in input order. None when the reply names no valid candidate."""
    order: list[int] = []
    seen: set[int] = set()
    for m in _RANK_MARK.finditer(reply):
        i = int(m.group(1))
        if 1 <= i <= n and i not in seen:
            seen.add(i)
            order.append(i)
    if not order:
        return None
    return [i - 1 for i in order] + [i - 1 for i in range(1, n + 1) if i not in seen]


def window_steps(n: int, window: int | None) -> list[tuple[int, int]]:
    """The slices of the n inputs each call of a window reads (after the first call, behind the
    previous answer): [(0, W), (W, 2W-1), ...]; one slice (0, n) when n <= W or there is no window."""
    if not window or n <= window:
        return [(0, n)]
    steps = [(0, window)]
    while steps[-1][1] < n:
        start = steps[-1][1]
        steps.append((start, min(n, start + window - 1)))
    assert len(steps) == 1 + math.ceil((n - window) / (window - 1))
    return steps


def budget_caps(graph_budget: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The statement's caps with `overrides` (the CLI's --budget-*, `arun(budget=)`) replacing keys
    of the same name, each on its own; None values are ignored."""
    caps = dict(graph_budget or {})
    for key, value in (overrides or {}).items():
        if key not in BUDGET_KEYS:
            raise ConfigError(f"unknown budget key {key!r}: use {', '.join(BUDGET_KEYS)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            raise ConfigError(f"budget {key} must be a number > 0, not {value!r}")
        caps[key] = value
    return caps


def worst_case(messages: Sequence[Mapping[str, str]], params: Mapping[str, Any]) -> tuple[int, int, float]:
    """(prompt tokens, completion tokens, USD) a call may cost at most: its messages' characters / 4,
    rounded up, and its `max_tokens`, at its model's price (an unpriced model's calls cost nothing)."""
    chars = sum(len(m.get("content") or "") for m in messages)
    prompt = -(-chars // 4)
    completion = int(params.get("max_tokens") or 0)
    return prompt, completion, price_usd(params.get("price"), prompt, completion) or 0.0


@dataclass
class Reservation:
    usd: float
    tokens: int
    calls: int = 1


class Budget:
    """One query's caps: what is spent plus what is reserved for calls in flight never passes a cap."""

    _EPS = 1e-12

    def __init__(self, caps: Mapping[str, float]):
        self.caps = dict(caps)
        self.spent = {"usd": 0.0, "tokens": 0, "calls": 0}
        self.reserved = {"usd": 0.0, "tokens": 0, "calls": 0}

    def reserve(self, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any]) -> Reservation | str:
        """Reserve the call's worst case, or say in words why it would pass a cap (then nothing is reserved)."""
        pt, ct, usd = worst_case(messages, params)
        want = {"usd": usd, "tokens": pt + ct, "calls": 1}
        for key, cap in self.caps.items():
            total = self.spent[key] + self.reserved[key] + want[key]
            if total > cap + self._EPS:
                return (
                    f"budget: this call's worst case ({_fmt(key, want[key])}) on top of "
                    f"{_fmt(key, self.spent[key])} spent and {_fmt(key, self.reserved[key])} reserved "
                    f"would pass the {key} cap of {_fmt(key, cap)}"
                )
        for key, value in want.items():
            self.reserved[key] += value
        return Reservation(usd, pt + ct)

    def settle(
        self, r: Reservation, *, sent: bool, prompt_tokens: int = 0, completion_tokens: int = 0, price: Any = None
    ) -> None:
        """The call ended: its reservation is replaced by what it really cost (a call never sent, nothing)."""
        self.reserved["usd"] -= r.usd
        self.reserved["tokens"] -= r.tokens
        self.reserved["calls"] -= r.calls
        if sent:
            self.spent["calls"] += 1
            self.spent["tokens"] += prompt_tokens + completion_tokens
            self.spent["usd"] += price_usd(price, prompt_tokens, completion_tokens) or 0.0


def _fmt(key: str, value: float) -> str:
    if key == "usd":
        return f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"
    return f"{int(value)} {key}"
