"""The graph contract of docs/architecture.md: names, attributes, params, providers."""
from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

import moa_dsl
from moa_dsl.config import RANK_PROMPT, REFERENCE_PROMPT, EnvRef, ProviderConfig
from moa_dsl.language.graph import sanitize
from moa_dsl.errors import Span

from conftest import EXAMPLES

ATTRS = {"role", "provider", "model", "model_name", "sample", "layer", "inputs", "params", "span"}


def test_paper_example_has_the_papers_shape() -> None:
    g = moa_dsl.load(EXAMPLES / "moa-paper.moa").graph
    assert isinstance(g, nx.DiGraph) and len(g) == 13
    assert g.graph["output"] == "final" and g.graph["dead"] == frozenset()
    assert list(g.nodes["final"]["inputs"]) == [f"second.{m}" for m in
                                                ("qwen110", "qwen72", "wizard", "llama3", "mixtral", "dbrx")]
    assert g.in_degree("second.wizard") == 6 and g.nodes["second.wizard"]["role"] == "aggregate"
    assert set(g.graph["providers"]) == {"together"}
    for _, attrs in g.nodes(data=True):
        assert set(attrs) == ATTRS


def test_member_naming_rules() -> None:
    g = moa_dsl.loads('model q = together:"Qwen/Q"\n'
                      'layer L = propose [q, openai:"gpt-4o-mini" * 2, big = q, q, "x" * 1]\n'.replace('"x" * 1', 'ollama:"llama3.2:1b"')
                      + 'node f = aggregate q <- L\n').graph
    assert list(g.nodes["f"]["inputs"]) == ["L.q.1", "L.gpt_4o_mini.1", "L.gpt_4o_mini.2", "L.big", "L.q.2",
                                           "L.llama3_2_1b"]
    assert [g.nodes[n]["sample"] for n in g.nodes["f"]["inputs"]] == [1, 1, 2, None, 2, None]
    assert g.nodes["L.big"]["model_name"] == "q" and g.nodes["L.gpt_4o_mini.1"]["model_name"] is None
    assert g.nodes["L.big"]["layer"] == "L" and g.nodes["f"]["layer"] is None
    assert sanitize("meta-llama/Llama-3.3-70B") == "meta_llama_Llama_3_3_70B"


def test_inputs_may_name_nodes_layers_and_members_in_order() -> None:
    g = moa_dsl.loads('layer L = propose [openai:"a", openai:"b"]\nnode n = propose openai:"c"\n'
                      'node f = aggregate openai:"d" <- n, L.b, L\n').graph
    assert g.nodes["f"]["inputs"] == ("n", "L.b", "L.a", "L.b")
    assert set(g.predecessors("f")) == {"n", "L.a", "L.b"}


def test_params_resolve_builtin_defaults_model_node() -> None:
    g = moa_dsl.loads(
        'provider slow = openai { base_url = "http://127.0.0.1:9/v1", timeout = 300, retries = 1 }\n'
        'model m = slow:"m" { temperature = 0.1, max_tokens = 99, price = [1, 2.5] }\n'
        'prompt sys = "Be terse."\n'
        'defaults { temperature = 1.5, top_p = 0.5, stop = "x" }\n'
        'defaults { top_p = 0.25 }\n'
        'layer L = propose [m * 2] { seed = 7, system = sys }\n'
        'node f = aggregate m <- L { max_tokens = 5, timeout = 1, cache = false }\n').graph
    member = g.nodes["L.m.2"]["params"]
    assert member == {"temperature": 0.1, "max_tokens": 99, "cache": True, "timeout": 300.0, "retries": 1,
                      "top_p": 0.25, "stop": "x", "price": [1.0, 2.5], "seed": 8, "system": "Be terse."}
    assert g.nodes["L.m.1"]["params"]["seed"] == 7
    final = g.nodes["f"]["params"]
    assert final["prompt"] == REFERENCE_PROMPT and final["min_inputs"] == 1
    assert (final["max_tokens"], final["timeout"], final["retries"], final["cache"]) == (5, 1.0, 1, False)
    assert "seed" not in final and "system" not in final


def test_proposers_never_get_aggregator_params() -> None:
    g = moa_dsl.loads('defaults { prompt = "p", min_inputs = 1 }\nnode a = propose openai:"m"\n'
                      'node f = aggregate openai:"m" <- a\n').graph
    assert "prompt" not in g.nodes["a"]["params"] and "min_inputs" not in g.nodes["a"]["params"]
    assert g.nodes["f"]["params"]["prompt"] == "p"


def test_builtin_providers_and_replacement() -> None:
    g = moa_dsl.loads('provider together = openai { base_url = "http://127.0.0.1:8/v1", max_concurrency = 2 }\n'
                      'node a = propose together:"x"\nnode b = propose openai:"y"\nnode c = propose local:"smollm2-135m"\n'
                      'node f = aggregate anthropic:"claude" <- a, b, c\n').graph
    providers = g.graph["providers"]
    assert set(providers) == {"together", "openai", "local", "anthropic"}
    assert providers["together"] == ProviderConfig("together", "openai", "http://127.0.0.1:8/v1",
                                                   None, {}, 2, 120.0, 3)  # a statement's key: only its own
    assert providers["openai"].api_key == EnvRef("OPENAI_API_KEY")
    assert providers["local"].kind == "local" and providers["anthropic"].kind == "anthropic"
    assert all(isinstance(p, ProviderConfig) for p in providers.values())


def test_unused_builtin_providers_are_left_out() -> None:
    g = moa_dsl.loads('provider extra = anthropic {}\nnode a = propose openai:"m"\n').graph
    assert set(g.graph["providers"]) == {"extra", "openai"}     # declared ones stay (review finding 4)


def test_single_sink_is_the_output_and_dead_nodes_are_kept() -> None:
    pipe = moa_dsl.loads('node a = propose openai:"m"\nnode b = propose openai:"m"\nnode c = propose openai:"m"\n'
                         'node f = aggregate openai:"m" <- a\nnode g = aggregate openai:"m" <- b\noutput f\n')
    assert pipe.output == "f" and pipe.graph.graph["dead"] == frozenset({"b", "c", "g"})
    assert "g" in pipe.graph and [w.code for w in pipe.warnings] == ["W301"] * 3
    assert moa_dsl.loads('node a = propose openai:"m"\n').output == "a"


def test_spans_point_at_the_statement_or_member() -> None:
    g = moa_dsl.loads('layer L = propose [openai:"a",\n   openai:"b"]\nnode f = aggregate openai:"c" <- L\n',
                      filename="x.moa").graph
    assert g.nodes["L.b"]["span"] == Span("x.moa", 2, 4, 2, 14)


def test_self_moa_seeds_follow_the_sample() -> None:
    g = moa_dsl.load(EXAMPLES / "self-moa.moa").graph
    assert [g.nodes[f"samples.gpt.{i}"]["params"]["seed"] for i in range(1, 7)] == [1, 2, 3, 4, 5, 6]
    assert g.graph["output"] == "final"


@pytest.mark.parametrize("name", ["moa-paper", "moa-lite", "self-moa", "skip-connections", "critic-branch",
                                  "specialists"])
def test_examples_are_acyclic_with_their_output_reachable(name: str) -> None:
    pipe = moa_dsl.load(EXAMPLES / f"{name}.moa")
    assert nx.is_directed_acyclic_graph(pipe.graph) and pipe.warnings == ()
    assert nx.ancestors(pipe.graph, pipe.output) | {pipe.output} == set(pipe.graph)


def test_a_relative_gguf_path_is_relative_to_the_file_that_names_it(tmp_path, monkeypatch):
    sub = tmp_path / "topologies"
    sub.mkdir()
    (sub / "lib.moa").write_text('model mine = local:"weights/mine.gguf"\n')
    (sub / "main.moa").write_text('include "lib.moa"\n'
                                  'node a = propose mine\n'
                                  'node b = propose local:"../other.gguf"\n'
                                  'node c = propose local:"smollm2-135m"\n'
                                  'node d = propose openai:"org/model"\n'
                                  'node f = aggregate local:"/abs/w.gguf" <- a, b, c, d\n')
    monkeypatch.chdir(tmp_path.parent)  # wherever moa runs from must not matter
    g = moa_dsl.load(sub / "main.moa").graph
    assert g.nodes["a"]["model"] == str(sub / "weights" / "mine.gguf")
    assert g.nodes["b"]["model"] == str(tmp_path / "other.gguf")
    assert g.nodes["c"]["model"] == "smollm2-135m"      # a built-in name is not a path
    assert g.nodes["d"]["model"] == "org/model"         # only the embedded runtime reads files
    assert g.nodes["f"]["model"] == "/abs/w.gguf"


def test_declared_providers_are_kept_even_when_no_node_uses_them() -> None:
    g = moa_dsl.loads('provider mine = openai { base_url = "http://127.0.0.1:9/v1" }\n'
                      'node a = propose openai:"m"\n').graph
    assert set(g.graph["providers"]) == {"mine", "openai"}      # unused built-ins stay out
    assert g.graph["providers"]["mine"].base_url == "http://127.0.0.1:9/v1"


def test_a_declared_unused_provider_can_be_the_judge() -> None:
    from moa_dsl.evaluation.judge import parse_judge
    pipe = moa_dsl.loads('provider mine = openai { base_url = "http://127.0.0.1:9/v1" }\n'
                         'node a = propose openai:"m"\n')
    judge, cfg = parse_judge('mine:"m"', [pipe])
    assert (judge.provider, judge.model) == ("mine", "m") and cfg.base_url == "http://127.0.0.1:9/v1"


# ---- rank, vote, quorum, agree, window, budget: the graph the runtime reads ------------------------

OPS = ('model big = openai:"gpt-4o" { price = [2.5, 10], temperature = 0.2 }\n'
       'prompt synth = "Fuse these."\n'
       'defaults { max_tokens = 300, prompt = synth, extract = "(x)", min_inputs = 1 }\n'
       'layer p = propose [openai:"a", openai:"b", openai:"c" * 2]\n'
       'node best = rank big <- p { top_k = 2, quorum = 3 }\n'
       'node maj = vote <- p, best { normalize = false }\n'
       'node fast = aggregate big <- best, p { quorum = 4, agree = true, window = 3, normalize = true }\n'
       'node final = aggregate big <- maj, fast\n')


@pytest.fixture
def ops() -> nx.DiGraph:
    return moa_dsl.loads(OPS).graph


def test_every_role_has_the_same_attributes(ops) -> None:
    assert {a["role"] for _, a in ops.nodes(data=True)} == {"propose", "aggregate", "rank", "vote"}
    for _, attrs in ops.nodes(data=True):
        assert set(attrs) == ATTRS


def test_rank_params_and_inputs(ops) -> None:
    best = ops.nodes["best"]
    assert (best["role"], best["provider"], best["model"], best["model_name"]) == ("rank", "openai", "gpt-4o", "big")
    assert best["inputs"] == ("p.a", "p.b", "p.c.1", "p.c.2")
    # a defaults prompt is a synthesis instruction: the rank node keeps its ranking instruction
    assert best["params"] == {"temperature": 0.2, "max_tokens": 300, "cache": True, "timeout": 120.0, "retries": 3,
                              "prompt": RANK_PROMPT, "min_inputs": 1, "top_k": 2, "quorum": 3, "price": [2.5, 10.0]}
    assert "[2] > [1] > [3]" in RANK_PROMPT and RANK_PROMPT.endswith("Candidates:")


def test_rank_defaults_and_its_own_prompt() -> None:
    g = moa_dsl.loads('node a = propose openai:"a"\nnode b = propose openai:"b"\n'
                      'node r = rank openai:"j" <- a, b\nnode s = rank openai:"j" <- a, b { prompt = "Order them." }\n'
                      'node f = aggregate openai:"z" <- r, s\n').graph
    assert g.nodes["r"]["params"]["top_k"] == 1 and g.nodes["r"]["params"]["prompt"] == RANK_PROMPT
    assert "quorum" not in g.nodes["r"]["params"] and g.nodes["r"]["params"]["min_inputs"] == 1
    assert g.nodes["s"]["params"]["prompt"] == "Order them."
    assert list(g.predecessors("r")) == ["a", "b"] and g.has_edge("r", "f")


def test_vote_has_no_model_and_only_its_own_params(ops) -> None:
    maj = ops.nodes["maj"]
    assert (maj["role"], maj["provider"], maj["model"], maj["model_name"]) == ("vote", None, None, None)
    assert maj["params"] == {"min_inputs": 1, "normalize": False, "extract": "(x)"}
    assert maj["inputs"] == ("p.a", "p.b", "p.c.1", "p.c.2", "best")
    assert set(ops.predecessors("maj")) == {"p.a", "p.b", "p.c.1", "p.c.2", "best"}
    bare = moa_dsl.loads('node a = propose openai:"a"\nnode v = vote <- a\n').graph.nodes["v"]["params"]
    assert bare == {"min_inputs": 1, "normalize": True}   # extract absent when unset


def test_aggregate_operator_params_only_where_set(ops) -> None:
    fast = ops.nodes["fast"]["params"]
    assert [fast[k] for k in ("quorum", "agree", "window", "extract", "normalize")] == [4, True, 3, "(x)", True]
    assert fast["prompt"] == "Fuse these." and fast["min_inputs"] == 1
    final = ops.nodes["final"]["params"]
    assert not {"quorum", "agree", "window", "normalize", "top_k"} & set(final) and final["extract"] == "(x)"
    assert ops.nodes["fast"]["inputs"] == ("best", "p.a", "p.b", "p.c.1", "p.c.2")


def test_proposers_get_no_operator_params_from_defaults() -> None:
    g = moa_dsl.loads('defaults { quorum = 1, top_k = 1, agree = true, window = 2, extract = "x", normalize = false }\n'
                      'node a = propose openai:"a"\nnode f = aggregate openai:"z" <- a\n').graph
    assert set(g.nodes["a"]["params"]) == {"temperature", "max_tokens", "cache", "timeout", "retries"}
    assert "top_k" not in g.nodes["f"]["params"] and g.nodes["f"]["params"]["window"] == 2


def test_budget_is_a_graph_attribute() -> None:
    assert moa_dsl.loads('node a = propose openai:"a"\n').graph.graph["budget"] == {}
    g = moa_dsl.loads('budget { usd = 1, tokens = 5000, calls = 7 }\nmodel m = openai:"a" { price = [1, 1] }\n'
                      'node a = propose m\n').graph
    assert g.graph["budget"] == {"usd": 1.0, "tokens": 5000, "calls": 7}
    assert isinstance(g.graph["budget"]["usd"], float) and isinstance(g.graph["budget"]["tokens"], int)
    assert moa_dsl.loads('budget { calls = 3 }\nnode a = propose openai:"a"\n').graph.graph["budget"] == {"calls": 3}
    assert moa_dsl.loads('budget {}\nnode a = propose openai:"a"\n').graph.graph["budget"] == {}


def test_a_budget_in_an_include_counts(tmp_path) -> None:
    (tmp_path / "caps.moa").write_text("budget { tokens = 900 }\n")
    (tmp_path / "main.moa").write_text('include "caps.moa"\nnode a = propose openai:"a"\n')
    assert moa_dsl.load(tmp_path / "main.moa").graph.graph["budget"] == {"tokens": 900}


def test_the_language_never_imports_the_runtime() -> None:
    """rank and vote compile without any runtime support: nothing under moa_dsl/language imports it."""
    import ast as pyast

    import moa_dsl.language

    for path in Path(moa_dsl.language.__file__).parent.glob("*.py"):
        for node in pyast.walk(pyast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, pyast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, pyast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any("runtime" in n for n in names), f"{path.name} imports {names}"


def test_the_embedded_runtime_gets_a_longer_default_timeout():
    """A CPU serving several parallel requests is slow, and `timeout` runs from start to last byte."""
    g = moa_dsl.loads('node a = propose local:"smollm2-135m"\nnode b = propose openai:"m"\n'
                      'provider mine = local { max_concurrency = 2 }\nnode c = aggregate mine:"smollm2-135m" <- a, b').graph
    assert g.nodes["a"]["params"]["timeout"] == 600.0 and g.nodes["c"]["params"]["timeout"] == 600.0
    assert g.nodes["b"]["params"]["timeout"] == 120.0
