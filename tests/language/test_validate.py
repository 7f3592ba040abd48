"""Golden diagnostics: every fixture beside its expected rendering, plus the structured list.

Each fixture's first line, written by hand, says which diagnostics it must produce:
`# expect: CODE@LINE:COL, CODE@other/file.moa:LINE:COL, ...` (files relative to the fixture).
The rendered text is compared with FIXTURE.expected; regenerate those with
`MOA_REGEN_EXPECTED=1 pytest tests/language/test_validate.py` and review the diff by eye.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import moa_dsl
from moa_dsl import MoaError
from moa_dsl.config import REFERENCE_PROMPT
from moa_dsl.errors import render_diagnostics

from conftest import FIXTURES

REGEN = os.environ.get("MOA_REGEN_EXPECTED") == "1"
INVALID = sorted((FIXTURES / "invalid").glob("*.moa"))
VALID = sorted((FIXTURES / "valid").glob("*.moa"))
ALL_CODES = {f"E{n}" for n in (101, 201, 202, 203, 204, 205, 206, 207, 208, 209)} | {"W301", "W302", "W303"}


def _expectations(path: Path) -> list[tuple[str, str, int, int]]:
    header = path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert header.startswith("# expect:"), f"{path.name} lacks its '# expect:' line"
    out = []
    for item in filter(None, (s.strip() for s in header[len("# expect:"):].split(","))):
        code, loc = item.split("@")
        parts = loc.split(":")
        file = parts[0] if len(parts) == 3 else path.name
        out.append((code, os.path.normpath(os.path.join(path.parent.name, file)), int(parts[-2]), int(parts[-1])))
    return out


def _diagnose(path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(FIXTURES)  # file names in the output stay short and machine-independent
    rel = str(path.relative_to(FIXTURES))
    try:
        pipe = moa_dsl.load(rel)
    except MoaError as exc:
        return exc.diagnostics, exc.render(), True
    return list(pipe.warnings), render_diagnostics(pipe.warnings, pipe.sources), False


@pytest.mark.parametrize("path", INVALID + VALID, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    diags, text, raised = _diagnose(path, monkeypatch)
    got = [(d.code, os.path.normpath(d.span.file), d.span.line, d.span.column) for d in diags]
    assert sorted(got) == sorted(_expectations(path))
    assert raised == (path in INVALID)
    assert raised == any(d.is_error for d in diags)
    expected = path.with_suffix(".expected")
    if REGEN:
        expected.write_text(text + "\n", encoding="utf-8")
    assert text + "\n" == expected.read_text(encoding="utf-8")


def test_the_fixtures_cover_every_code() -> None:
    seen = {code for p in INVALID + VALID for code, *_ in _expectations(p)}
    assert ALL_CODES <= seen


def test_a_file_reports_several_errors_at_once() -> None:
    codes = {code for code, *_ in _expectations(FIXTURES / "invalid" / "several_at_once.moa")}
    assert len(codes) >= 6


def _errors(text: str) -> list:
    with pytest.raises(MoaError) as info:
        moa_dsl.loads(text)
    return info.value.diagnostics


def test_did_you_mean_names_the_closest_model() -> None:
    [d] = _errors('model qwen = together:"Q"\nnode a = propose qwn\n')
    assert (d.code, d.message, d.hint) == ("E201", "unknown model 'qwn'", "did you mean 'qwen'?")


def test_unknown_member_hint_uses_full_member_names() -> None:
    diags = _errors('layer L = propose [openai:"gpt-4o-mini" * 2]\nnode f = aggregate openai:"x" <- L.gpt_4o_mini.3\n')
    assert diags[0].code == "E201"
    assert diags[0].hint in ("did you mean 'L.gpt_4o_mini.1'?", "did you mean 'L.gpt_4o_mini.2'?")


def test_cycle_message_lists_the_cycle() -> None:
    diags = _errors('node a = aggregate openai:"m" <- b\nnode b = aggregate openai:"m" <- a\n')
    assert [d.message for d in diags if d.code == "E203"] == ["cycle: a -> b -> a"]


def test_self_loop_is_a_cycle() -> None:
    diags = _errors('node a = aggregate openai:"m" <- a\n')
    assert [d.message for d in diags] == ["cycle: a -> a"]


def test_e202_gives_the_first_definition() -> None:
    [d] = _errors('prompt p = "a"\nprompt p = "b"\nnode n = propose openai:"m"\n')
    assert d.code == "E202" and "first at <string>:1:8" in d.message


def test_e207_lists_the_sinks() -> None:
    [d] = _errors('node a = propose openai:"m"\nnode b = propose openai:"m"\n')
    assert d.code == "E207" and "(a, b)" in d.message and d.hint == "add `output NAME`, e.g. `output b`"


def test_empty_file_has_no_output() -> None:
    [d] = _errors("# nothing here\n")
    assert d.code == "E207" and (d.span.line, d.span.column) == (1, 1)


def test_output_naming_a_layer_is_rejected_with_its_members() -> None:
    [d] = _errors('layer L = propose [openai:"a", openai:"b"]\noutput L\n')
    assert d.code == "E201" and "L.a, L.b" in d.hint


@pytest.mark.parametrize("params, code", [
    ("temperature = 2.01", "E206"), ("top_p = 1.5", "E206"), ("max_tokens = 1.0", "E206"),
    ("seed = true", "E206"), ("stop = [\"a\", 1]", "E206"), ("timeout = 0", "E206"),
    ("retries = -1", "E206"), ("cache = 1", "E206"), ("system = 3", "E206"),
    ("temperature = 1e999", "E206"), ("temperature = env(\"T\")", "E206"), ("temperature = x", "E206"),
    ("temp = 1", "E205"), ("price = [1, 2]", "E205"), ("system = nope", "E201"),
])
def test_parameter_types_and_ranges(params: str, code: str) -> None:
    diags = _errors(f'node a = propose openai:"m" {{ {params} }}\n')
    assert [d.code for d in diags] == [code]


@pytest.mark.parametrize("option, code", [
    ("max_concurrency = 0", "E206"), ("headers = [1]", "E206"), ("base_url = 3", "E206"),
    ("retry = 1", "E205"), ("timeout = -2", "E206"),
    ("max_response_bytes = 0", "E206"), ("max_response_bytes = 1.5", "E206"), ('max_response_bytes = "8M"', "E206"),
])
def test_provider_options(option: str, code: str) -> None:
    diags = _errors(f'provider p = openai {{ {option} }}\nnode a = propose p:"m"\n')
    assert [d.code for d in diags] == [code]


def test_min_inputs_from_defaults_counts_against_each_aggregator() -> None:
    diags = _errors('defaults { min_inputs = 2 }\nnode a = propose openai:"m"\n'
                    'node f = aggregate openai:"m" <- a\nnode g = aggregate openai:"m" <- a\n'
                    'node h = aggregate openai:"m" <- f, g\n')
    assert [(d.code, d.span.line) for d in diags] == [("E209", 1)]  # once, where it was set
    assert "'f' has only 1 input" in diags[0].message


def test_valid_params_pass_and_prompt_defaults_to_the_reference() -> None:
    pipe = moa_dsl.loads('node a = propose openai:"m" { top_p = 1, stop = "x", timeout = 5, retries = 0 }\n'
                         'node f = aggregate openai:"m" <- a { min_inputs = 1 }\n')
    assert pipe.graph.nodes["f"]["params"]["prompt"] == REFERENCE_PROMPT
    assert pipe.graph.nodes["a"]["params"]["retries"] == 0
    assert pipe.warnings == ()


def test_warnings_alone_do_not_raise() -> None:
    pipe = moa_dsl.loads('provider p = openai { api_key = "sk-1" }\nnode a = propose p:"m"\n')
    assert [w.code for w in pipe.warnings] == ["W302"]


def test_literal_secret_is_masked_in_rendered_diagnostics() -> None:
    secret = "sk-live-SECRETSECRET"
    pipe = moa_dsl.loads(f'provider p = openai {{ api_key = "{secret}" }}\nnode a = propose p:"m"\n')
    assert secret not in render_diagnostics(pipe.warnings, pipe.sources)
    with pytest.raises(MoaError) as info:
        moa_dsl.loads(f'provider p = openai {{ api_key = "{secret}" }}\nnode a = propose p:"m" {{ x = 1 }}\n')
    assert secret not in str(info.value) and secret not in info.value.render()


def test_huge_sample_count_is_rejected_not_expanded() -> None:
    [d] = _errors('layer L = propose [openai:"m" * 100000000]\n')
    assert d.code == "E206"


def test_an_unknown_model_in_a_sampled_member_is_reported_once() -> None:
    diags = _errors('layer L = propose [nope * 3, bad:"m" * 2]\nnode f = aggregate openai:"x" <- L\n')
    assert [(d.code, d.message) for d in diags] == [("E201", "unknown model 'nope'"),
                                                    ("E201", "unknown provider 'bad'")]


def test_max_response_bytes_reaches_the_provider_config() -> None:
    import moa_dsl
    from moa_dsl.config import DEFAULT_MAX_RESPONSE_BYTES

    pipe = moa_dsl.loads('provider p = openai { base_url = "http://127.0.0.1:9/v1", max_response_bytes = 1024 }\n'
                         'node a = propose p:"m"\n')
    providers = pipe.graph.graph["providers"]
    assert providers["p"].max_response_bytes == 1024
    assert DEFAULT_MAX_RESPONSE_BYTES == 8 * 1024 * 1024


# ---- checked at `moa check` time, not at run time ------------------------------------------------

@pytest.mark.parametrize("url, words", [
    ("http://[::1/v1", "not a valid URL"),
    ("ftp://h/v1", "http or https"),
    ("localhost:8000/v1", "http or https"),
    ("http:///v1", "no host"),
    ("http://h:0/v1", "port"),
    ("http://h:65536/v1", "port"),
    ("http://h:http/v1", "port"),
    ("", "http or https"),
])
def test_a_bad_base_url_is_e206_at_check_time(url: str, words: str) -> None:
    [d] = _errors(f'provider p = openai {{ base_url = "{url}", api_key = env("K") }}\nnode a = propose p:"x"\n')
    assert d.code == "E206" and "base_url" in d.message and words in d.message
    assert (d.span.line, d.span.column) == (1, 34)


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000/v1", "https://api.example.com/v1/", "http://[::1]:8080/v1",
                                 "http://localhost/v1", "https://h:65535"])
def test_good_base_urls_pass(url: str) -> None:
    pipe = moa_dsl.loads(f'provider p = openai {{ base_url = "{url}", api_key = env("K") }}\nnode a = propose p:"x"\n')
    assert pipe.graph.graph["providers"]["p"].base_url == url


# ---- base_url as a list: replicas of one server ---------------------------------------------------

def test_a_list_of_base_urls_is_kept_in_order_as_a_tuple() -> None:
    pipe = moa_dsl.loads('provider gpus = openai { base_url = ["http://gpu1:8000/v1", "http://gpu2:8000/v1/"], '
                         'api_key = env("K"), max_concurrency = 4 }\nnode a = propose gpus:"x"\n')
    cfg = pipe.graph.graph["providers"]["gpus"]
    assert cfg.base_url == ("http://gpu1:8000/v1", "http://gpu2:8000/v1/") and cfg.max_concurrency == 4
    assert moa_dsl.loads('provider one = openai { base_url = ["http://h/v1"] }\nnode a = propose one:"x"\n') \
        .graph.graph["providers"]["one"].base_url == ("http://h/v1",)


@pytest.mark.parametrize("urls, column, words", [
    ("[]", 34, "empty list"),
    ('["http://a/v1", env("GPU2")]', 50, "item 2 must be a string URL, not env(...)"),
    ('["http://a/v1", 8000]', 50, "item 2 must be a string URL, not an integer"),
    ('["http://a/v1", ["http://b/v1"]]', 50, "item 2 must be a string URL, not a list of 1"),
    ('["gpu1:8000/v1"]', 35, "item 1 must be an http or https URL"),
    ('["http://a/v1", "http:///v1"]', 50, "item 2 has no host"),
    ('["http://a/v1", "http://b:0/v1"]', 50, "item 2 has an invalid port"),
    ('["http://a/v1", "http://b/v1", "HTTP://A/v1/"]', 65, "item 3 repeats an earlier URL (first at <string>:1:35)"),
])
def test_a_bad_list_of_base_urls_is_e206_at_the_item(urls: str, column: int, words: str) -> None:
    [d] = _errors(f'provider p = openai {{ base_url = {urls}, api_key = env("K") }}\nnode a = propose p:"x"\n')
    assert d.code == "E206" and "'base_url'" in d.message and words in d.message, d.message
    assert (d.span.line, d.span.column) == (1, column)


def test_a_bad_replica_url_is_not_echoed() -> None:
    [d] = _errors('provider p = openai { base_url = ["http://u:s3cret-pw@a/v1", "ftp://u:s3cret-pw@b/v1"] }\n'
                  'node a = propose p:"x"\n')
    assert d.code == "E206" and "s3cret" not in d.message


def test_an_empty_model_id_is_e206_where_it_is() -> None:
    diags = _errors('model m = openai:""\nlayer L = propose [openai:"", openai:"ok"]\nnode f = aggregate openai:"a" <- L\n')
    assert [(d.code, d.span.line, d.span.column) for d in diags] == [("E206", 1, 18), ("E206", 2, 27)]
    assert all("empty model id" in d.message for d in diags)


def test_an_explicit_member_name_colliding_with_another_member_is_e202() -> None:
    diags = _errors('model x = openai:"m"\nlayer L = propose [x, x = openai:"y"]\n'
                    'node f = aggregate openai:"a" <- L\n')
    [d] = diags
    assert d.code == "E202" and (d.span.line, d.span.column) == (2, 23)
    assert "'x'" in d.message and "<string>:2:20" in d.message  # both positions


def test_two_explicit_members_with_one_name_say_where_the_first_is() -> None:
    [d] = _errors('layer L = propose [a = openai:"m", a = openai:"n"]\nnode f = aggregate openai:"z" <- L\n')
    assert d.code == "E202" and "<string>:1:20" in d.message and d.span.column == 36


def test_samples_of_one_unnamed_model_are_still_numbered() -> None:
    pipe = moa_dsl.loads('layer L = propose [openai:"m", openai:"m" * 2]\nnode f = aggregate openai:"z" <- L\n')
    assert [n for n in pipe.graph if n.startswith("L.")] == ["L.m.1", "L.m.2", "L.m.3"]


def test_a_key_set_twice_in_a_block_with_a_prompt_name_is_a_diagnostic_not_a_crash():
    """Found by the fuzzer: the block's `where=` argument shadowed the position formatter."""
    src = ('prompt critic = "x"\nnode a = propose openai:"m"\n'
           'node b = aggregate openai:"m" <- a { prompt = critic, temperature = 0.1, temperature = 0.2 }\n')
    with pytest.raises(MoaError) as info:
        moa_dsl.loads(src)
    assert [d.code for d in info.value.diagnostics] == ["E202"]
    assert "'temperature' is set twice in this block (first at <string>:3:" in str(info.value)


# ---- rank, vote and the operator parameters ------------------------------------------------------

_OPS_HEAD = 'model m = openai:"m" { price = [1, 1] }\nlayer p = propose [m * 3]\n'


@pytest.mark.parametrize("node, code", [
    ('node r = rank m <- p { top_k = 0 }', "E206"), ('node r = rank m <- p { top_k = 2.0 }', "E206"),
    ('node r = rank m <- p { quorum = 0 }', "E206"), ('node r = rank m <- p { top_k = true }', "E206"),
    ('node a = aggregate m <- p { window = 1 }', "E206"), ('node a = aggregate m <- p { window = "3" }', "E206"),
    ('node a = aggregate m <- p { agree = 1 }', "E206"), ('node v = vote <- p { normalize = "yes" }', "E206"),
    ('node v = vote <- p { extract = "[" }', "E206"), ('node v = vote <- p { extract = x }', "E206"),
    ('node v = vote <- p { extract = "a{1,2" }', None), ('node v = vote <- p { extract = "(?P<n>" }', "E206"),
    ('node a = aggregate m <- p { top_k = 1 }', "E205"), ('node r = rank m <- p { agree = true }', "E205"),
    ('node r = rank m <- p { window = 2 }', "E205"), ('node r = rank m <- p { normalize = true }', "E205"),
    ('node v = vote <- p { temperature = 0 }', "E205"), ('node v = vote <- p { cache = false }', "E205"),
    ('node v = vote <- p { system = "s" }', "E205"), ('node v = vote <- p { window = 2 }', "E205"),
    ('node v = vote <- p { top_k = 1 }', "E205"), ('node v = vote <- p { qourum = 2 }', "E205"),
    ('node v = vote <- p { price = [1, 1] }', "E205"),
    ('node r = rank m <- p { top_k = 4 }', "E209"), ('node r = rank m <- p.m.1, p.m.2 { quorum = 3 }', "E209"),
    ('node a = aggregate m <- p { quorum = 4 }', "E209"), ('node v = vote <- p { min_inputs = 4 }', "E209"),
    ('node v = vote m <- p', "E204"), ('node v = vote', "E204"), ('node r = rank m', "E204"),
    ('layer r = rank [m] <- p', "E204"), ('layer v = vote [m] <- p', "E204"),
])
def test_operator_diagnostics(node: str, code: str | None) -> None:
    src = _OPS_HEAD + node + "\n"
    if code is None:
        moa_dsl.loads(src + "output p.m.1\n")
        return
    assert [d.code for d in _errors(src) if d.code not in ("E207",)] == [code]


def test_top_k_and_quorum_count_a_layer_as_its_members() -> None:
    pipe = moa_dsl.loads(_OPS_HEAD + "node r = rank m <- p { top_k = 3, quorum = 3 }\n")
    assert pipe.graph.nodes["r"]["params"]["top_k"] == 3


def test_e205_for_a_role_names_the_roles_that_take_the_key() -> None:
    [d] = _errors(_OPS_HEAD + "node a = aggregate m <- p { top_k = 2 }\n")
    assert d.message == "'top_k' applies to rank nodes only, and node 'a' is an aggregator"
    assert (d.span.line, d.span.column) == (3, 29)          # the key, not its value
    [d] = _errors(_OPS_HEAD + "node v = vote <- p { temperature = 0 }\n")
    assert d.message == "'temperature' is a model parameter, and node 'v' is a vote: it calls no model"
    assert d.hint == "a vote takes only min_inputs, extract and normalize"


def test_a_vote_with_a_model_is_e204_at_the_model() -> None:
    [d] = _errors(_OPS_HEAD + 'node v = vote openai:"x" <- p\n')
    assert d.code == "E204" and (d.span.line, d.span.column, d.span.end_column) == (3, 15, 25)
    [d] = _errors(_OPS_HEAD + 'node v = vote nosuch <- p\n')  # not resolved as well: one diagnostic
    assert d.code == "E204"


def test_a_bad_pattern_says_what_re_says() -> None:
    [d] = _errors(_OPS_HEAD + 'node v = vote <- p { extract = "(a|b" }\n')
    assert d.message == "'extract' is not a valid regular expression: missing ), unterminated subpattern at position 0"
    assert d.hint is None and (d.span.line, d.span.column) == (3, 32)


def test_budget_keys_types_and_did_you_mean() -> None:
    diags = _errors('budget { usd = -1, tokens = 0, calls = 2.5, cals = 3, usd = 1 }\nnode a = propose openai:"a"\n')
    assert [(d.code, d.span.column) for d in diags] == [("E206", 16), ("E206", 29), ("E206", 40), ("E205", 45),
                                                        ("E202", 55)]
    assert diags[3].hint == "did you mean 'calls'?"
    [d] = _errors('budget { money = 3 }\nnode a = propose openai:"a"\n')
    assert d.hint == "keys: usd, tokens, calls"


def test_a_second_budget_names_the_first() -> None:
    [d] = _errors('budget { tokens = 1 }\nnode a = propose openai:"a"\nbudget { calls = 1 }\n')
    assert d.code == "E202" and d.message == "the budget is set twice (first at <string>:1:1)"
    assert (d.span.line, d.span.column, d.span.end_column) == (3, 1, 7)


def test_w303_names_each_unpriced_model_of_a_live_node_once() -> None:
    pipe = moa_dsl.loads('budget { tokens = 10, usd = 1 }\nmodel cheap = openai:"c" { price = [0, 0] }\n'
                         'model free = ollama:"x"\nlayer p = propose [free * 3, cheap, groq:"llama-3"]\n'
                         'node dead = propose anthropic:"claude"\nnode v = vote <- p\n'
                         'node f = aggregate cheap <- v, p\noutput f\n')
    [w] = [w for w in pipe.warnings if w.code == "W303"]
    assert w.message == ('budget.usd is set, but models free, groq:"llama-3" have no price: '
                         "their calls count as costing nothing")
    assert (w.span.line, w.span.column) == (1, 23)


def test_no_w303_without_usd_or_with_every_model_priced() -> None:
    assert moa_dsl.loads('budget { tokens = 10 }\nnode a = propose openai:"a"\n').warnings == ()
    assert moa_dsl.loads('budget { usd = 1 }\nmodel m = openai:"a" { price = [1, 2] }\nlayer p = propose [m * 2]\n'
                         'node v = vote <- p\n').warnings == ()
