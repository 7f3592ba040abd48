"""Datasets: JSONL files (or the shipped ones, by name) into `Item`s, with file:line errors."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from ..runtime.messages import normalize_query

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
