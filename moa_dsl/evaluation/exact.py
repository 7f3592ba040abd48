"""Exact-match scoring (`--score exact`): an answer is right when what `--extract` finds in it equals
the item's `answer` field, both normalised as a `vote` normalises its votes (lowercase, whitespace
collapsed, trailing `.,;:` stripped), and a number's thousands separators removed (`1,200` is
`1200`). No judge: for tasks with one right answer (arithmetic, multiple choice)."""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..errors import ConfigError
from ..runtime.operators import normalize_answer, vote_of
from .data import Item

__all__ = ["DEFAULT_EXTRACT", "SCORES", "compile_extract", "exact_match", "normalize_exact", "require_answers"]

DEFAULT_EXTRACT = r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)"
SCORES = ("judge", "exact")
_GROUPED = re.compile(r"[-+]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")


def compile_extract(extract: str | None) -> re.Pattern[str]:
    """`--extract`'s pattern (DEFAULT_EXTRACT when None); ConfigError when it does not compile."""
    try:
        return re.compile(DEFAULT_EXTRACT if extract is None else extract)
    except re.error as exc:
        raise ConfigError(f"--extract {extract!r} is not a valid regular expression: {exc}") from None


def normalize_exact(text: str) -> str:
    """A vote's normalisation (`operators.normalize_answer`), then `1,200` -> `1200` for a number."""
    text = normalize_answer(text)
    return text.replace(",", "") if _GROUPED.fullmatch(text) else text


def exact_match(output: str | None, answer: str, pattern: re.Pattern[str]) -> tuple[bool, str | None]:
    """(right?, what was extracted): the first match of `pattern` in `output` (its first group if it
    has one), normalised; an answer the pattern does not match, or no answer, is wrong."""
    if output is None:
        return False, None
    extracted = vote_of(output, pattern, normalize=False)
    if extracted is None:
        return False, None
    return normalize_exact(extracted) == normalize_exact(answer), extracted


def require_answers(items: Sequence[Item]) -> None:
    """Every item has an `answer`, else a ConfigError naming the first one without (`file:line`)."""
    for item in items:
        if item.answer is None:
            where = item.where or f"item {item.index}"
            raise ConfigError(f"{where}: no 'answer' field (--score exact compares each answer with it)")


def accuracy(correct: Sequence[Any]) -> float | None:
    return sum(1 for c in correct if c) / len(correct) if correct else None
