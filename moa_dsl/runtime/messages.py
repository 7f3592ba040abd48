"""The exact messages a call sends (docs/language.md, "The messages a call sends").

They follow togethercomputer/MoA's `inject_references_to_messages`, so that a topology written in
`.moa` sends the same requests as the paper's code: a proposer sends the conversation (behind an
optional system message); an aggregator appends a numbered block of its inputs' answers to the
system message, or puts one in front. A ranker (docs/language.md, "rank") builds its request the same
way, its candidates numbered `[1]`, `[2]`, ... instead.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ..config import REFERENCE_PROMPT
from ..errors import ConfigError

__all__ = ["Message", "build_messages", "candidates_block", "normalize_query", "references_block"]

Message = dict[str, str]
_ROLES = ("system", "user", "assistant")


def normalize_query(query: Any) -> list[Message]:
    """A query as a conversation: a string becomes one user message; a list is checked and copied."""
    if isinstance(query, str):
        if not query.strip():
            raise ConfigError("the query is empty")
        _check_utf8(query, "the query")
        return [{"role": "user", "content": query}]
    if not isinstance(query, (list, tuple)) or not query:
        raise ConfigError(
            f"a query is a string or a non-empty list of {{role, content}} messages, not {type(query).__name__}"
        )
    conversation: list[Message] = []
    for i, msg in enumerate(query):
        if not isinstance(msg, Mapping) or set(msg) != {"role", "content"}:
            raise ConfigError(
                f"query message {i}: expected an object with exactly 'role' and 'content', got {msg!r:.80}"
            )
        role, content = msg["role"], msg["content"]
        if role not in _ROLES:
            raise ConfigError(f"query message {i}: role must be one of {', '.join(_ROLES)}, not {role!r}")
        if not isinstance(content, str):
            raise ConfigError(f"query message {i}: content must be a string")
        _check_utf8(content, f"query message {i}")
        if role == "system" and i != 0:
            raise ConfigError(f"query message {i}: a system message may only come first")
        conversation.append({"role": role, "content": content})
    if conversation[-1]["role"] != "user":
        raise ConfigError("the last message of a query conversation must be the user's")
    return conversation


def _check_utf8(text: str, what: str) -> None:
    """A str with lone surrogates (bytes that were not UTF-8, as argv and stdin carry them with
    surrogateescape) cannot be sent, hashed into a cache key or printed: refuse it up front."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not valid UTF-8") from None


def references_block(refs: Iterable[str], prompt: str = REFERENCE_PROMPT) -> str:
    """PROMPT, then "\\n1. ref", "\\n2. ref", ... with each reference stripped."""
    return prompt + "".join(f"\n{i}. {ref.strip()}" for i, ref in enumerate(refs, 1))


def candidates_block(refs: Iterable[str], prompt: str) -> str:
    """A ranker's block: PROMPT, then "\n[1] ref", "\n[2] ref", ... with each candidate stripped."""
    return prompt + "".join(f"\n[{i}] {ref.strip()}" for i, ref in enumerate(refs, 1))


def build_messages(
    conversation: Sequence[Message],
    *,
    system: str | None = None,
    refs: Sequence[str] | None = None,
    prompt: str | None = None,
    numbered: bool = False,
) -> list[Message]:
    """The messages for one call. `refs` is None for a proposer, the succeeded inputs' texts otherwise;
    `numbered`: a ranker's `[i]` candidates (then `prompt` is the ranking instruction)."""
    messages = [dict(m) for m in conversation]  # never mutate the caller's conversation
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    if refs is None:
        return messages
    if numbered:
        block = candidates_block(refs, prompt or "")
    else:
        block = references_block(refs, REFERENCE_PROMPT if prompt is None else prompt)
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] += "\n\n" + block
    else:
        messages.insert(0, {"role": "system", "content": block})
    return messages
