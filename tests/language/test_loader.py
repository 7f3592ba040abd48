"""load / loads / includes / apply_overrides (`--set`)."""
from __future__ import annotations

from pathlib import Path

import pytest

import moa_dsl
from moa_dsl import ConfigError, MoaError

from conftest import EXAMPLES

TWO = ('layer L = propose [openai:"a", openai:"b" * 2]\n'
       'node f = aggregate openai:"c" <- L { min_inputs = 2 }\n')


def test_load_names_the_pipeline_after_the_file() -> None:
    pipe = moa_dsl.load(EXAMPLES / "moa-lite.moa")
    assert pipe.name == "moa-lite" and pipe.output == "final"
    assert str(EXAMPLES / "lib" / "open-models.moa") in pipe.sources or any(
        k.endswith("lib/open-models.moa") for k in pipe.sources)
    assert moa_dsl.loads(TWO).name is None


@pytest.mark.parametrize("make", ["missing", "directory", "binary"])
def test_unreadable_top_level_file_is_a_config_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "x.moa"
    if make == "directory":
        path.mkdir()
    elif make == "binary":
        path.write_bytes(b"\xff\xfe\x00node")
    with pytest.raises(ConfigError) as info:
        moa_dsl.load(path)
    assert f"cannot read {path}" in str(info.value) and info.value.diagnostics == []


def test_includes_are_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "models.moa").write_text('model m = openai:"gpt-4o-mini"\n')
    (tmp_path / "a" / "common.moa").write_text('include "b/models.moa"\ndefaults { max_tokens = 7 }\n')
    (tmp_path / "main.moa").write_text('include "a/common.moa"\nnode x = propose m\n')
    pipe = moa_dsl.load(tmp_path / "main.moa")
    assert pipe.graph.nodes["x"]["params"]["max_tokens"] == 7
    assert len(pipe.sources) == 3


def test_a_file_included_twice_counts_once(tmp_path: Path) -> None:
    (tmp_path / "m.moa").write_text('model m = openai:"x"\n')
    (tmp_path / "p.moa").write_text('include "m.moa"\nprompt p = "hi"\n')
    (tmp_path / "main.moa").write_text('include "m.moa"\ninclude "p.moa"\nnode a = propose m { system = p }\n')
    assert moa_dsl.load(tmp_path / "main.moa").graph.nodes["a"]["params"]["system"] == "hi"


def test_loads_includes_resolve_against_filename(tmp_path: Path) -> None:
    (tmp_path / "m.moa").write_text('model m = openai:"x"\n')
    pipe = moa_dsl.loads('include "m.moa"\nnode a = propose m\n', filename=str(tmp_path / "virtual.moa"))
    assert pipe.graph.nodes["a"]["model"] == "x"


def test_self_include_is_e208(tmp_path: Path) -> None:
    (tmp_path / "me.moa").write_text('include "me.moa"\nnode a = propose openai:"x"\n')
    with pytest.raises(MoaError) as info:
        moa_dsl.load(tmp_path / "me.moa")
    [d] = info.value.diagnostics
    assert d.code == "E208" and "include cycle" in d.message


def test_duplicate_names_across_files_are_e202(tmp_path: Path) -> None:
    (tmp_path / "m.moa").write_text('node a = propose openai:"x"\n')
    with pytest.raises(MoaError) as info:
        moa_dsl.loads('include "m.moa"\nnode a = propose openai:"y"\n', filename=str(tmp_path / "main.moa"))
    [d] = info.value.diagnostics
    assert d.code == "E202" and d.span.file.endswith("main.moa") and "m.moa:1:6" in d.message


# ---- --set ---------------------------------------------------------------------------------

def test_set_every_node_and_one_node() -> None:
    pipe = moa_dsl.loads(TWO)
    new = pipe.with_overrides(["temperature=0", "f.max_tokens=9", "L.b.2.stop=[\"x\", \"y\"]"])
    g = new.graph
    assert all(a["params"]["temperature"] == 0.0 for _, a in g.nodes(data=True))
    assert g.nodes["f"]["params"]["max_tokens"] == 9 and g.nodes["L.a"]["params"]["max_tokens"] == 512
    assert g.nodes["L.b.2"]["params"]["stop"] == ["x", "y"]
    # the original is untouched, and the graph is a copy
    assert pipe.graph.nodes["f"]["params"]["temperature"] == 0.7 and new.graph is not pipe.graph
    assert new.sources == pipe.sources and new.output == "f"


def test_set_values_are_moa_literals_and_bare_words_are_strings() -> None:
    pipe = moa_dsl.loads(TWO)
    g = pipe.with_overrides(["system=You are terse.", "f.prompt=Summarise", "cache=false", "L.seed=3"]).graph
    assert g.nodes["L.a"]["params"]["system"] == "You are terse."
    assert g.nodes["f"]["params"]["prompt"] == "Summarise" and g.nodes["f"]["params"]["cache"] is False
    assert [g.nodes[n]["params"]["seed"] for n in ("L.a", "L.b.1", "L.b.2")] == [3, 3, 4]
    assert "prompt" not in g.nodes["L.a"]["params"]  # aggregator-only keys skip proposers


@pytest.mark.parametrize("item, words", [
    ("temprature=1", "did you mean 'temperature'?"),
    ("temperature=3", "out of range"),
    ("max_tokens=many", "must be an integer"),
    ("F.max_tokens=3", "unknown node or layer 'F'; did you mean 'f'?"),
    ("noequals", "expected KEY=VALUE"),
    ("=1", "expected KEY=VALUE"),
    ("price=[1, 2]", "model only"),
    ("L.a.min_inputs=1", "'min_inputs' applies to aggregators, rank nodes and votes only, and 'L.a' is a proposer"),
    ("f.min_inputs=4", "has only 3 inputs"),
    ("stop=[1", "unexpected end of input"),
])
def test_bad_set_items_are_config_errors(item: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        moa_dsl.loads(TWO).with_overrides([item])
    assert words in str(info.value)


OPS = ('layer L = propose [openai:"a", openai:"b" * 2]\nnode r = rank openai:"j" <- L { top_k = 2 }\n'
       'node v = vote <- L\nnode f = aggregate openai:"z" <- r, v\n')


def test_set_applies_each_key_only_to_the_roles_that_take_it() -> None:
    g = moa_dsl.loads(OPS).with_overrides(["temperature=0", "prompt=Fuse", "min_inputs=1", "extract=(x)",
                                          "r.quorum=3", "r.prompt=Rank"]).graph
    assert "temperature" not in g.nodes["v"]["params"] and g.nodes["r"]["params"]["temperature"] == 0
    assert g.nodes["f"]["params"]["prompt"] == "Fuse" and g.nodes["r"]["params"]["prompt"] == "Rank"
    assert g.nodes["v"]["params"]["extract"] == "(x)" and "extract" not in g.nodes["r"]["params"]
    assert g.nodes["r"]["params"]["quorum"] == 3 and "min_inputs" not in g.nodes["L.a"]["params"]
    everywhere_else = moa_dsl.loads(OPS).with_overrides(["prompt=Fuse"]).graph
    assert everywhere_else.nodes["r"]["params"]["prompt"] != "Fuse"   # a synthesis prompt is not a ranking one


@pytest.mark.parametrize("item, words", [
    ("v.temperature=0", "'temperature' is a model parameter, and 'v' is a vote"),
    ("f.top_k=1", "'top_k' applies to rank nodes only, and 'f' is an aggregator"),
    ("r.top_k=4", "'r' has only 3 inputs"),
    ("f.quorum=3", "'f' has only 2 inputs"),
    ("window=1", "out of range"),
    ("extract=(", "not a valid regular expression"),
])
def test_bad_operator_set_items(item: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        moa_dsl.loads(OPS).with_overrides([item])
    assert words in str(info.value)


def test_set_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_X", "1")
    with pytest.raises(ConfigError):
        moa_dsl.loads(TWO).with_overrides(['temperature=env("MOA_X")'])


# ---- literal secrets are masked before any diagnostic renders a line ------------------------

def _rendered(text: str, filename: str = "<string>") -> MoaError:
    with pytest.raises(MoaError) as info:
        moa_dsl.loads(text, filename)
    return info.value


def test_a_syntax_error_does_not_show_a_literal_api_key() -> None:
    err = _rendered('provider p = openai { api_key = "sk-SECRET123" ,, }\n')
    assert err.diagnostics[0].code == "E101"
    shown = err.render(color=False) + "".join(err.sources.values())
    assert "sk-SECRET123" not in shown and '"************"' in shown


def test_an_unterminated_key_and_a_secret_header_are_masked_too() -> None:
    err = _rendered('provider p = openai { headers = { "Authorization" = "Bearer sk-HDR", X = "plain" },\n'
                    '  api_key = "sk-OPEN }\n')
    shown = err.render(color=False) + "".join(err.sources.values())
    assert "sk-HDR" not in shown and "sk-OPEN" not in shown and '"plain"' in shown


def test_an_include_error_does_not_show_a_key_in_another_file(tmp_path: Path) -> None:
    (tmp_path / "lib.moa").write_text('provider p = openai { api_key = """sk-INC\nLUDED""" }\ninclude "nope.moa"\n')
    main = tmp_path / "main.moa"
    main.write_text('include "lib.moa"\n' + TWO)
    with pytest.raises(MoaError) as info:
        moa_dsl.load(main)
    shown = info.value.render(color=False) + "".join(info.value.sources.values())
    assert "E208" in shown and "sk-INC" not in shown and "LUDED" not in shown


def test_a_multi_line_key_is_masked_and_positions_stay_put() -> None:
    text = 'provider p = openai { api_key = """sk-MULTI\nLINE-KEY""" }\n' + TWO.replace("openai:", "p:")
    pipe = moa_dsl.loads(text)
    masked = pipe.sources["<string>"]
    assert "sk-MULTI" not in masked and "LINE-KEY" not in masked
    assert len(masked) == len(text) and masked.split("\n")[2:] == text.split("\n")[2:]
    assert any(w.code == "W302" for w in pipe.warnings)


def test_the_ast_mask_covers_multi_line_spans() -> None:
    from moa_dsl.language.loader import _mask_secrets
    from moa_dsl.errors import Span
    text = 'x = """ab\ncd"""\n'
    out = _mask_secrets({"f": text}, [Span("f", 1, 5, 2, 6)])
    assert out["f"] == 'x = """**\n**"""\n'
