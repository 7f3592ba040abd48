"""The syntax tree: frozen dataclasses, each carrying the Span it was parsed from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..errors import Span

__all__ = [
    "Bool",
    "Budget",
    "Defaults",
    "Env",
    "Include",
    "LayerDecl",
    "ListValue",
    "MapValue",
    "Member",
    "ModelDecl",
    "ModelRef",
    "Module",
    "Name",
    "NameValue",
    "NodeDecl",
    "Num",
    "Output",
    "Pair",
    "PromptDecl",
    "ProviderDecl",
    "Ref",
    "Statement",
    "Str",
    "Value",
]


# ---- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Env:
    """`env("NAME")`: read when a run starts, never here."""

    name: str
    span: Span


@dataclass(frozen=True)
class NameValue:
    """A bare name used as a value: a prompt NAME for `system`/`prompt`, an error elsewhere."""

    name: str
    span: Span


@dataclass(frozen=True)
class ListValue:
    items: tuple["Value", ...]
    span: Span


@dataclass(frozen=True)
class Pair:
    key: str
    key_span: Span
    value: "Value"
    span: Span


@dataclass(frozen=True)
class MapValue:
    pairs: tuple[Pair, ...]
    span: Span


Value = Union[Str, Num, Bool, Env, NameValue, ListValue, MapValue]


# ---- references ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    text: str
    span: Span


@dataclass(frozen=True)
class ModelRef:
    """A declared model's NAME (`name` set), or an inline `PROVIDER:"MODEL-ID"` (both others set)."""

    span: Span
    name: Name | None = None
    provider: Name | None = None
    model_id: Str | None = None

    @property
    def is_inline(self) -> bool:
        return self.name is None


@dataclass(frozen=True)
class Ref:
    """An input or output reference: `a`, `L`, `L.big`, `L.name.2`."""

    text: str
    span: Span


@dataclass(frozen=True)
class Member:
    """One layer member: `MODELREF`, `MODELREF * N`, or `NAME = MODELREF [* N]`."""

    model: ModelRef
    span: Span
    name: Name | None = None
    count: Num | None = None


# ---- statements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderDecl:
    name: Name
    kind: Name
    options: MapValue | None
    span: Span


@dataclass(frozen=True)
class ModelDecl:
    name: Name
    ref: ModelRef
    params: MapValue | None
    span: Span


@dataclass(frozen=True)
class PromptDecl:
    name: Name
    text: Str
    span: Span


@dataclass(frozen=True)
class Defaults:
    params: MapValue
    span: Span


@dataclass(frozen=True)
class NodeDecl:
    """`role` is propose, aggregate, rank or vote; `model` is None only for a `vote` written
    without one (the grammar requires it for the other roles)."""

    name: Name
    role: Name
    model: ModelRef | None
    inputs: tuple[Ref, ...]
    arrow: Span | None  # the `<- ...` part, for E204
    params: MapValue | None
    span: Span


@dataclass(frozen=True)
class LayerDecl:
    name: Name
    role: Name
    members: tuple[Member, ...]
    inputs: tuple[Ref, ...]
    arrow: Span | None
    params: MapValue | None
    span: Span


@dataclass(frozen=True)
class Budget:
    """`budget { usd = X, tokens = N, calls = M }`: the caps of one query's run."""

    params: MapValue
    keyword: Span  # `budget`: where E202 points for a second statement
    span: Span


@dataclass(frozen=True)
class Output:
    ref: Ref
    span: Span


@dataclass(frozen=True)
class Include:
    path: Str
    span: Span


Statement = Union[ProviderDecl, ModelDecl, PromptDecl, Defaults, NodeDecl, LayerDecl, Output, Include, Budget]


@dataclass(frozen=True)
class Module:
    """One parsed file."""

    file: str
    statements: tuple[Statement, ...]
    end: Span  # just after the last token: where a missing statement would go
