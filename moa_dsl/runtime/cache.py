"""The response cache: every complete, successful response on disk (diskcache), keyed by what was sent.

    cache = ResponseCache(config.cache_dir())
    key = cache_key(provider.kind, provider.endpoint, model, messages, request_params, sample)
    cache.get(key)  -> {"text", "prompt_tokens", "completion_tokens", "finish_reason"} or None
    cache.set(key, value)

The key is a SHA-256 over canonical JSON of the provider's kind and endpoint (userinfo stripped),
the model id, the exact messages, every parameter that reaches the request, and the sample index
(1 for an unrepeated call: `MODEL` and the first of `MODEL * 3` are the same call).
No credential goes into a key or a value: values are exactly the four fields above, stored as JSON
text (never pickles, so reading a shared directory cannot run code).

diskcache keeps its index in SQLite, so several processes can share one directory (an `moa eval`
and an `moa run` at once). A directory that cannot be used -- not a directory, read-only, full,
corrupt -- never stops a run: the cache turns itself off and says so once, with a `CacheWarning`
through `warnings.warn` (pytest shows it, a notebook shows it, the CLI prints it on stderr).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import diskcache

from ..config import REQUEST_PARAMS

__all__ = [
    "cache_key",
    "CacheWarning",
    "call_key",
    "KEY_VERSION",
    "ResponseCache",
    "storage_reason",
    "VALUE_FIELDS",
]

KEY_VERSION = 2  # bump when the key's recipe changes, so old entries are never misread
# 2: an unrepeated member is sample 1 (it was None)
VALUE_FIELDS = ("text", "prompt_tokens", "completion_tokens", "finish_reason")
# What a broken directory raises: the filesystem, SQLite (full, locked, corrupt), diskcache's own timeout.
_STORAGE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)


class CacheWarning(UserWarning):
    """The response cache could not be used and was turned off for this run. `directory` and
    `reason` (the error in words) let a face print it its own way (the CLI: one line)."""

    def __init__(self, directory: str | os.PathLike, reason: str):
        super().__init__(f"the response cache at {directory} cannot be used ({reason}); continuing without it")
        self.directory, self.reason = str(directory), reason


def storage_reason(exc: BaseException) -> str:
    """An error from the cache's storage in words: 'Not a directory', 'attempt to write a readonly
    database' (the path is said once, by whoever reports it)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def cache_key(
    kind: str, endpoint: str, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any], sample: int | None
) -> str:
    """SHA-256 hex of everything that decides a response. Parameters that never reach the request
    (timeout, retries, cache, ...) are left out, so changing them does not miss the cache."""
    payload = {
        "v": KEY_VERSION,
        "kind": kind,
        "endpoint": _without_userinfo(endpoint),
        "model": model,
        "messages": messages,
        "params": {k: params[k] for k in REQUEST_PARAMS if params.get(k) is not None},
        # A member's position among its N samples; an unrepeated member is the first of one, so
        # `p.n=1` and `p.n=3` (moa sweep) share their first sample.
        "sample": sample or 1,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def call_key(
    provider: Any, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any], sample: int | None
) -> str:
    """The key of one call to `provider`. A provider whose identity depends on the model (the
    embedded runtime: the weights' hash, or a file's path, size and mtime) says so with `endpoint_for`."""
    endpoint_for = getattr(provider, "endpoint_for", None)
    endpoint = endpoint_for(model) if endpoint_for is not None else provider.endpoint
    return cache_key(provider.kind, endpoint, model, messages, params, sample)


def _without_userinfo(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.username is None and parts.password is None:
        return endpoint
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class ResponseCache:
    def __init__(self, directory: str | os.PathLike, *, enabled: bool = True):
        self.directory = Path(directory).expanduser()
        self._cache: diskcache.Cache | None = None
        self._warned = False
        if enabled:
            in_the_way = _not_a_directory(self.directory)
            if in_the_way is not None:  # diskcache would say "could not be created" or "unable to open"
                what = "it is" if in_the_way == self.directory else f"{in_the_way} is"
                self._disable(NotADirectoryError(20, f"{what} not a directory"))
                return
            try:
                self._cache = diskcache.Cache(str(self.directory))
            except _STORAGE_ERRORS as exc:
                self._disable(exc)

    @property
    def enabled(self) -> bool:
        return self._cache is not None

    def get(self, key: str) -> dict[str, Any] | None:
        if self._cache is None:
            return None
        try:
            raw = self._cache.get(key, default=None, retry=True)
        except _STORAGE_ERRORS as exc:
            self._disable(exc)
            return None
        return _decode(raw)

    def set(self, key: str, value: Mapping[str, Any]) -> None:
        """Store a complete, successful response; only the known fields, so nothing else can leak in."""
        if self._cache is None:
            return
        if not isinstance(value.get("text"), str):
            raise ValueError("a cached response needs its text")
        record = json.dumps({f: value.get(f) for f in VALUE_FIELDS}, ensure_ascii=False)
        try:
            self._cache.set(key, record, retry=True)
        except _STORAGE_ERRORS as exc:
            self._disable(exc)

    def stats(self) -> dict[str, Any]:
        """{"directory", "enabled", "entries", "size_bytes"} (size on disk, SQLite index included)."""
        entries = size = 0
        if self._cache is not None:
            try:
                entries, size = len(self._cache), self._cache.volume()
            except _STORAGE_ERRORS as exc:
                self._disable(exc)
        return {"directory": str(self.directory), "enabled": self.enabled, "entries": entries, "size_bytes": size}

    @staticmethod
    def read_stats(directory: str | os.PathLike) -> dict[str, Any]:
        """{"directory", "entries", "size_bytes"} of an existing cache, read without writing anything
        (SQLite opened read-only), so a read-only or full directory still reports. Raises OSError
        (not a directory, unreadable) or sqlite3.Error (not a cache) when it cannot."""
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(directory))
        db = directory / "cache.db"
        entries = 0
        if db.exists():
            try:
                entries = _count(db, "mode=ro")
            except sqlite3.OperationalError:
                # A WAL database on a read-only filesystem cannot make its shared-memory file; read
                # it as immutable (nothing can be writing to a read-only filesystem anyway).
                entries = _count(db, "mode=ro&immutable=1")
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        return {"directory": str(directory), "entries": entries, "size_bytes": size}

    def clear(self) -> int:
        """Remove every entry; returns how many."""
        if self._cache is None:
            return 0
        try:
            return self._cache.clear(retry=True)
        except _STORAGE_ERRORS as exc:
            self._disable(exc)
            return 0

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _disable(self, exc: BaseException) -> None:
        cache, self._cache = self._cache, None
        if cache is not None:
            try:
                cache.close()
            except _STORAGE_ERRORS:
                pass
        if not self._warned:
            self._warned = True
            warnings.warn(CacheWarning(self.directory, storage_reason(exc)), stacklevel=3)


def _count(db: Path, options: str) -> int:
    con = sqlite3.connect("file:" + urllib.parse.quote(str(db)) + "?" + options, uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]
    finally:
        con.close()


def _not_a_directory(directory: Path) -> Path | None:
    """The path itself, or the nearest existing one above it, when that is not a directory."""
    for p in (directory, *directory.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _decode(raw: Any) -> dict[str, Any] | None:
    """A stored record, or None for a miss or an entry that is not one of ours (treated as a miss)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        return None
    return {f: value.get(f) for f in VALUE_FIELDS}
