"""The house rule, checked on the source: every import points down, and there is no cycle.

Layers, lowest first: the shared vocabulary (`errors`, `config`), `language`, `providers`,
`runtime`, then the faces (`testing`, `evaluation`; above them `cli` and `jupyter`), then the
package root. Every import is counted, including those inside functions; only imports under
`if TYPE_CHECKING:` are left out (they never run).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "moa_dsl"

RANKS = [  # (module prefix, rank): the longest matching prefix wins
    ("moa_dsl.errors", 0), ("moa_dsl.config", 0),
    ("moa_dsl.language", 1),
    ("moa_dsl.providers", 2),
    ("moa_dsl.runtime", 3),
    ("moa_dsl.testing", 4), ("moa_dsl.evaluation", 4),
    ("moa_dsl.cli", 5), ("moa_dsl.jupyter", 5), ("moa_dsl.serve", 5),
    ("moa_dsl", 6),                    # the package root: the public facade, and __main__
]
CORE = ("moa_dsl.errors", "moa_dsl.config", "moa_dsl.language", "moa_dsl.providers", "moa_dsl.runtime")
DISPLAY = ("IPython", "ipywidgets", "ipykernel", "matplotlib", "tqdm", "rich")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def rank(module: str) -> int:
    return next(r for prefix, r in sorted(RANKS, key=lambda pr: -len(pr[0]))
                if module == prefix or module.startswith(prefix + "."))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import node, skipping the bodies of `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports_of(child))
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def imported(module: str, path: Path) -> set[str]:
    """The modules `module` imports: package-internal ones by full name, others by top-level name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        submodules = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
        out |= submodules          # `from . import graph`: the module graph, not the package's contents
        if len(submodules) < len(node.names):
            out.add(target)
    return out


def import_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for module, path in MODULES.items():
        g.add_node(module)
        for target in imported(module, path):
            if target in MODULES and target != module:
                g.add_edge(module, target)
    return g


def test_the_import_graph_has_no_cycle():
    g = import_graph()
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_every_import_points_down():
    up = [(a, b) for a, b in import_graph().edges if rank(b) > rank(a)]
    assert not up, "imports that point up a layer: " + ", ".join(f"{a} -> {b}" for a, b in up)


FACES = ("cli", "jupyter", "serve")
# The one sideways import allowed: `moa serve` (moa_dsl.cli.serve) starts the server through its entry
# point, the package moa_dsl.serve (which re-exports `serve`), imported lazily so `moa` works without
# the serve extra. Nothing else in a face may import another face.
SIDEWAYS_ALLOWED = {("moa_dsl.cli.serve", "moa_dsl.serve")}


def _face(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FACES else None


def test_the_faces_do_not_import_each_other_sideways():
    g = import_graph()
    sideways = [(a, b) for a, b in g.edges
                if _face(a) and _face(b) and _face(a) != _face(b) and (a, b) not in SIDEWAYS_ALLOWED]
    assert not sideways, sideways
    assert ("moa_dsl.cli.serve", "moa_dsl.serve") in g.edges   # the allowance is still needed


def test_the_core_never_imports_display_code():
    bad = [(m, t) for m, p in MODULES.items() if m.startswith(CORE)
           for t in imported(m, p) if t.split(".")[0] in DISPLAY]
    assert not bad, f"core modules importing display libraries: {bad}"


def test_the_checker_sees_what_it_must(tmp_path):
    """The rules above are only worth something if the walker finds function-local imports and
    skips TYPE_CHECKING blocks: checked on the package's own known cases."""
    deps = imported("moa_dsl.jupyter", MODULES["moa_dsl.jupyter"])   # imports .magics inside a function
    assert "moa_dsl.jupyter.magics" in deps
    report = imported("moa_dsl.runtime.report", MODULES["moa_dsl.runtime.report"])
    assert "moa_dsl.runtime.result" not in report                    # only under TYPE_CHECKING there
    assert rank("moa_dsl.runtime.scheduler") == 3 and rank("moa_dsl") == 6 and rank("moa_dsl.errors") == 0


@pytest.mark.parametrize("blocked", [("IPython", "ipywidgets")])
def test_html_display_needs_no_notebook_stack(blocked):
    """`pip install moa-dsl` with no extras: a Pipeline and a RunResult still render as HTML."""
    code = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None          # any import of it now raises ImportError
import moa_dsl
from moa_dsl.runtime import NodeResult, RunResult, Usage
pipe = moa_dsl.loads('node a = propose openai:"m"\\nnode b = aggregate openai:"m" <- a')
page = pipe._repr_html_()
assert "<svg" in page and "<table" in page, page[:200]
result = RunResult("hi", "b", "ok", 0.1, Usage(calls=2), {{"b": NodeResult("ok", "m", "openai", "hi")}})
assert "<table" in result._repr_html_() and "| b | ok |" in result._repr_markdown_()
print("rendered")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "rendered" in done.stdout, done.stderr[-2000:]
