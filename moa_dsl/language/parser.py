"""Text -> syntax tree (`syntax.Module`). lark's errors become E101 diagnostics, in words.

`parse(text, filename)` never raises on bad input: it returns the module (None after a syntax
error) and the diagnostics. Names, types and ranges are the validator's business.
"""

from __future__ import annotations

import functools
import json
import re
import textwrap
from pathlib import Path
from typing import Any, Callable, cast

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ..errors import Diagnostic
from . import syntax as ast
from .syntax import Span

__all__ = ["dedent_triple", "describe", "KEYWORDS", "MAX_DEPTH", "parse", "parse_value"]

KEYWORDS = (
    "provider",
    "model",
    "prompt",
    "defaults",
    "node",
    "layer",
    "output",
    "include",
    "propose",
    "aggregate",
    "rank",
    "vote",
    "budget",
    "true",
    "false",
    "env",
)
_STATEMENT_KEYWORDS = ("PROVIDER", "MODEL", "PROMPT", "DEFAULTS", "NODE", "LAYER", "OUTPUT", "INCLUDE", "BUDGET")
_PUNCTUATION = {
    "EQUAL": "=",
    "COLON": ":",
    "COMMA": ",",
    "DOT": ".",
    "STAR": "*",
    "ARROW": "<-",
    "LPAR": "(",
    "RPAR": ")",
    "LBRACK": "[",
    "RBRACK": "]",
    "LBRACE": "{",
    "RBRACE": "}",
}
_WORDS = {
    "NAME": "a name",
    "MEMBER_PART": "a member name",
    "NUMBER": "a number",
    "STRING": "a string",
    "TRIPLE_STRING": "a string",
    "$END": "end of input",
}


def _grammar_path() -> Path:
    """Installed from a wheel the grammar sits in the package; in a source tree, beside it."""
    package = Path(__file__).resolve().parent.parent  # moa_dsl/
    for candidate in (package / "grammar" / "moa.lark", package.parent / "grammar" / "moa.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("moa.lark not found next to moa_dsl: the installation is broken")


@functools.cache
def _lark() -> Lark:
    return Lark.open(
        str(_grammar_path()), parser="lalr", propagate_positions=True, maybe_placeholders=True, start=["start", "value"]
    )


def parse(text: str, filename: str = "<string>") -> tuple[ast.Module | None, list[Diagnostic]]:
    def module(builder: _Builder, tree: Any) -> ast.Module:
        statements = tuple(builder.statement(child) for child in tree.children)
        end = statements[-1].span.end() if statements else Span(filename, 1, 1, 1, 1)
        return ast.Module(filename, statements, end)

    return _parse(text, filename, "start", module)


def parse_value(text: str, filename: str = "<string>") -> tuple[ast.Value | None, list[Diagnostic]]:
    """One literal (for `--set KEY=VALUE`), by the same grammar."""
    value, errors = _parse(text, filename, "value", lambda builder, tree: builder.value(tree))
    return (None if errors else value), errors


def _parse(
    text: str, filename: str, start: str, build: Callable[["_Builder", Any], Any]
) -> tuple[Any, list[Diagnostic]]:
    """Text -> lark tree -> AST from the `start` rule; every failure becomes an E101 diagnostic."""
    try:
        tree = _lark().parse(text, start=start)
    except UnexpectedInput as exc:
        return None, [_syntax_error(exc, text, filename)]
    builder = _Builder(filename)
    try:
        result = build(builder, tree)
    except _TooDeep as exc:
        return None, [Diagnostic("error", "E101", f"values nested too deeply (more than {MAX_DEPTH} levels)", exc.span)]
    return result, builder.errors


# ---- syntax errors in words ---------------------------------------------------------------


def describe(terminal: str) -> str:
    if terminal in _WORDS:
        return _WORDS[terminal]
    if terminal in _PUNCTUATION:
        return f"'{_PUNCTUATION[terminal]}'"
    if terminal.lower() in KEYWORDS:
        return f"'{terminal.lower()}'"
    return terminal


def _expected_words(expected: Any) -> str:
    names = set(expected)
    words: list[str] = []
    if set(_STATEMENT_KEYWORDS) <= names:
        names -= set(_STATEMENT_KEYWORDS)
        words.append("a statement (provider, model, prompt, defaults, node, layer, output, include, budget)")
    words += sorted({describe(n) for n in names if not n.startswith("__")})
    words = [w for w in words if w != "end of input"] + (["end of input"] if "end of input" in words else [])
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _syntax_error(exc: UnexpectedInput, text: str, filename: str) -> Diagnostic:
    if isinstance(exc, UnexpectedToken):
        return _unexpected_token(exc, text, filename)
    if isinstance(exc, UnexpectedCharacters):
        return _unexpected_char(exc, text, filename)
    line, col = getattr(exc, "line", 1) or 1, getattr(exc, "column", 1) or 1
    return Diagnostic("error", "E101", "syntax error", Span(filename, line, col, line, col + 1))


def _accepted(exc: UnexpectedToken) -> Any:
    """What the parser would really take here. `exc.expected` comes from an LALR state that may be
    shared by several contexts (a list's `]` in a map); feeding each candidate tells them apart."""
    try:
        return exc.interactive_parser.accepts() or exc.expected
    except Exception:  # noqa: BLE001 - only a better message is at stake; fall back to lark's
        return exc.expected


def _unexpected_token(exc: UnexpectedToken, text: str, filename: str) -> Diagnostic:
    tok = exc.token
    expected = _expected_words(_accepted(exc))
    if tok.type == "$END":
        # lark's end token borrows the last token's position: the caret goes just after it.
        line, col = (tok.end_line or 1, tok.end_column or 1) if tok.end_line else (1, 1)
        return Diagnostic(
            "error",
            "E101",
            f"unexpected end of input: expected {expected}",
            Span(filename, line, col, line, col),
            _RANK_HINT if _RANK_BEFORE.search(text[-200:]) else None,
        )
    span = Span(filename, tok.line, tok.column, tok.end_line, tok.end_column)
    hint = None
    if str(tok).lower() in KEYWORDS and tok.type != "NAME":
        what = f"keyword '{tok}'"
        if "NAME" in _accepted(exc):
            hint = f"'{tok}' is a reserved keyword and cannot be used as a name"
    else:
        what = describe(tok.type) if tok.type in _PUNCTUATION else f"{_token_kind(tok)} {_show(tok)}".rstrip()
    if hint is None and _after_rank(tok, text):
        hint = _RANK_HINT
    return Diagnostic("error", "E101", f"unexpected {what}: expected {expected}", span, hint)


_RANK_BEFORE = re.compile(r"=[ \t\f\r\n]*rank[ \t\f\r\n]*$")
_RANK_HINT = "a rank node names the model that ranks: `node NAME = rank MODEL <- INPUTS`"


def _after_rank(tok: Token, text: str) -> bool:
    """Whether the token stands right after `= rank`, where the ranking model belongs."""
    start = getattr(tok, "start_pos", None)
    return isinstance(start, int) and _RANK_BEFORE.search(text[max(0, start - 200) : start]) is not None


def _token_kind(tok: Token) -> str:
    return {
        "NAME": "name",
        "MEMBER_PART": "name",
        "NUMBER": "number",
        "STRING": "string",
        "TRIPLE_STRING": "string",
    }.get(tok.type, "token")


def _show(tok: Token) -> str:
    """A string's content is never echoed: it may be a key pasted in the wrong place."""
    if tok.type in ("STRING", "TRIPLE_STRING"):
        return ""
    value = str(tok)
    return f"'{value}'" if len(value) <= 30 else f"'{value[:27]}...'"


def _unexpected_char(exc: UnexpectedCharacters, text: str, filename: str) -> Diagnostic:
    # lark declares `pos_in_stream = None` on UnexpectedInput without an annotation, so mypy reads
    # it as always None; UnexpectedCharacters always sets it to the lexer's int position.
    pos, line, col = cast(int, exc.pos_in_stream), exc.line, exc.column
    char = text[pos] if 0 <= pos < len(text) else ""
    if char == '"':
        if text[max(0, pos - 2) : pos] == '""':  # the lexer took `""` as an empty string
            col -= 2
            return Diagnostic(
                "error",
                "E101",
                "unterminated triple-quoted string",
                Span(filename, line, col, line, col + 3),
                'close it with """',
            )
        return Diagnostic(
            "error",
            "E101",
            "unterminated string",
            Span(filename, line, col, line, col + 1),
            'close it with " on the same line, or use """...""" for several lines',
        )
    expected = _expected_words(exc.allowed or ())
    word = _WORD.match(text, pos)
    if word:  # where only keywords fit, a name is not even a token: still call it a name
        what, width = f"name '{word.group()[:30]}'", len(word.group())
    else:
        what, width = "character " + (repr(char) if char.isprintable() and char != "'" else ascii(char)), 1
    return Diagnostic(
        "error", "E101", f"unexpected {what}: expected {expected}", Span(filename, line, col, line, col + width)
    )


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---- tree -> syntax tree ------------------------------------------------------------------

MAX_DEPTH = 64  # nested lists/maps; far beyond any real use, far below Python's recursion limit


class _TooDeep(Exception):
    def __init__(self, span: Span):
        self.span = span


def _pos(value: int | None) -> int:
    """A token's line or column; lark types them Optional, but a token from the parser always has
    them. Should one be missing, point at the start (1-based) rather than build a Span with None."""
    return 1 if value is None else value


def _token(node: Tree | Token) -> Token:
    """Where the grammar puts a terminal; a subtree there is a grammar/builder mismatch, a bug."""
    if not isinstance(node, Token):
        raise AssertionError(f"expected a token, got tree {node.data}")
    return node


class _Builder:
    """Builds only; the one thing it checks is what a lark token cannot: string escapes."""

    def __init__(self, filename: str):
        self.file = filename
        self.errors: list[Diagnostic] = []

    def span(self, node: Tree | Token) -> Span:
        if isinstance(node, Token):
            return Span(self.file, _pos(node.line), _pos(node.column), _pos(node.end_line), _pos(node.end_column))
        m = node.meta
        return Span(self.file, m.line, m.column, m.end_line, m.end_column)

    def name(self, tok: Token) -> ast.Name:
        # The contextual lexer reads a keyword as a NAME where only a name fits: reserve it here.
        if str(tok) in KEYWORDS:
            self.errors.append(
                Diagnostic(
                    "error",
                    "E101",
                    f"unexpected keyword '{tok}': expected a name",
                    self.span(tok),
                    f"'{tok}' is a reserved keyword and cannot be a name",
                )
            )
        return ast.Name(str(tok), self.span(tok))

    def role(self, t: Tree) -> ast.Name:
        tok = t.children[0]
        return ast.Name(str(tok), self.span(tok))

    def statement(self, tree: Tree) -> ast.Statement:
        handler: Callable[[Tree, list[Any]], ast.Statement] = getattr(self, f"_{tree.data}")
        return handler(tree, tree.children)

    def _provider_stmt(self, t: Tree, c: list[Any]) -> ast.ProviderDecl:
        return ast.ProviderDecl(self.name(c[1]), self.name(c[3]), self.opt_map(c[4]), self.span(t))

    def _model_stmt(self, t: Tree, c: list[Any]) -> ast.ModelDecl:
        return ast.ModelDecl(self.name(c[1]), self.modelref(c[3]), self.opt_map(c[4]), self.span(t))

    def _prompt_stmt(self, t: Tree, c: list[Any]) -> ast.PromptDecl:
        return ast.PromptDecl(self.name(c[1]), self.string(c[3]), self.span(t))

    def _defaults_stmt(self, t: Tree, c: list[Any]) -> ast.Defaults:
        return ast.Defaults(self.map(c[1]), self.span(t))

    def _node_stmt(self, t: Tree, c: list[Any]) -> ast.NodeDecl:
        inputs, arrow = self.inputs(c[5])
        return ast.NodeDecl(
            self.name(c[1]), self.role(c[3]), self.modelref(c[4]), inputs, arrow, self.opt_map(c[6]), self.span(t)
        )

    def _vote_node_stmt(self, t: Tree, c: list[Any]) -> ast.NodeDecl:
        # A MODELREF after `vote` is parsed so that the validator can point at it (E204).
        inputs, arrow = self.inputs(c[5])
        model = None if c[4] is None else self.modelref(c[4])
        return ast.NodeDecl(self.name(c[1]), self.role(c[3]), model, inputs, arrow, self.opt_map(c[6]), self.span(t))

    def _layer_stmt(self, t: Tree, c: list[Any]) -> ast.LayerDecl:
        members = tuple(self.member(m) for m in c[5].children if isinstance(m, Tree))
        inputs, arrow = self.inputs(c[7])
        return ast.LayerDecl(self.name(c[1]), self.role(c[3]), members, inputs, arrow, self.opt_map(c[8]), self.span(t))

    def _output_stmt(self, t: Tree, c: list[Any]) -> ast.Output:
        return ast.Output(self.ref(c[1]), self.span(t))

    def _include_stmt(self, t: Tree, c: list[Any]) -> ast.Include:
        return ast.Include(self.string(c[1]), self.span(t))

    def _budget_stmt(self, t: Tree, c: list[Any]) -> ast.Budget:
        return ast.Budget(self.map(c[1]), self.span(c[0]), self.span(t))

    # -- parts
    def modelref(self, t: Tree) -> ast.ModelRef:
        if t.data == "model_name":
            return ast.ModelRef(self.span(t), name=self.name(_token(t.children[0])))
        provider, _, model_id = t.children
        return ast.ModelRef(self.span(t), provider=self.name(_token(provider)), model_id=self.string(model_id))

    def member(self, t: Tree) -> ast.Member:
        c = t.children
        if t.data == "named_member":
            name, ref, count = self.name(_token(c[0])), c[2], c[3]
        else:
            name, ref, count = None, c[0], c[1]
        num = None
        if count is not None:
            tok = count.children[1]
            num = ast.Num(_number(str(tok)), self.span(tok))
        return ast.Member(self.modelref(ref), self.span(t), name=name, count=num)

    def inputs(self, t: Tree | None) -> tuple[tuple[ast.Ref, ...], Span | None]:
        if t is None:
            return (), None
        return tuple(self.ref(r) for r in t.children if isinstance(r, Tree)), self.span(t)

    def ref(self, t: Tree) -> ast.Ref:
        self.name(_token(t.children[0]))  # reserved-keyword check
        return ast.Ref("".join(str(tok) for tok in t.children), self.span(t))

    def opt_map(self, t: Tree | None) -> ast.MapValue | None:
        return None if t is None else self.map(t)

    def map(self, t: Tree, depth: int = 0) -> ast.MapValue:
        pairs = []
        for p in t.children:
            if not isinstance(p, Tree):
                continue
            key, _, value = p.children
            if isinstance(key, Tree):
                k = self.string(key)
                key_text, key_span = k.value, k.span
            else:
                key_text, key_span = str(key), self.span(key)
            pairs.append(ast.Pair(key_text, key_span, self.value(value, depth), self.span(p)))
        return ast.MapValue(tuple(pairs), self.span(t))

    def value(self, t: Tree, depth: int = 0) -> ast.Value:
        kind, span = t.data, self.span(t)
        if depth > MAX_DEPTH:
            raise _TooDeep(span)
        if kind == "string":
            return self.string(t)
        if kind == "number":
            return ast.Num(_number(str(t.children[0])), span)
        if kind in ("true", "false"):
            return ast.Bool(kind == "true", span)
        if kind == "name_value":
            return ast.NameValue(str(t.children[0]), span)
        if kind == "list":
            return ast.ListValue(tuple(self.value(v, depth + 1) for v in t.children if isinstance(v, Tree)), span)
        if kind == "map":
            return self.map(t, depth + 1)
        if kind == "env":
            return ast.Env(self.string(t.children[2]).value, span)
        raise AssertionError(f"unknown value node {kind}")  # a grammar/builder mismatch, a bug

    def string(self, t: Tree) -> ast.Str:
        tok = _token(t.children[0])
        span = self.span(tok)
        if tok.type == "TRIPLE_STRING":
            return ast.Str(dedent_triple(str(tok)[3:-3]), span)
        try:
            return ast.Str(json.loads(str(tok), strict=False), span)
        except json.JSONDecodeError as exc:
            # The token never spans lines, so the column of the bad escape is start + offset.
            bad = str(tok)[exc.pos : exc.pos + 2]
            col, line = _pos(tok.column) + exc.pos, _pos(tok.line)
            self.errors.append(
                Diagnostic(
                    "error",
                    "E101",
                    f"invalid escape '{bad}' in string",
                    Span(self.file, line, col, line, col + len(bad)),
                    r"JSON escapes only: \" \\ \/ \b \f \n \r \t \uXXXX",
                )
            )
            return ast.Str(str(tok)[1:-1], span)


def dedent_triple(body: str) -> str:
    """A newline right after the opening quotes is dropped, then the common indentation."""
    if body.startswith("\r\n"):
        body = body[2:]
    elif body.startswith("\n"):
        body = body[1:]
    return textwrap.dedent(body)


def _number(text: str) -> int | float:
    if any(ch in text for ch in ".eE"):
        return float(text)
    try:
        return int(text)
    except ValueError:  # more digits than Python converts; out of every range anyway
        return float(text)
