"""Exports: json (INTERFACES.md's shape), mermaid, dot, svg; no environment value ever leaks."""
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
