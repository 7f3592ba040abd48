"""The public surface: what `import moa_dsl` exports, and `__all__` in every public module."""
from __future__ import annotations

import importlib
import types

import pytest
from test_layers import MODULES

import moa_dsl

EXPORTED = {
    "ConfigError", "Diagnostic", "EvalReport", "LocalModelError", "MoaError", "NodeResult", "Pipeline",
    "ProviderError", "RunFailed", "RunResult", "Usage", "aevaluate", "evaluate", "load",
    "load_ipython_extension", "loads", "sweep",
}
PUBLIC = sorted(m for m in MODULES if not any(part.startswith("_") for part in m.split(".")[1:]))
SCRIPTS = {"moa_dsl.providers.local.child"}   # run as a process, not imported: no API to declare


def test_the_package_exports_exactly_its_public_api():
    assert set(moa_dsl.__all__) == EXPORTED
    for name in EXPORTED:
        assert getattr(moa_dsl, name) is not None


def test_the_exported_objects_are_what_they_say():
    assert issubclass(moa_dsl.ConfigError, moa_dsl.MoaError) and issubclass(moa_dsl.RunFailed, moa_dsl.MoaError)
    assert callable(moa_dsl.load) and callable(moa_dsl.loads) and callable(moa_dsl.evaluate)
    pipe = moa_dsl.loads('node a = propose openai:"m"')
    assert isinstance(pipe, moa_dsl.Pipeline) and pipe.output == "a"


@pytest.mark.parametrize("module", [m for m in PUBLIC if m not in SCRIPTS])
def test_every_public_module_declares_all(module):
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{module} has no __all__"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("package", sorted(m for m in PUBLIC if MODULES[m].name == "__init__.py"))
def test_no_package_attribute_hides_a_submodule(package):
    """`import moa_dsl.x.y as m` must give the module y, never a function that shares its name."""
    pkg = importlib.import_module(package)
    for module in (m for m in MODULES if m.rpartition(".")[0] == package and not m.endswith("__main__")):
        importlib.import_module(module)
        attr = getattr(pkg, module.rpartition(".")[2])
        assert isinstance(attr, types.ModuleType), f"{package}.{module.rpartition('.')[2]} is {attr!r}, not the module"
