"""Datasets: JSONL files (or the shipped ones, by name) into `Item`s, with file:line errors."""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import IO, Any, Iterable, Mapping

from ..errors import ConfigError
from ..runtime.messages import normalize_query

__all__ = [
    "dataset_names",
    "DATASETS",
    "Item",
    "item_from_record",
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
    "read_items",
    "read_jsonl_records",
    "read_jsonl_stream",
]

# --- the dataset --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    index: int  # 0-based position in the dataset
    turns: tuple[str, ...]  # the user's messages, one run each (MT-Bench has two)
    dataset: str
    prefix: tuple[tuple[str, str], ...] = ()  # (role, content) before the turns: a `query` conversation
    category: str | None = None  # MT-Bench's `category` (writing, coding, ...): per-category win rates
    answer: str | None = None  # the exact answer (`answer` field), for `--score exact`
    where: str | None = field(default=None, compare=False)  # `file:line` (or `item N`), for errors

    @property
    def instruction(self) -> str:
        """What model_outputs.json shows and the judge reads as the question."""
        context = "".join(f"[{role}] {content}\n\n" for role, content in self.prefix)
        if len(self.turns) == 1:
            return context + self.turns[0]
        return context + "\n\n".join(f"Turn {k}: {t}" for k, t in enumerate(self.turns, 1))


def item_from_record(record: Any, *, index: int, dataset: str, where: str) -> Item:
    """One JSONL object, read as `moa run --input` reads it: `instruction`, else `query` (a string or
    a conversation), else MT-Bench's `turns` (a list of strings, run as one growing conversation);
    an `answer` (a string or a number) is kept for exact-match scoring."""
    if not isinstance(record, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    given = record.get("dataset")
    ds = given if isinstance(given, str) else dataset
    answer = _answer(record, where)
    if "instruction" in record:
        return Item(index, (_text(record["instruction"], "instruction", where),), ds, answer=answer, where=where)
    if "query" in record:
        query = record["query"]
        if isinstance(query, list):
            item = _conversation_item(query, index=index, dataset=ds, where=where)
            return replace(item, answer=answer, where=where)
        return Item(index, (_text(query, "query", where),), ds, answer=answer, where=where)
    if "turns" in record:
        turns = record["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise ConfigError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        return Item(index, tuple(turns), ds, category=_category(record), answer=answer, where=where)
    raise ConfigError(f"{where}: no 'instruction', 'query' or 'turns' field")


def _answer(record: Mapping, where: str) -> str | None:
    """The `answer` field as text (a JSON number is written as it reads: 42, 2.5); None without one."""
    if "answer" not in record:
        return None
    value = record["answer"]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: 'answer' must be a string or a number, not {type(value).__name__}")
    text = value if isinstance(value, str) else repr(value)
    if not text.strip():
        raise ConfigError(f"{where}: 'answer' is empty")
    return text


def _category(record: Mapping) -> str | None:
    category = record.get("category")
    return category if isinstance(category, str) and category.strip() else None


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
    """A JSONL file (blank lines skipped), a shipped dataset's name (`alpaca-eval`, `mt-bench`, `arithmetic`: only
    when no file of that name exists), or an iterable of records; the first `limit` of them."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be an integer >= 1, not {limit!r}")
    if isinstance(data, (str, os.PathLike)):
        return _read_jsonl(data, limit)
    items: list[Item] = []
    for i, record in enumerate(data):
        if limit is not None and len(items) >= limit:
            break
        items.append(item_from_record(record, index=i, dataset="custom", where=f"item {i}"))
    if not items:
        raise ConfigError("the dataset is empty")
    return items


def _read_jsonl(path: str | os.PathLike, limit: int | None) -> list[Item]:
    return [item for _, item in read_jsonl_records(path, limit=limit)]


# --- reading JSONL: by name or path, bounded, exact ------------------------------------------------

DATASETS = {
    "alpaca-eval": "alpaca_eval.jsonl",
    "mt-bench": "mt_bench.jsonl",
    "arithmetic": "arithmetic.jsonl",
}  # name -> file in datasets/
MAX_LINE_BYTES = 1024 * 1024  # an --input line longer than this is refused, never read whole
MAX_DEPTH = 256  # JSON nesting a line may have (deeper would only overflow the stack later)
_BOM = b"\xef\xbb\xbf"


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def _open_dataset(data: str | os.PathLike) -> tuple[IO[bytes], str, str]:
    """(a binary stream, the name errors show, the dataset's default name) for a path or a shipped
    dataset's name. A path that exists is always the file; a name is a name only when no such file
    exists. Anything that is not a regular file (a directory, /dev/zero, a FIFO) is refused."""
    path = os.fspath(data)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(data, str) and data in DATASETS and not os.path.lexists(data):
        resource = resources.files(__package__).joinpath("datasets", DATASETS[data])
        try:
            return resource.open("rb"), data, Path(DATASETS[data]).stem
        except OSError as exc:  # a broken install
            raise ConfigError(f"the shipped dataset {data!r} cannot be read: {exc.strerror or exc}") from exc
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        names = "" if os.sep in path else f" (nor a shipped dataset's name: {', '.join(DATASETS)})"
        raise ConfigError(f"no such file: {path}{names}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{path}: is a directory, not a JSONL file")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path}: not a regular file (a device, FIFO or socket); give a JSONL file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb"), path, Path(path).stem


def read_jsonl_records(path: str | os.PathLike, *, limit: int | None = None) -> list[tuple[dict, Item]]:
    """Every line of a JSONL file (or shipped dataset, by name) as (the object as written, its
    Item), each line checked as it is read: a bad line raises ConfigError naming `file:line` before
    anything runs."""
    stream, where, stem = _open_dataset(path)
    with stream:
        return read_jsonl_stream(stream, name=where, dataset=stem, limit=limit)


def read_jsonl_stream(
    stream: IO[bytes], *, name: str, dataset: str, limit: int | None = None
) -> list[tuple[dict, Item]]:
    """JSONL from a binary stream (a file, stdin). Lines end at `\n` (or `\r\n`) only -- never at
    U+2028 and the other characters `str.splitlines` breaks on -- and each is read with at most
    MAX_LINE_BYTES (plus its line break) in memory. A UTF-8 BOM at the start is skipped."""
    records: list[tuple[dict, Item]] = []
    lineno = 0
    while limit is None or len(records) < limit:
        try:
            raw = stream.readline(MAX_LINE_BYTES + 2)
        except OSError as exc:
            raise ConfigError(f"{name}:{lineno + 1}: cannot read it ({exc.strerror or exc})") from None
        if not raw:
            break
        lineno += 1
        where = f"{name}:{lineno}"
        if raw.endswith(b"\n"):
            body = raw[:-1]
            if body.endswith(b"\r"):
                body = body[:-1]
        elif len(raw) == MAX_LINE_BYTES + 2:  # stopped before the line's end
            raise ConfigError(f"{where}: line longer than 1 MiB")
        else:
            body = raw
        if len(body) > MAX_LINE_BYTES:
            raise ConfigError(f"{where}: line longer than 1 MiB")
        if lineno == 1 and body.startswith(_BOM):
            body = body[len(_BOM) :]
        record = _parse_line(body, where)
        if record is None:
            continue
        records.append((record, item_from_record(record, index=len(records), dataset=dataset, where=where)))
    if not records:
        raise ConfigError(f"{name}: no items")
    return records


class _NotFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: it would be written back out as Infinity, which is not JSON
        raise _NotFinite(text)
    return value


def _parse_line(body: bytes, where: str) -> Any:
    """One line's JSON value, or None for a blank line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte 0x{body[exc.start]:02x} at column {exc.start + 1})") from None
    if not text.strip(" \t\r"):
        return None
    try:
        # strict=False: a raw control character (U+001C ...) inside a string is text, as in a file
        # the user wrote; it is escaped again whenever the record is written out.
        record = json.loads(text, strict=False, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise ConfigError(f"{where}: {exc} is not a JSON number (NaN and infinities are not allowed)") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
    if _depth(record) > MAX_DEPTH:
        raise ConfigError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels)")
    return record


def _depth(value: Any) -> int:
    """How deeply lists and objects nest (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((x, d + 1) for x in v)
    return deepest
