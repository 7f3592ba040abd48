"""The response cache: every complete, successful response on disk (diskcache), keyed by what was sent.

    cache = ResponseCache(config.cache_dir())
    key = cache_key(provider.kind, provider.endpoint, model, messages, request_params, sample)
    cache.get(key)  -> {"text", "prompt_tokens", "completion_tokens", "finish_reason"} or None
    cache.set(key, value)

The key is a SHA-256 over canonical JSON of the provider's kind and endpoint (userinfo stripped),
the model id, the exact messages, every parameter that reaches the request, and the sample index.
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
import warnings
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import diskcache

from ..config import REQUEST_PARAMS

KEY_VERSION = 1                      # bump when the key's recipe changes, so old entries are never misread
VALUE_FIELDS = ("text", "prompt_tokens", "completion_tokens", "finish_reason")
# What a broken directory raises: the filesystem, SQLite (full, locked, corrupt), diskcache's own timeout.
_STORAGE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)


class CacheWarning(UserWarning):
    """The response cache could not be used and was turned off for this run."""


def cache_key(kind: str, endpoint: str, model: str, messages: list[dict[str, Any]],
              params: Mapping[str, Any], sample: int | None) -> str:
    """SHA-256 hex of everything that decides a response. Parameters that never reach the request
    (timeout, retries, cache, ...) are left out, so changing them does not miss the cache."""
    payload = {
        "v": KEY_VERSION,
        "kind": kind,
        "endpoint": _without_userinfo(endpoint),
        "model": model,
        "messages": messages,
        "params": {k: params[k] for k in REQUEST_PARAMS if params.get(k) is not None},
        "sample": sample,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def call_key(provider: Any, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any],
             sample: int | None) -> str:
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
            warnings.warn(f"the response cache at {self.directory} cannot be used ({type(exc).__name__}: {exc}); "
                          "continuing without it", CacheWarning, stacklevel=3)


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
