"""The graph contract of docs/architecture.md: names, attributes, params, providers."""
from __future__ import annotations

import networkx as nx
import pytest

import moa_dsl
from moa_dsl.config import REFERENCE_PROMPT, EnvRef, ProviderConfig
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
