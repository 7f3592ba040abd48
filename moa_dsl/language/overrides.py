"""`--set KEY=VALUE` and `--set NODE.KEY=VALUE`: parameters given on the command line (or in
`%%moa`), applied to a validated graph with the same checks a `.moa` file gets."""

from __future__ import annotations

import re
from typing import Any, Sequence

import networkx as nx

from ..errors import ConfigError, Span
from . import syntax as ast
from . import validate
from .parser import parse_value

__all__ = ["apply_overrides"]

_BARE = re.compile(r"^[^\"\[{]")


def apply_overrides(graph: nx.DiGraph, sets: Sequence[str]) -> nx.DiGraph:
    """A copy of `graph` with `KEY=VALUE` on every node or `NODE.KEY=VALUE` on one node (or every
    member of a layer). Raises ConfigError with a did-you-mean on a bad item."""
    graph = graph.copy()
    for _, attrs in graph.nodes(data=True):
        attrs["params"] = dict(attrs["params"])
    for item in sets:
        _apply_one(graph, item)
    return graph


def _apply_one(graph: Any, item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE or NODE.KEY=VALUE")
    target, _, param = key.rpartition(".")
    nodes = _targets(graph, target, item)
    if param not in validate.PARAM_SCHEMA:
        hint = validate.did_you_mean(param, validate.PARAM_SCHEMA)
        raise ConfigError(f"--set {item!r}: unknown parameter '{param}'" + (f"; {hint}" if hint else ""))
    value = _literal(raw.strip(), item)
    span = Span("--set", 1, 1, 1, len(item) + 1)
    try:
        converted = validate.convert_param(ast.Pair(param, span, value, span), {}, where="--set")
    except validate.Invalid as exc:
        raise ConfigError(f"--set {item!r}: {exc.diagnostic.message}") from None
    for name in nodes:
        attrs = graph.nodes[name]
        role = attrs["role"]
        if not validate.takes(role, param):
            if target:
                raise ConfigError(f"--set {item!r}: " + validate.wrong_role(param, role, f"'{name}'")[0])
            continue
        if not target and role == "rank" and param == "prompt":
            continue  # a synthesis instruction for every node is not a ranking one (as from defaults)
        if param in validate.COUNTED and converted > len(attrs["inputs"]):
            raise ConfigError(f"--set {item!r}: '{name}' has only {len(attrs['inputs'])} inputs")
        if param == "seed" and attrs["sample"] is not None:
            attrs["params"][param] = converted + attrs["sample"] - 1
        else:
            attrs["params"][param] = converted


def _targets(graph: Any, target: str, item: str) -> list[str]:
    if not target:
        return list(graph)
    if target in graph:
        return [target]
    members = [n for n, layer in graph.nodes(data="layer") if layer == target]
    if members:
        return members
    layers = {layer for _, layer in graph.nodes(data="layer") if layer}
    hint = validate.did_you_mean(target, list(graph) + sorted(layers))
    raise ConfigError(f"--set {item!r}: unknown node or layer '{target}'" + (f"; {hint}" if hint else ""))


def _literal(raw: str, item: str) -> ast.Value:
    """A .moa literal; a bare word (or any text that is not one) is a string."""
    value, errors = parse_value(raw, "--set") if raw else (None, [])
    span = Span("--set", 1, 1, 1, 1)
    if value is None:
        if raw and not _BARE.match(raw):
            raise ConfigError(f"--set {item!r}: {errors[0].message if errors else 'not a value'}")
        return ast.Str(raw, span)
    if isinstance(value, ast.NameValue):
        return ast.Str(value.name, value.span)
    return value
