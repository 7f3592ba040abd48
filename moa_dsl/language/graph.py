"""Syntax tree (all files, includes spliced in order) -> `nx.DiGraph`, names resolved.

One graph node per LLM call, attributes exactly as docs/architecture.md fixes them. Building
resolves every name, so the diagnostics of name resolution (E201, E202), of values (E205, E206)
and of roles (E204, E209) come out of here, each reported once; `validate.check_graph` does
the whole-graph checks afterwards. On bad input the graph is still built, as far as it goes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import networkx as nx

from ..config import BUILTIN_PARAMS, RANK_PROMPT, REFERENCE_PROMPT, ProviderConfig, builtin_providers
from ..errors import Diagnostic
from . import syntax as ast
from . import validate as v
from .syntax import Span

__all__ = ["build", "Built", "resolve_output", "sanitize"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_MAX_HINTS = 50  # did-you-mean is linear in the names known: bound it on pathological files


def sanitize(model_id: str) -> str:
    """An inline model id as a member name: every character outside [A-Za-z0-9_] becomes `_`."""
    return _UNSAFE.sub("_", model_id) or "_"  # "" is E206; its member still needs a name


@dataclass
class _Model:
    provider: str
    model_id: str
    model_name: str | None
    params: dict[str, tuple[Any, Span]] = field(default_factory=dict)


def _inline(ref: ast.ModelRef) -> tuple[ast.Name, ast.Str]:
    """The PROVIDER and MODEL-ID of an inline reference; the grammar sets both or neither."""
    if ref.provider is None or ref.model_id is None:  # a named ref here is a builder bug
        raise AssertionError('expected an inline PROVIDER:"MODEL-ID" reference')
    return ref.provider, ref.model_id


@dataclass
class Built:
    graph: nx.DiGraph
    diagnostics: list[Diagnostic]
    output: ast.Output | None
    budget_usd_at: Span | None = None  # where `budget { usd = ... }` is, for W303 once dead nodes are known


class _Builder:
    def __init__(self, statements: Sequence[ast.Statement]):
        self.statements = statements
        self.diags: list[Diagnostic] = []
        self.hints_left = _MAX_HINTS
        self.e209_at: set[Span] = set()
        self.param_spans: dict[str, dict[str, Span]] = {}  # node -> where its params were set, for E209
        self.graph = nx.DiGraph()

    # -- helpers
    def unknown(self, what: str, name: str, span: Span, known: Iterable[str]) -> None:
        hint = None
        if self.hints_left > 0:
            self.hints_left -= 1
            hint = v.did_you_mean(name, known)
        self.diags.append(v.error("E201", f"unknown {what} '{name}'", span, hint))

    def define(self, table: dict[str, Any], what: str, name: ast.Name, value: Any) -> bool:
        if name.text in table:
            first = table[name.text]
            self.diags.append(
                v.error(
                    "E202", f"{what} '{name.text}' is defined twice (first at {v.position(first.name.span)})", name.span
                )
            )
            return False
        table[name.text] = value
        return True

    # -- passes
    def build(self) -> Built:
        decls = self.collect()
        self.providers = self.provider_configs()
        self.prompts = {name: d.text.value for name, d in self.prompt_decls.items()}
        self.defaults: dict[str, tuple[Any, Span]] = {}
        for d in self.defaults_decls:
            self.defaults.update(v.convert_params(d.params, self.prompts, where="defaults", diags=self.diags))
        self.models = {name: self.model(d) for name, d in self.model_decls.items()}
        self.members: dict[str, list[str]] = {}
        for decl in decls:
            self.add_nodes(decl)
        for decl in decls:
            self.connect(decl)
        # Every declared provider is kept (e.g. for `moa eval --judge`); of the built-ins only those
        # a node uses. The runner builds and checks keys only for the providers its live nodes use.
        kept = {p for _, p in self.graph.nodes(data="provider") if p in self.providers}
        kept |= self.provider_decls.keys() & self.providers.keys()
        self.graph.graph["providers"] = {p: self.providers[p] for p in sorted(kept)}
        budget = v.convert_budget(self.budgets[0], self.diags) if self.budgets else {}
        self.graph.graph["budget"] = {key: value for key, (value, _) in budget.items()}
        return Built(
            self.graph,
            self.diags,
            self.outputs[0] if self.outputs else None,
            budget["usd"][1] if "usd" in budget else None,
        )

    def collect(self) -> list[ast.NodeDecl | ast.LayerDecl]:
        self.provider_decls: dict[str, ast.ProviderDecl] = {}
        self.model_decls: dict[str, ast.ModelDecl] = {}
        self.prompt_decls: dict[str, ast.PromptDecl] = {}
        self.defaults_decls: list[ast.Defaults] = []
        self.outputs: list[ast.Output] = []
        self.budgets: list[ast.Budget] = []
        table: dict[str, ast.NodeDecl | ast.LayerDecl] = {}
        for s in self.statements:
            if isinstance(s, ast.ProviderDecl):
                self.define(self.provider_decls, "provider", s.name, s)
            elif isinstance(s, ast.ModelDecl):
                self.define(self.model_decls, "model", s.name, s)
            elif isinstance(s, ast.PromptDecl):
                self.define(self.prompt_decls, "prompt", s.name, s)
            elif isinstance(s, ast.Defaults):
                self.defaults_decls.append(s)
            elif isinstance(s, (ast.NodeDecl, ast.LayerDecl)):
                self.define(table, "node" if isinstance(s, ast.NodeDecl) else "layer", s.name, s)
            elif isinstance(s, ast.Output):
                if self.outputs:
                    self.diags.append(
                        v.error(
                            "E202", f"the output is set twice (first at {v.position(self.outputs[0].span)})", s.span
                        )
                    )
                else:
                    self.outputs.append(s)
            elif isinstance(s, ast.Budget):
                if self.budgets:  # one per topology, includes and all: two would leave the cap unclear
                    self.diags.append(
                        v.error(
                            "E202",
                            f"the budget is set twice (first at {v.position(self.budgets[0].keyword)})",
                            s.keyword,
                            "merge the two into one `budget { ... }` statement",
                        )
                    )
                else:
                    self.budgets.append(s)
        return list(table.values())

    def provider_configs(self) -> dict[str, ProviderConfig]:
        builtins = builtin_providers()
        configs = dict(builtins)
        for name, decl in self.provider_decls.items():
            options = v.convert_options(decl, self.diags)
            kind = decl.kind.text
            # Start from the built-in of the same name (if it is the same kind), else the kind's own.
            same = builtins.get(name)
            base = same if same is not None and same.kind == kind else builtins.get(kind, ProviderConfig(name, kind))
            configs[name] = ProviderConfig(
                name=name,
                kind=kind,
                base_url=options.get("base_url", base.base_url),
                # Never inherited: a key goes only where the statement says (an inherited OPENAI_API_KEY
                # would be sent to whatever base_url the statement names).
                api_key=options.get("api_key"),
                headers=dict(options.get("headers", base.headers)),
                max_concurrency=options.get("max_concurrency", base.max_concurrency),
                timeout=float(options.get("timeout", base.timeout)),
                retries=int(options.get("retries", base.retries)),
                max_response_bytes=int(options.get("max_response_bytes", base.max_response_bytes)),
            )
        return configs

    def model(self, decl: ast.ModelDecl) -> _Model:
        ref = decl.ref
        self.check_provider(ref)
        params = v.convert_params(decl.params, self.prompts, where="model", diags=self.diags)
        return _Model(_inline(ref)[0].text, self.model_id(ref), decl.name.text, params)

    def check_provider(self, ref: ast.ModelRef) -> None:
        if ref.provider is not None and ref.provider.text not in self.providers:
            self.unknown("provider", ref.provider.text, ref.provider.span, self.providers)

    def resolve_model(self, ref: ast.ModelRef) -> _Model | None:
        if ref.name is not None:
            model = self.models.get(ref.name.text)
            if model is None:
                self.unknown("model", ref.name.text, ref.name.span, self.models)
            return model
        self.check_provider(ref)
        return _Model(_inline(ref)[0].text, self.model_id(ref), None)

    def model_id(self, ref: ast.ModelRef) -> str:
        """The id sent to the provider. A relative GGUF path for the embedded runtime is relative to
        the file that names it, as includes are, not to wherever `moa` happens to run."""
        provider, given = _inline(ref)
        model_id = given.value
        if not model_id:
            self.diags.append(
                v.error("E206", "empty model id", given.span, f'name the model: {provider.text}:"MODEL-ID"')
            )
        cfg = self.providers.get(provider.text)
        where = given.span.file
        if (
            cfg is not None
            and cfg.kind == "local"
            and ("/" in model_id or model_id.lower().endswith(".gguf"))
            and not os.path.isabs(model_id)
            and not model_id.startswith("~")
            and os.path.isfile(where)
        ):
            return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(where)), model_id))
        return model_id

    # -- nodes
    def add_nodes(self, decl: ast.NodeDecl | ast.LayerDecl) -> None:
        self.diags.extend(v.check_role(decl))
        where = "node" if isinstance(decl, ast.NodeDecl) else "layer"
        own = v.convert_params(decl.params, self.prompts, where=where, diags=self.diags)
        role = decl.role.text
        for pair in decl.params.pairs if decl.params else ():
            if pair.key in own and not v.takes(role, pair.key):
                message, hint = v.wrong_role(pair.key, role, f"{where} '{decl.name.text}'")
                self.diags.append(v.error("E205", message, pair.key_span, hint))
        if isinstance(decl, ast.NodeDecl):
            # A vote calls no model; one written anyway is E204 (check_role), not resolved too.
            model = self.resolve_model(decl.model) if role != "vote" and decl.model is not None else None
            self.add_node(decl.name.text, decl, model, own, span=decl.span)
            return
        names = []
        resolved: dict[int, _Model | None] = {}  # once per member, not per sample: one E201 each
        for full, member, sample in self.expand(decl):
            if id(member) not in resolved:
                resolved[id(member)] = self.resolve_model(member.model)
            self.add_node(full, decl, resolved[id(member)], own, span=member.span, sample=sample, layer=decl.name.text)
            names.append(full)
        self.members[decl.name.text] = names

    def expand(self, layer: ast.LayerDecl) -> list[tuple[str, ast.Member, int | None]]:
        """Member node names: `L.name`, or `L.name.1..k` where a name occurs k > 1 times."""
        bases, counts = [], []
        first: dict[str, tuple[Span, bool]] = {}  # base name -> where it first occurs, named explicitly?
        for m in layer.members:
            if m.name is not None:
                base, at = m.name.text, m.name.span
            elif m.model.name is not None:
                base, at = m.model.name.text, m.model.name.span
            else:
                base, at = sanitize(_inline(m.model)[1].value), m.span
            # Several unnamed samples of one model are numbered (L.m.1, L.m.2); a name given
            # explicitly must not be renamed that way behind the user's back.
            if base in first and (m.name is not None or first[base][1]):
                self.diags.append(
                    v.error(
                        "E202",
                        f"member '{base}' is defined twice in layer "
                        f"'{layer.name.text}' (first at {v.position(first[base][0])})",
                        at,
                    )
                )
            first.setdefault(base, (at, m.name is not None))
            bases.append(base)
            counts.append(v.sample_count(m, self.diags))
        totals: dict[str, int] = {}
        for base, n in zip(bases, counts, strict=False):
            totals[base] = totals.get(base, 0) + n
        seen: dict[str, int] = {}
        out: list[tuple[str, ast.Member, int | None]] = []
        for m, base, n in zip(layer.members, bases, counts, strict=False):
            for _ in range(n):
                if totals[base] == 1:
                    out.append((f"{layer.name.text}.{base}", m, None))
                else:
                    seen[base] = seen.get(base, 0) + 1
                    out.append((f"{layer.name.text}.{base}.{seen[base]}", m, seen[base]))
        return out

    def add_node(
        self,
        name: str,
        decl: ast.NodeDecl | ast.LayerDecl,
        model: _Model | None,
        own: dict[str, tuple[Any, Span]],
        *,
        span: Span,
        sample: int | None = None,
        layer: str | None = None,
    ) -> None:
        if name in self.graph:  # a member name that collides with another layer's member
            self.diags.append(
                v.error(
                    "E202",
                    f"node '{name}' is defined twice (first at {v.position(self.graph.nodes[name]['span'])})",
                    span,
                )
            )
            return
        role = decl.role.text
        params = self.builtin_params(role, model)
        spans: dict[str, Span] = {}
        for level in (self.defaults, model.params if model else {}, own):
            for key, (value, vspan) in level.items():
                # A key from defaults or a model applies only where the role takes it. A `prompt`
                # from there is a synthesis instruction: a rank node keeps its ranking one unless
                # its own block says otherwise (the runtime reads the reply as `[i] > [j]`).
                if not v.takes(role, key) or (role == "rank" and key == "prompt" and level is not own):
                    continue
                params[key], spans[key] = value, vspan
        if sample is not None and "seed" in params:
            params["seed"] = params["seed"] + sample - 1
        if role == "vote":  # counts answers, calls nothing
            provider, model_id, model_name = None, None, None
        else:
            provider = model.provider if model else "?"
            model_id, model_name = (model.model_id, model.model_name) if model else ("?", None)
        self.graph.add_node(
            name,
            role=role,
            provider=provider,
            model=model_id,
            model_name=model_name,
            sample=sample,
            layer=layer,
            inputs=(),
            params=params,
            span=span,
        )
        self.param_spans[name] = spans  # for E209, once the inputs are known

    def builtin_params(self, role: str, model: _Model | None) -> dict[str, Any]:
        """A node's parameters before defaults, its model and its own block are applied."""
        params: dict[str, Any] = {}
        if role != "vote":
            config = self.providers.get(model.provider) if model else None
            params = {k: BUILTIN_PARAMS[k] for k in ("temperature", "max_tokens", "cache")}
            params["timeout"] = config.timeout if config else 120.0
            params["retries"] = config.retries if config else 3
        if role in ("aggregate", "rank"):
            params["prompt"] = REFERENCE_PROMPT if role == "aggregate" else RANK_PROMPT
        if role != "propose":
            params["min_inputs"] = BUILTIN_PARAMS["min_inputs"]
        if role == "rank":
            params["top_k"] = BUILTIN_PARAMS["top_k"]
        if role == "vote":
            params["normalize"] = BUILTIN_PARAMS["normalize"]
        return params

    def connect(self, decl: ast.NodeDecl | ast.LayerDecl) -> None:
        inputs: list[str] = []
        spans: list[Span] = []
        complete = True  # an unknown input is E201 already; do not count it again as E209
        for ref in decl.inputs:
            names = self.resolve_ref(ref)
            complete = complete and bool(names)
            inputs += names
            spans += [ref.span] * len(names)
        targets = [decl.name.text] if isinstance(decl, ast.NodeDecl) else self.members.get(decl.name.text, [])
        for target in targets:
            if target not in self.graph or decl.role.text == "propose":  # a proposer's inputs are E204
                continue
            attrs = self.graph.nodes[target]
            attrs["inputs"] = tuple(inputs)
            edges = zip(inputs, spans, strict=True)  # one span per input reference
            self.graph.add_edges_from((source, target, {"span": span}) for source, span in edges)
            if decl.inputs and complete:
                self.check_counts(target, attrs["params"], len(inputs), decl.span)

    def check_counts(self, target: str, params: dict[str, Any], n: int, fallback: Span) -> None:
        """E209: min_inputs, top_k, quorum beyond the inputs (a layer counts as its members). One per
        place the key was set (defaults apply to many nodes), naming the first node it fails."""
        for key in v.COUNTED:
            wanted = params.get(key)
            at = self.param_spans[target].get(key) or fallback
            if wanted is None or wanted <= n or at in self.e209_at:
                continue
            self.e209_at.add(at)
            self.diags.append(
                v.error("E209", f"{key} = {wanted}, but '{target}' has only {n} input{'s' if n != 1 else ''}", at)
            )

    def resolve_ref(self, ref: ast.Ref) -> list[str]:
        if ref.text in self.members:
            return list(self.members[ref.text])
        if ref.text in self.graph:
            return [ref.text]
        what = "node or layer member" if "." in ref.text else "node or layer"
        known = list(self.members) + list(self.graph) if self.hints_left > 0 else []
        self.unknown(what, ref.text, ref.span, known)
        return []


def build(statements: Sequence[ast.Statement]) -> Built:
    """Every statement of every file, includes spliced in order."""
    return _Builder(statements).build()


def resolve_output(built: Built, end: Span) -> tuple[str | None, list[Diagnostic]]:
    """The `output` node, or the single sink; E201/E207 otherwise. `end`: where E207 points."""
    graph = built.graph
    if built.output is not None:
        ref = built.output.ref
        if ref.text in graph:
            return ref.text, []
        layer_members = [n for n, layer in graph.nodes(data="layer") if layer == ref.text]
        if layer_members:
            return None, [
                v.error(
                    "E201",
                    f"the output must be one node, and '{ref.text}' is a layer",
                    ref.span,
                    f"name one member, or aggregate the layer: {v.listing(layer_members)}",
                )
            ]
        return None, [
            v.error(
                "E201",
                f"unknown node '{ref.text}'",
                ref.span,
                v.did_you_mean(ref.text, graph) if len(graph) < 20000 else None,
            )
        ]
    if not len(graph):
        return None, [
            v.error(
                "E207",
                "no output: the topology has no nodes",
                end,
                'declare a node, e.g. `node a = propose openai:"gpt-4o-mini"`',
            )
        ]
    ends = v.sinks(graph)
    if len(ends) == 1:
        return ends[0], []
    if not ends:  # every node sits on a cycle: E203 says it
        return None, []
    return None, [
        v.error(
            "E207",
            f"no output: {len(ends)} nodes read by no one ({v.listing(ends)}) and no `output` statement",
            end,
            f"add `output NAME`, e.g. `output {ends[-1]}`",
        )
    ]
