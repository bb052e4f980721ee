"""The layout is the architecture: layers import downward only, and nothing imports in a circle.

Deferred imports (inside functions, which the stages use to start fast) count like any other."""

from __future__ import annotations

import ast
import graphlib
from functools import cache
from pathlib import Path

import pytest

from conftest import PROJECT

SOURCE = PROJECT / "src"

# Bottom first. A module may import modules of its own layer and of the layers below it.
LAYERS = (
    ("foundation", "core"),
    ("models, data and packages", "models package"),
    ("inference", "inference"),
    ("pipeline stages", "stages"),
    ("registry", "registry"),
    ("serving", "serve"),
    ("the API under the CLI", "api"),
    ("the page", "ui"),
    ("command line", "cli"),
)
PUBLIC_ROOT = "tuneledger"  # its `load()` is the models layer's loader, under the package's own name
PUBLIC_ROOT_LAYER = "models, data and packages"


@cache
def modules() -> dict[str, Path]:
    found = {}
    for path in (SOURCE / "tuneledger").rglob("*.py"):
        name = ".".join(path.relative_to(SOURCE).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


@cache
def imports(module: str) -> frozenset[str]:
    """Project modules that `module` imports anywhere in its text; `from pkg import sub` names `sub`."""
    known, found = modules(), set()
    for node in ast.walk(ast.parse(known[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known.keys()
            found |= submodules or {node.module}
    return frozenset(name for name in found if name in known and name != module)


def layer_of(module: str) -> int:
    if module == PUBLIC_ROOT:
        return [name for name, _ in LAYERS].index(PUBLIC_ROOT_LAYER)
    relative = module.removeprefix(PUBLIC_ROOT + ".")
    matches = [
        index
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes.split()
        if relative == prefix or relative.startswith(prefix + ".")
    ]
    assert matches, f"{module} belongs to no layer: add it to LAYERS in {Path(__file__).name}"
    assert len(matches) == 1, f"{module} is in more than one layer of LAYERS: {matches}"
    return matches[0]


def test_no_module_imports_in_a_circle():
    graph = graphlib.TopologicalSorter({module: imports(module) for module in modules()})
    try:
        graph.prepare()
    except graphlib.CycleError as cycle:
        pytest.fail(f"import cycle: {' → '.join(cycle.args[1])}")


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_imports_a_layer_above_its_own(module):
    own = layer_of(module)
    above = sorted(name for name in imports(module) if layer_of(name) > own)
    assert not above, f"{module} ({LAYERS[own][0]}) imports {above} from a layer above"


def test_the_command_line_reaches_the_product_through_the_api_alone():
    foundation = {module for module in modules() if module != PUBLIC_ROOT and layer_of(module) == 0}
    beyond = imports("tuneledger.cli") - foundation
    # registry.artifacts: only the default artifact name that the options show; ui: the page's
    # entry, a client of the API like the command line
    assert beyond == {"tuneledger.api", "tuneledger.registry.artifacts", "tuneledger.ui"}
