"""The public surface: what `import moa_dsl` promises, and how a Pipeline shows itself."""
from __future__ import annotations

import moa_dsl

TOPOLOGY = """
node a = propose openai:"gpt-4o-mini"
node b = propose together:"meta-llama/Llama-3.3-70B-Instruct-Turbo"
node final = aggregate openai:"gpt-4o" <- a, b
"""


def test_exported_members():
    exported = {name for name in dir(moa_dsl) if not name.startswith("_")}
    assert set(moa_dsl.__all__) <= exported | {"load_ipython_extension"}
    for name in ("load", "loads", "Pipeline", "MoaError", "evaluate"):
        assert name in moa_dsl.__all__, name


def test_pipeline_displays_its_graph_as_inline_svg_without_network():
    pipe = moa_dsl.loads(TOPOLOGY)
    html = pipe._repr_html_()
    assert "<svg" in html and "final" in html
    assert "http" not in html.replace("http://www.w3.org", "")  # nothing fetched by the frontend


def test_moa_error_renders_without_traceback():
    try:
        moa_dsl.loads("node a = propose qwn\n")
    except moa_dsl.MoaError as exc:
        lines = exc._render_traceback_()
        assert lines[0].startswith("<string>:1:18: error[E201]")
        assert not any("Traceback" in line for line in lines)
    else:
        raise AssertionError("an unknown model must raise")
