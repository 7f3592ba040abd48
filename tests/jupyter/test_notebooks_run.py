"""Both notebooks, executed top to bottom in a real kernel on the embedded local models, no API key.

The kernel is this interpreter (a kernelspec written to a temporary JUPYTER_PATH), so it imports
the package under test; the response cache is a temporary directory, so the first run really calls
the models and the "rerun from the cache" cells really hit it. nbclient keeps the widget state the
kernel sent, which shows the live panel's updates reached the frontend.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

pytestmark = [pytest.mark.local_models, pytest.mark.slow]

NOTEBOOKS = ROOT / "notebooks"
KERNEL = "moa-dsl-test"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "moa-dsl test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "cache"))
    for key in [k for k in os.environ if k.endswith("_API_KEY")]:
        monkeypatch.delenv(key)   # "runs with no API key" must be true, not assumed
    return tmp_path


def execute(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=600, store_widget_state=True,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()   # raises CellExecutionError on any cell not tagged raises-exception
    _publish(nb, name)
    return nb


def _publish(nb: nbformat.NotebookNode, name: str) -> None:
    """The executed notebook as HTML, into CI's artifacts (never into the repository): docs/notebooks/
    holds a copy made the same way (docs/notebooks/README.md says how to regenerate it)."""
    from nbconvert import HTMLExporter

    base = os.environ.get("MOA_ARTIFACTS")
    out = Path(base) / "notebooks" if base else Path(tempfile.mkdtemp(prefix="moa-notebooks-"))
    out.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter().from_notebook_node(nb)
    (out / name.replace(".ipynb", ".html")).write_text(body)
    print(f"\nrendered {name}: {out / name.replace('.ipynb', '.html')}", file=sys.stderr)


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts += [str(v) for v in out.get("data", {}).values()]
            parts += out.get("traceback", [])
    return "\n".join(parts)


def widget_values(nb: nbformat.NotebookNode) -> list[str]:
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return [str(m.get("state", {}).get("value", "")) for m in state.values()]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "explore.ipynb"])
def test_committed_notebooks_are_valid_and_have_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_quickstart_runs(kernel_env):
    nb = execute("quickstart.ipynb")
    text = outputs_text(nb)
    # the deliberate mistake shows its diagnostics, never a traceback
    bad = next(c for c in nb.cells if "raises-exception" in c.metadata.get("tags", []))
    err = next(o for o in bad.outputs if o.output_type == "error")
    assert "E201" in "\n".join(err.traceback) and "Traceback" not in "\n".join(err.traceback)
    assert "Traceback" not in text
    # the live panel ran in widgets and left a static record in their place: the saved outputs
    # show every row and the totals without any widget model
    assert ">done<" in text and ">cached<" in text and "ok: 0 calls, 3 cache hits" in text
    assert "votes: {" in text and "expected: 32" in text  # the vote section's tally
    panels = [o for c in nb.cells for o in c.get("outputs", []) if "moa-panel" in str(o.get("data", {}))]
    assert panels and all("application/vnd.jupyter.widget-view+json" not in o.data for o in panels)


def test_explore_runs(kernel_env):
    nb = execute("explore.ipynb")
    text = outputs_text(nb)
    assert "Traceback" not in text
    assert "| layered | 1 | final | ok |" in text or "| layered | 1 | final | cached |" in text
    assert "nonuniform" in text
