"""Exports: json (the README's shape), mermaid, dot, svg; no environment value ever leaks."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import moa_dsl
from moa_dsl.language.export import FORMATS, depths, to_dot, to_json, to_mermaid, to_svg

from conftest import EXAMPLES

SRC = ('provider p = openai { base_url = env("MOA_TEST_URL"), api_key = env("MOA_TEST_KEY") }\n'
       'layer L = propose [p:"m\\"quote" * 2]\nnode lonely = propose p:"x"\n'
       'node f = aggregate p:"<agg&>" <- L { seed = 3 }\noutput f\n')


@pytest.fixture
def pipe(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MOA_TEST_KEY", "sk-leak-me")
    monkeypatch.setenv("MOA_TEST_URL", "http://secret.example")
    return moa_dsl.loads(SRC)


def test_json_shape(pipe) -> None:
    data = to_json(pipe.graph)
    assert set(data) == {"output", "nodes", "edges"} and data["output"] == "f"
    node = next(n for n in data["nodes"] if n["name"] == "f")
    assert set(node) == {"name", "role", "provider", "model", "sample", "inputs", "params"}
    assert (node["role"], node["provider"], node["model"], node["sample"]) == ("aggregate", "p", "<agg&>", None)
    assert node["inputs"] == ["L.m_quote.1", "L.m_quote.2"] and node["params"]["seed"] == 3
    assert node["params"]["temperature"] == 0.7 and "prompt" in node["params"]
    assert sorted(data["edges"]) == [["L.m_quote.1", "f"], ["L.m_quote.2", "f"]]
    assert next(n for n in data["nodes"] if n["name"] == "L.m_quote.2")["sample"] == 2
    json.dumps(data)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_no_environment_value_leaks(pipe, fmt: str) -> None:
    text = FORMATS[fmt](pipe.graph)
    assert "sk-leak-me" not in text and "secret.example" not in text


def test_mermaid(pipe) -> None:
    text = to_mermaid(pipe.graph)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert any(line.strip().startswith('subgraph L0["L"]') for line in lines)
    assert "#quot;" in text and "&lt;agg&amp;&gt;" in text
    ids = {line.split("[")[0].strip() for line in lines if '["' in line and "subgraph" not in line}
    assert len(ids) == 4
    assert sum("-->" in line for line in lines) == 2 and "class n3 output" in text.replace("n2 output", "n3 output")
    assert "dead" in text  # `lonely` is drawn as dead


def test_dot(pipe) -> None:
    text = to_dot(pipe.graph)
    assert text.startswith("digraph moa {") and text.rstrip().endswith("}")
    assert '"L.m_quote.1" -> "f";' in text and 'p:m\\"quote' in text
    assert "cluster_0" in text and "penwidth=2.5" in text


def test_svg_is_well_formed_and_layered(pipe) -> None:
    root = ET.fromstring(to_svg(pipe.graph))
    assert root.tag.endswith("svg")
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}g")) == 4 and len(root.findall(f"{ns}path")) == 2
    assert depths(pipe.graph) == {"L.m_quote.1": 0, "L.m_quote.2": 0, "lonely": 0, "f": 1}


def test_svg_depth_is_the_longest_path() -> None:
    g = moa_dsl.load(EXAMPLES / "skip-connections.moa").graph
    d = depths(g)
    assert d["final"] == 2 and d["refine.llama"] == 1 and d["draft.gemma"] == 0


def test_svg_skip_connections_run_below_the_columns_they_pass() -> None:
    """a -> final skips the review column: its path must not run behind the review box."""
    import re

    g = moa_dsl.loads('node a = propose openai:"x"\nnode review = aggregate openai:"y" <- a\n'
                      'node final = aggregate openai:"z" <- review, a\n').graph
    root = ET.fromstring(to_svg(g))
    ns = "{http://www.w3.org/2000/svg}"
    boxes = {g_el.find(f"{ns}title").text.split(" ")[0]: g_el.find(f"{ns}rect") for g_el in root.findall(f"{ns}g")}
    review = boxes["review"]
    review_bottom = float(review.get("y")) + float(review.get("height"))
    skips = [p.get("d") for p in root.findall(f"{ns}path") if " L" in p.get("d")]
    assert len(skips) == 1
    lane = float(re.search(r" L[\d.]+,([\d.]+)", skips[0]).group(1))
    assert lane > review_bottom and float(root.get("height")) > lane


# ---- rank and vote nodes are drawn apart from model calls ----------------------------------------

OPS = ('model judge = openai:"gpt-4o"\nlayer p = propose [openai:"a", openai:"b", openai:"c"]\n'
       'node best = rank judge <- p { top_k = 2 }\nnode maj = vote <- p { extract = "(\\\\d+)" }\n'
       'node final = aggregate openai:"z" <- best, maj\n')


@pytest.fixture
def ops():
    return moa_dsl.loads(OPS)


def test_json_gives_rank_and_vote_their_role_and_params(ops) -> None:
    nodes = {n["name"]: n for n in to_json(ops.graph)["nodes"]}
    best, maj = nodes["best"], nodes["maj"]
    assert (best["role"], best["provider"], best["model"]) == ("rank", "openai", "gpt-4o")
    assert best["params"]["top_k"] == 2 and best["params"]["min_inputs"] == 1
    assert "[2] > [1] > [3]" in best["params"]["prompt"]
    assert (maj["role"], maj["provider"], maj["model"]) == ("vote", None, None)
    assert maj["params"] == {"min_inputs": 1, "normalize": True, "extract": "(\\d+)"}
    assert maj["inputs"] == ["p.a", "p.b", "p.c"]
    text = FORMATS["json"](ops.graph)
    assert json.loads(text)["nodes"][4]["provider"] is None and '"provider": null' in text


def test_mermaid_draws_rank_as_a_hexagon_and_vote_as_a_rhombus(ops) -> None:
    lines = {line.strip().split("{", 1)[0].split("[", 1)[0]: line.strip()
             for line in to_mermaid(ops.graph).splitlines()}
    ids = {name: f"n{i}" for i, name in enumerate(ops.graph)}
    assert lines[ids["best"]].startswith(ids["best"] + '{{"best<br/>') and lines[ids["best"]].endswith('"}}')
    assert "rank by judge, top 2" in lines[ids["best"]]
    assert lines[ids["maj"]] == ids["maj"] + '{"maj<br/><small>majority vote</small>"}'
    assert lines[ids["final"]].startswith(ids["final"] + '["final')
    assert "None" not in to_mermaid(ops.graph)


def test_dot_gives_rank_and_vote_their_own_shapes(ops) -> None:
    text = to_dot(ops.graph)
    assert '"best" [label="best\\nrank by judge, top 2", shape=hexagon];' in text
    assert '"maj" [label="maj\\nmajority vote", shape=diamond];' in text
    assert '"p.a" [label="p.a\\nopenai:a"];' in text  # a model call keeps the default box


def test_svg_draws_rank_and_vote_distinctly(ops) -> None:
    root = ET.fromstring(to_svg(ops.graph))
    ns = "{http://www.w3.org/2000/svg}"
    groups = {g.find(f"{ns}title").text.split(" ")[0]: g for g in root.findall(f"{ns}g")}
    assert groups["best"].get("class") == "moa-rank" and groups["best"].find(f"{ns}polygon") is not None
    assert groups["best"].find(f"{ns}rect") is None
    vote, call = groups["maj"].find(f"{ns}rect"), groups["p.a"].find(f"{ns}rect")
    assert groups["maj"].get("class") == "moa-vote" and float(vote.get("rx")) > float(call.get("rx"))
    fills = {n: (g.find(f"{ns}polygon") if n == "best" else g.find(f"{ns}rect")).get("fill") for n, g in groups.items()}
    assert len({fills["best"], fills["maj"], fills["p.a"], fills["final"]}) == 4
    assert groups["maj"].find(f"{ns}title").text == "maj (vote: no model)"


def test_text_and_html_say_a_vote_has_no_model(ops) -> None:
    from moa_dsl.language.export import topology_html, topology_text

    text = topology_text(ops.graph)
    assert "  maj = vote (no model) <- p.a, p.b, p.c" in text and "best = rank openai:gpt-4o" in text
    assert "None" not in topology_html(ops.graph)
