"""`moa serve FILE|DIR... [options]`: an OpenAI-compatible HTTP server; each topology is a model.

Each topology is named by its file's stem (a directory serves every .moa file in it). Any OpenAI
client can call one: GET /v1/models, POST /v1/chat/completions (streamed or not). Every file is
loaded and checked first: a file with errors is reported and nothing is served (exit 1). SIGHUP
reloads the files (a reload with errors keeps the previous ones); SIGTERM/SIGINT stop accepting,
let the requests in flight finish (up to 30 s) and exit 0. Needs the serve extra:
pip install 'moa-dsl[serve]'.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import DEFAULT_CONCURRENCY
from . import usage_error

__all__ = ["main", "register"]

HELP = "serve topologies over an OpenAI-compatible HTTP API"
DEFAULT_MAX_QUEUE = 256


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help=HELP, description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("paths", metavar="FILE|DIR", nargs="+", help=".moa files, or directories of them")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key-env", metavar="NAME", help="require 'Authorization: Bearer KEY' on every route, KEY read from $NAME"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"global bound on calls in flight, all topologies and requests (default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help=f"requests running or waiting before new ones get 429 (default {DEFAULT_MAX_QUEUE})",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="response cache (default $MOA_CACHE_DIR or ~/.cache/moa-dsl)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        from ..serve import serve
    except ModuleNotFoundError as exc:
        if exc.name in ("uvicorn", "starlette"):
            return usage_error("serve", f"{exc.name} is not installed: pip install 'moa-dsl[serve]'")
        raise
    return serve(
        args.paths,
        host=args.host,
        port=args.port,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
        cache_dir=args.cache_dir,
        no_cache=args.no_cache,
    )
