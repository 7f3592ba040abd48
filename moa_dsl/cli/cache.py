"""`moa cache stats|clear [--cache-dir DIR]`: inspect or empty the response cache."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from .. import config
from ..errors import ConfigError

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cache",
        help="inspect or empty the response cache",
        description="Show how many responses are cached and how much disk they use, or remove them all.",
    )
    parser.add_argument("action", choices=("stats", "clear"), help="stats: entries and size; clear: remove all")
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="the cache directory (default: $MOA_CACHE_DIR, else ~/.cache/moa-dsl)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    directory = config.cache_dir(args.cache_dir)
    if not directory.exists():  # nothing cached yet: report it without creating the directory
        if args.action == "stats":
            _print_stats({"directory": str(directory), "entries": 0, "size_bytes": 0})
        else:
            print(f"nothing to clear: {directory} does not exist")
        return 0
    if not directory.is_dir():
        raise ConfigError(f"the cache directory {directory} is not a directory")
    if args.action == "stats":  # read-only work: it must work on a read-only cache too
        _print_stats(_read_stats(directory))
        return 0
    cache = _open(directory)
    try:
        removed = cache.clear()
        print(f"removed {removed} cached response{'' if removed == 1 else 's'} from {directory}")
    finally:
        cache.close()
    return 0


def _read_stats(directory: Path) -> dict:
    import sqlite3

    from ..runtime.cache import ResponseCache, storage_reason

    try:
        return ResponseCache.read_stats(directory)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot read the response cache at {directory} ({storage_reason(exc)})") from None


def _open(directory: Path):
    from ..runtime.cache import CacheWarning, ResponseCache

    with warnings.catch_warnings(record=True) as caught:  # here an unusable cache is the error itself
        warnings.simplefilter("always", CacheWarning)
        cache = ResponseCache(directory)
    if not cache.enabled:
        first = caught[0].message if caught else None  # typed Warning | str: check it is ours
        reason = first.reason if isinstance(first, CacheWarning) else "it cannot be opened"
        raise ConfigError(f"cannot use the response cache at {directory} ({reason})")
    return cache


def _print_stats(stats: dict) -> None:
    print(f"directory: {stats['directory']}")
    print(f"entries:   {stats['entries']}")
    print(f"size:      {_human(stats['size_bytes'])}")


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
