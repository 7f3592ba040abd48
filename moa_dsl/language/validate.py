"""The checks: the parameter and provider-option schema, and the passes over the built graph.

Everything here returns Diagnostics; nothing raises on bad input. `graph.build` converts values
through `convert_param` / `convert_option` (one diagnostic per bad value, however many nodes use
it); `check_graph` then looks at the whole graph: cycles, the output, dead nodes.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import networkx as nx

from ..config import MODEL_PARAMS, PARAM_KEYS, PROVIDER_KINDS, PROVIDER_OPTIONS, ROLE_PARAMS, EnvRef
from ..errors import Diagnostic, mask_value
from . import syntax as ast
from .syntax import Span

__all__ = [
    "BUDGET_KEYS",
    "check_budget_prices",
    "check_cycles",
    "check_dead",
    "check_role",
    "convert_budget",
    "convert_options",
    "convert_param",
    "convert_params",
    "COUNTED",
    "dead_nodes",
    "describe_value",
    "did_you_mean",
    "ENV_HINT",
    "env_ref",
    "error",
    "Invalid",
    "listing",
    "looks_like_key",
    "MAX_SAMPLES",
    "OPTION_SCHEMA",
    "PARAM_SCHEMA",
    "REGEX_HINT",
    "sample_count",
    "secret_spans",
    "sinks",
    "takes",
    "url_problem",
    "warning",
    "position",
    "wrong_role",
]

MAX_SAMPLES = 1000  # `* N` beyond this is a typo, not a topology
_LIST_SHOWN = 8  # names listed in one message before "and N more"


class Invalid(Exception):
    """A value that does not fit; carried to a Diagnostic by the caller."""

    def __init__(self, code: str, message: str, span: Span, hint: str | None = None):
        super().__init__(message)
        self.diagnostic = Diagnostic("error", code, message, span, hint)


def error(code: str, message: str, span: Span | None, hint: str | None = None) -> Diagnostic:
    return Diagnostic("error", code, message, span, hint)


def warning(code: str, message: str, span: Span | None, hint: str | None = None) -> Diagnostic:
    return Diagnostic("warning", code, message, span, hint)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    candidates = list(candidates)
    folded = [c for c in candidates if c.lower() == word.lower()]
    close = folded or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_LIST_SHOWN])
    return shown + (f" and {len(names) - _LIST_SHOWN} more" if len(names) > _LIST_SHOWN else "")


# ---- values --------------------------------------------------------------------------------


def describe_value(v: ast.Value) -> str:
    if isinstance(v, ast.Bool):
        return "a boolean"
    if isinstance(v, ast.Num):
        return "an integer" if isinstance(v.value, int) else "a number"
    return {
        ast.Str: "a string",
        ast.Env: "env(...)",
        ast.NameValue: f"the name '{getattr(v, 'name', '')}'",
        ast.ListValue: f"a list of {len(getattr(v, 'items', ()))}",
        ast.MapValue: "a map",
    }.get(type(v), "a value")


def _number(
    key: str,
    v: ast.Value,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    integer: bool = False,
) -> int | float:
    kind = "an integer" if integer else "a number"
    # One condition, so that mypy narrows `v` to Num for the code after the raise.
    if not isinstance(v, ast.Num) or (integer and not isinstance(v.value, int)) or not math.isfinite(v.value):
        got = "an infinite number" if isinstance(v, ast.Num) and not integer else describe_value(v)
        raise Invalid("E206", f"'{key}' must be {kind}{_range(lo, hi, lo_open)}, not {got}", v.span)
    x = v.value
    if (lo is not None and (x <= lo if lo_open else x < lo)) or (hi is not None and x > hi):
        raise Invalid("E206", f"'{key}' = {x} is out of range: it must be {kind}{_range(lo, hi, lo_open)}", v.span)
    return float(x) if not integer else int(x)


def _range(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" from {lo:g} to {hi:g}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    return ""


def _bool(key: str, v: ast.Value) -> bool:
    if not isinstance(v, ast.Bool):
        raise Invalid("E206", f"'{key}' must be true or false, not {describe_value(v)}", v.span)
    return v.value


def _str(key: str, v: ast.Value) -> str:
    if not isinstance(v, ast.Str):
        raise Invalid("E206", f"'{key}' must be a string, not {describe_value(v)}", v.span)
    return v.value


def _stop(key: str, v: ast.Value) -> str | list[str]:
    if isinstance(v, ast.ListValue):
        return [_str(key, item) for item in v.items]
    if isinstance(v, ast.Str):
        return v.value
    raise Invalid("E206", f"'{key}' must be a string or a list of strings, not {describe_value(v)}", v.span)


def _text(key: str, v: ast.Value, prompts: Mapping[str, str]) -> str:
    """A string, or a prompt NAME resolved to its text."""
    if isinstance(v, ast.NameValue):
        if v.name not in prompts:
            raise Invalid("E201", f"unknown prompt '{v.name}'", v.span, did_you_mean(v.name, prompts))
        return prompts[v.name]
    if not isinstance(v, ast.Str):
        raise Invalid("E206", f"'{key}' must be a string or a prompt name, not {describe_value(v)}", v.span)
    return v.value


def _regex(key: str, v: ast.Value) -> str:
    """A pattern Python's `re` compiles; the source text is what the graph carries."""
    pattern = _str(key, v)
    try:
        re.compile(pattern)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise Invalid(
            "E206",
            f"'{key}' is not a valid regular expression: {exc.msg}{where}",
            v.span,
            REGEX_HINT if "escape" in exc.msg else None,
        ) from None
    except (RecursionError, OverflowError, ValueError) as exc:  # pathological nesting or repeat counts
        raise Invalid("E206", f"'{key}' is not a valid regular expression: {exc}", v.span) from None
    return pattern


# Two levels of escapes meet in a pattern: the string's (JSON) and the regular expression's.
REGEX_HINT = (
    'in "..." a backslash reaches the pattern only when written twice ("\\\\d+" is \\d+); '
    '"""...""" passes it on as it is'
)


def _price(key: str, v: ast.Value) -> list[float]:
    if not isinstance(v, ast.ListValue) or len(v.items) != 2:
        raise Invalid(
            "E206",
            f"'{key}' must be a list of 2 numbers (USD per million prompt and "
            f"completion tokens), not {describe_value(v)}",
            v.span,
        )
    return [float(_number(key, item, lo=0)) for item in v.items]


_Checker = Callable[[str, ast.Value, Mapping[str, str]], Any]
PARAM_SCHEMA: dict[str, _Checker] = {
    "temperature": lambda k, v, p: float(_number(k, v, lo=0, hi=2)),
    "top_p": lambda k, v, p: float(_number(k, v, lo=0, hi=1)),
    "max_tokens": lambda k, v, p: _number(k, v, lo=1, integer=True),
    "seed": lambda k, v, p: _number(k, v, integer=True),
    "stop": lambda k, v, p: _stop(k, v),
    "system": _text,
    "prompt": _text,
    "min_inputs": lambda k, v, p: _number(k, v, lo=1, integer=True),
    "timeout": lambda k, v, p: float(_number(k, v, lo=0, lo_open=True)),
    "retries": lambda k, v, p: _number(k, v, lo=0, integer=True),
    "cache": lambda k, v, p: _bool(k, v),
    "price": lambda k, v, p: _price(k, v),
    "top_k": lambda k, v, p: _number(k, v, lo=1, integer=True),
    "quorum": lambda k, v, p: _number(k, v, lo=1, integer=True),
    "agree": lambda k, v, p: _bool(k, v),
    "window": lambda k, v, p: _number(k, v, lo=2, integer=True),
    "extract": lambda k, v, p: _regex(k, v),
    "normalize": lambda k, v, p: _bool(k, v),
}
assert set(PARAM_SCHEMA) == set(PARAM_KEYS), "config.PARAM_KEYS and the schema must agree"
assert all(set(keys) <= set(PARAM_KEYS) for keys in ROLE_PARAMS.values())

# Parameters compared with the node's number of inputs (E209).
COUNTED = ("min_inputs", "top_k", "quorum")


def takes(role: str, key: str) -> bool:
    """Whether a node of `role` takes parameter `key` (an unknown role takes everything: E204 says it)."""
    return key in ROLE_PARAMS.get(role, PARAM_KEYS)


_ROLE_NOUNS = {
    "propose": ("a proposer", "proposers"),
    "aggregate": ("an aggregator", "aggregators"),
    "rank": ("a rank node", "rank nodes"),
    "vote": ("a vote", "votes"),
}


def wrong_role(key: str, role: str, who: str) -> tuple[str, str | None]:
    """(message, hint) of E205 for a known key on a role that does not take it; `who` is e.g.
    "node 'a'". The message names the roles that do take it."""
    noun = _ROLE_NOUNS.get(role, (f"a {role}", ""))[0]
    if role == "vote" and key in MODEL_PARAMS:
        return (
            f"'{key}' is a model parameter, and {who} is a vote: it calls no model",
            "a vote takes only min_inputs, extract and normalize",
        )
    takers = [plural for r, (_, plural) in _ROLE_NOUNS.items() if takes(r, key)]
    listed = takers[0] if len(takers) == 1 else ", ".join(takers[:-1]) + " and " + takers[-1]
    return f"'{key}' applies to {listed} only, and {who} is {noun}", None


def convert_param(pair: ast.Pair, prompts: Mapping[str, str], *, where: str) -> Any:
    """The Python value of one `key = value`; raises Invalid. `where`: defaults/model/node/layer/set."""
    key = pair.key
    if key not in PARAM_SCHEMA:
        raise Invalid(
            "E205",
            f"unknown parameter '{key}'",
            pair.key_span,
            did_you_mean(key, PARAM_SCHEMA) or f"parameters: {', '.join(PARAM_KEYS)}",
        )
    if key == "price" and where != "model":
        place = {"defaults": "in defaults", "--set": "with --set"}.get(where, f"on a {where}")
        raise Invalid(
            "E205",
            f"'price' can be set on a model only, not {place}",
            pair.key_span,
            "move it to the `model` statement",
        )
    return PARAM_SCHEMA[key](key, pair.value, prompts)


def _set_twice(pair: ast.Pair, first: Span) -> Diagnostic:
    return error("E202", f"'{pair.key}' is set twice in this block (first at {position(first)})", pair.key_span)


def convert_params(
    params: ast.MapValue | None, prompts: Mapping[str, str], *, where: str, diags: list[Diagnostic]
) -> dict[str, tuple[Any, Span]]:
    """Every valid `key = value` of a block, with the span of its value; the rest become diags."""
    out: dict[str, tuple[Any, Span]] = {}
    if params is None:
        return out
    seen: dict[str, Span] = {}
    for pair in params.pairs:
        if pair.key in seen:
            diags.append(_set_twice(pair, seen[pair.key]))
            continue
        seen[pair.key] = pair.key_span
        try:
            out[pair.key] = (convert_param(pair, prompts, where=where), pair.value.span)
        except Invalid as exc:
            diags.append(exc.diagnostic)
    return out


def position(span: Span) -> str:
    return f"{span.file}:{span.line}:{span.column}"


# ---- provider options -----------------------------------------------------------------------

_SECRET_HEADER_WORDS = ("authorization", "api-key", "api_key", "apikey", "token", "secret")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIXES = (
    "sk-",
    "sk_",
    "gsk_",
    "ghp_",
    "gho_",
    "github_pat_",
    "xoxb-",
    "xoxp-",
    "hf_",
    "AKIA",
    "AIza",
    "Bearer ",
)
ENV_HINT = 'env() takes the variable\'s name, e.g. env("OPENAI_API_KEY")'


def looks_like_key(value: str) -> bool:
    """A known key prefix, or long and high-entropy (lower and upper case and digits mixed)."""
    if value.startswith(_KEY_PREFIXES):
        return True
    return (
        len(value) >= 20
        and any(c.islower() for c in value)
        and any(c.isupper() for c in value)
        and sum(c.isdigit() for c in value) >= 2
    )


def env_ref(key: str, v: ast.Env) -> EnvRef:
    """`env("NAME")` with NAME a variable's name: a key pasted there is E206, shown masked."""
    name = v.name
    if not name:
        raise Invalid("E206", f"'{key}' = env(\"\"): the variable's name is empty", v.span, ENV_HINT)
    if looks_like_key(name):
        raise Invalid(
            "E206",
            f"'{key}' = env(\"{mask_value(name)}\"): this looks like a key, not the name of an environment variable",
            v.span,
            ENV_HINT,
        )
    if not _ENV_NAME.fullmatch(name):
        raise Invalid(
            "E206",
            f"'{key}' = env(\"{mask_value(name)}\"): not a valid environment variable name "
            "(letters, digits and _, not starting with a digit)",
            v.span,
            ENV_HINT,
        )
    return EnvRef(name)


def _str_or_env(key: str, v: ast.Value) -> str | EnvRef:
    if isinstance(v, ast.Env):
        return env_ref(key, v)
    if isinstance(v, ast.Str):
        return v.value
    # Not describe_value(v): a bare name here may be a key pasted without quotes.
    got = "a bare name" if isinstance(v, ast.NameValue) else describe_value(v)
    raise Invalid("E206", f"'{key}' must be a string or env(\"NAME\"), not {got}", v.span)


def _headers(key: str, v: ast.Value) -> dict[str, str | EnvRef]:
    if not isinstance(v, ast.MapValue):
        raise Invalid("E206", f'\'{key}\' must be a map {{ "Header" = "value", ... }}, not {describe_value(v)}', v.span)
    return {p.key: _str_or_env(f"{key}.{p.key}", p.value) for p in v.pairs}


def url_problem(url: str) -> str | None:
    """What is wrong with an API root (urllib's reading of it), or None."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http or https URL (http://HOST[:PORT]/PATH)"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "has an invalid port: it must be a number from 1 to 65535"
    if not parts.hostname:
        return "has no host"
    return None


_REPLICAS_HINT = 'replicas of one server: base_url = ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]'


def _base_url(key: str, v: ast.Value) -> str | EnvRef | tuple[str, ...]:
    """Checked here, not when the first call fails; the URL itself is not echoed (it may hold a password).
    A list is replicas of one server: each item a literal URL, checked alike, none twice."""
    if isinstance(v, ast.ListValue):
        return _replica_urls(key, v)
    value = _str_or_env(key, v)
    problem = url_problem(value) if isinstance(value, str) else None
    if problem:
        raise Invalid("E206", f"'{key}' {problem}", v.span, 'e.g. base_url = "http://10.0.0.5:8000/v1"')
    return value


def _replica_urls(key: str, v: ast.ListValue) -> tuple[str, ...]:
    if not v.items:
        raise Invalid("E206", f"'{key}' is an empty list: name at least one URL", v.span, _REPLICAS_HINT)
    seen: dict[str, Span] = {}
    for i, item in enumerate(v.items, 1):
        if not isinstance(item, ast.Str):
            raise Invalid(
                "E206", f"'{key}' item {i} must be a string URL, not {describe_value(item)}", item.span, _REPLICAS_HINT
            )
        problem = url_problem(item.value)
        if problem:
            raise Invalid("E206", f"'{key}' item {i} {problem}", item.span, _REPLICAS_HINT)
        same = _url_identity(item.value)
        if same in seen:
            raise Invalid(
                "E206",
                f"'{key}' item {i} repeats an earlier URL (first at {position(seen[same])})",
                item.span,
                "each replica once: a URL listed twice would get twice the calls",
            )
        seen[same] = item.span
    return tuple(item.value for item in v.items if isinstance(item, ast.Str))


def _url_identity(url: str) -> str:
    """What makes two URLs the same server: scheme and host case-insensitive, a trailing / ignored."""
    parts = urlsplit(url.rstrip("/"))
    return parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()).geturl()


OPTION_SCHEMA: dict[str, Callable[[str, ast.Value], Any]] = {
    "base_url": _base_url,
    "api_key": _str_or_env,
    "headers": _headers,
    "max_concurrency": lambda k, v: _number(k, v, lo=1, integer=True),
    "timeout": lambda k, v: float(_number(k, v, lo=0, lo_open=True)),
    "retries": lambda k, v: _number(k, v, lo=0, integer=True),
    "max_response_bytes": lambda k, v: _number(k, v, lo=1, integer=True),
}
assert set(OPTION_SCHEMA) == set(PROVIDER_OPTIONS)


def convert_options(decl: ast.ProviderDecl, diags: list[Diagnostic]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if decl.kind.text not in PROVIDER_KINDS:
        diags.append(
            error(
                "E206",
                f"unknown provider kind '{decl.kind.text}'",
                decl.kind.span,
                did_you_mean(decl.kind.text, PROVIDER_KINDS) or f"kinds: {', '.join(PROVIDER_KINDS)}",
            )
        )
    for pair in decl.options.pairs if decl.options else ():
        if pair.key not in OPTION_SCHEMA:
            diags.append(
                error(
                    "E205",
                    f"unknown provider option '{pair.key}'",
                    pair.key_span,
                    did_you_mean(pair.key, OPTION_SCHEMA) or f"options: {', '.join(PROVIDER_OPTIONS)}",
                )
            )
            continue
        if pair.key in out:
            diags.append(error("E202", f"'{pair.key}' is set twice in this block", pair.key_span))
            continue
        try:
            out[pair.key] = OPTION_SCHEMA[pair.key](pair.key, pair.value)
        except Invalid as exc:
            diags.append(exc.diagnostic)
            continue
        diags.extend(_secret_warnings(decl, pair))
    return out


def _secret_warnings(decl: ast.ProviderDecl, pair: ast.Pair) -> list[Diagnostic]:
    hint = 'read it from the environment: api_key = env("MY_PROVIDER_KEY")'
    if pair.key == "api_key" and isinstance(pair.value, ast.Str):
        return [
            warning(
                "W302", f"literal secret in source: the api_key of provider '{decl.name.text}'", pair.value.span, hint
            )
        ]
    if pair.key == "headers" and isinstance(pair.value, ast.MapValue):
        return [
            warning(
                "W302",
                f"literal secret in source: header '{p.key}' of provider '{decl.name.text}'",
                p.value.span,
                f"use env(\"NAME\") for the value of '{p.key}'",
            )
            for p in pair.value.pairs
            if isinstance(p.value, ast.Str) and any(w in p.key.lower() for w in _SECRET_HEADER_WORDS)
        ]
    return []


def secret_spans(diags: Iterable[Diagnostic]) -> list[Span]:
    """Where literal secrets sit in the source, so the loader can mask them before rendering: a
    literal api_key or secret header (W302), a value pasted into env() (E206 with ENV_HINT)."""
    return [d.span for d in diags if d.span is not None and (d.code == "W302" or d.hint == ENV_HINT)]


# ---- roles and samples ----------------------------------------------------------------------


def check_role(decl: ast.NodeDecl | ast.LayerDecl) -> list[Diagnostic]:
    kind = "node" if isinstance(decl, ast.NodeDecl) else "layer"
    role, name = decl.role.text, decl.name.text
    if kind == "layer" and role in ("rank", "vote"):
        # A layer is several model calls side by side; a ranking or a tally is one node.
        return [
            error(
                "E204",
                f"'{role}' is a node's role, not a layer's: layer '{name}' must propose or aggregate",
                decl.role.span,
                f"write `node {name} = {role} {'MODEL ' if role == 'rank' else ''}<- INPUTS`",
            )
        ]
    diags = []
    if role == "vote" and isinstance(decl, ast.NodeDecl) and decl.model is not None:
        diags.append(
            error(
                "E204",
                f"'vote' takes no model: node '{name}' counts its inputs' answers, it calls nothing",
                decl.model.span,
                f"write `node {name} = vote <- INPUTS`",
            )
        )
    if role == "propose" and decl.inputs:
        diags.append(
            error(
                "E204",
                f"'propose' takes no inputs, but {kind} '{name}' has some",
                decl.arrow,
                "a proposer sees only the query: use 'aggregate' to read other answers",
            )
        )
    if role == "aggregate" and not decl.inputs:
        diags.append(
            error(
                "E204",
                f"'aggregate' needs at least one input: {kind} '{name}' has none",
                decl.role.span,
                "name what it reads: `<- NODE, LAYER, ...`; or use 'propose'",
            )
        )
    if role in ("rank", "vote") and not decl.inputs:
        what = "candidates to rank" if role == "rank" else "answers to count"
        diags.append(
            error(
                "E204",
                f"'{role}' needs at least one input: {kind} '{name}' has none",
                decl.role.span,
                f"name its {what}: `<- NODE, LAYER, ...`",
            )
        )
    return diags


def sample_count(member: ast.Member, diags: list[Diagnostic] | None = None) -> int:
    """`* N`, checked: 1..MAX_SAMPLES; anything else counts as 1 (and is an error if diags given)."""
    if member.count is None:
        return 1
    n = member.count.value
    if isinstance(n, int) and 1 <= n <= MAX_SAMPLES:
        return n
    if diags is not None:
        diags.append(
            error(
                "E206", f"the number of samples must be an integer from 1 to {MAX_SAMPLES}, not {n}", member.count.span
            )
        )
    return 1


# ---- budget ---------------------------------------------------------------------------------

BUDGET_KEYS = ("usd", "tokens", "calls")
_BUDGET_SCHEMA: dict[str, Callable[[str, ast.Value], Any]] = {
    "usd": lambda k, v: float(_number(k, v, lo=0, lo_open=True)),
    "tokens": lambda k, v: _number(k, v, lo=0, lo_open=True, integer=True),
    "calls": lambda k, v: _number(k, v, lo=0, lo_open=True, integer=True),
}


def convert_budget(decl: ast.Budget, diags: list[Diagnostic]) -> dict[str, tuple[Any, Span]]:
    """The caps of a `budget` statement that are valid, each with the span of its key."""
    out: dict[str, tuple[Any, Span]] = {}
    seen: dict[str, Span] = {}
    for pair in decl.params.pairs:
        if pair.key not in _BUDGET_SCHEMA:
            diags.append(
                error(
                    "E205",
                    f"unknown budget key '{pair.key}'",
                    pair.key_span,
                    did_you_mean(pair.key, BUDGET_KEYS) or f"keys: {', '.join(BUDGET_KEYS)}",
                )
            )
            continue
        if pair.key in seen:
            diags.append(_set_twice(pair, seen[pair.key]))
            continue
        seen[pair.key] = pair.key_span
        try:
            out[pair.key] = (_BUDGET_SCHEMA[pair.key](f"budget.{pair.key}", pair.value), pair.key_span)
        except Invalid as exc:
            diags.append(exc.diagnostic)
    return out


def check_budget_prices(graph: nx.DiGraph, dead: frozenset[str], usd_at: Span | None) -> list[Diagnostic]:
    """W303: `budget.usd` while a model that some live node calls has no price."""
    if usd_at is None:
        return []
    unpriced: dict[str, None] = {}
    for name, attrs in graph.nodes(data=True):
        if name in dead or attrs.get("model") is None or "price" in attrs["params"]:
            continue
        shown = attrs.get("model_name") or f'{attrs.get("provider")}:"{attrs.get("model")}"'
        unpriced.setdefault(shown)
    if not unpriced:
        return []
    names = list(unpriced)
    which = f"model {names[0]} has" if len(names) == 1 else f"models {listing(names)} have"
    return [
        warning(
            "W303",
            f"budget.usd is set, but {which} no price: "
            f"{'its' if len(names) == 1 else 'their'} calls count as costing nothing",
            usd_at,
            "give each model its price in USD per million tokens: "
            '`model NAME = PROVIDER:"ID" { price = [PROMPT, COMPLETION] }`',
        )
    ]


# ---- graph-level passes --------------------------------------------------------------------


def check_cycles(graph: nx.DiGraph) -> list[Diagnostic]:
    """One E203 per strongly connected knot, listing one cycle through it, `a -> b -> a`."""
    if nx.is_directed_acyclic_graph(graph):
        return []
    diags = []
    for component in nx.strongly_connected_components(graph):
        first = next(iter(component))
        if len(component) == 1 and not graph.has_edge(first, first):
            continue
        edges = nx.find_cycle(graph.subgraph(component), source=min(component))
        path = [u for u, _ in edges] + [edges[0][0]]
        closing = graph.edges[edges[-1]].get("span") or graph.nodes[edges[-1][1]].get("span")
        diags.append(
            error(
                "E203",
                f"cycle: {' -> '.join(path)}",
                closing,
                "a node cannot read its own answer, directly or through others",
            )
        )
    return sorted(diags, key=lambda d: (d.span is None, d.span))


def sinks(graph: nx.DiGraph) -> list[str]:
    return [n for n, degree in graph.out_degree() if degree == 0]


def dead_nodes(graph: nx.DiGraph, output: str) -> frozenset[str]:
    """One reverse BFS from the output: whatever it does not reach is dead."""
    alive = nx.ancestors(graph, output)
    alive.add(output)
    return frozenset(n for n in graph if n not in alive)


def check_dead(graph: nx.DiGraph, output: str, dead: frozenset[str]) -> list[Diagnostic]:
    return [
        warning(
            "W301",
            f"node '{n}' does not reach the output '{output}': it will not run",
            graph.nodes[n].get("span"),
            "read it from an aggregator, or remove it",
        )
        for n in graph
        if n in dead
    ]
