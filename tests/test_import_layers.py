"""keras_vq's modules import each other without a cycle, and the export and preset layers
know no model class.

Rule: an edge ``a → b`` is any import in ``a`` of the keras_vq module ``b``, at module
level or inside a function (lazy imports count: a layer that imports a higher one lazily is
still circular). ``from keras_vq.x import y`` is an edge to ``keras_vq.x.y`` when that is a
module, else to ``keras_vq.x``. Importing ``keras_vq.x`` also runs the package
``keras_vq/__init__.py`` first; that implicit parent import is not an edge (every package
that re-exports its submodules would be a cycle). The graph without lazy imports is checked
too, and the lower layers must import no ``keras_vq.models`` module at all. (Before the
layering change the lazy graph had the cycle keras_vq → callbacks → evaluation →
sample_quality → models → classifier → presets → keras_vq, and export/export_formats
imported the model classes that import them back.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "keras_vq"
# Export and preset I/O, and what they build on: none may import a model module.
LOWER_LAYERS = (
    "keras_vq.export",
    "keras_vq.export_formats",
    "keras_vq.serving",
    "keras_vq.presets",
    "keras_vq.saving",
    "keras_vq.backend",
    "keras_vq.layers",
    "keras_vq._validation",
)


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(node: ast.AST, module: str, is_package: bool, modules) -> set[str]:
    """The keras_vq modules an import statement names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:  # relative: from the package that holds `module`
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    targets = set()
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        targets.add(submodule if submodule in modules else base)
    return {t for t in targets if t in modules}


def edges(lazy: bool) -> dict[str, set[str]]:
    """Module → the keras_vq modules it imports (at module level, or anywhere if ``lazy``)."""
    modules = module_names()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.walk(tree) if lazy else _module_level(tree.body)
        is_package = path.name == "__init__.py"
        graph[module] = set().union(*(imported(n, module, is_package, modules) for n in nodes))
        graph[module].discard(module)
    return graph


def _module_level(body):
    """Statements run on import: the body, into if/try/with blocks (not functions, classes'
    methods, or ``if TYPE_CHECKING``)."""
    for node in body:
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            yield from _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [n for h in node.handlers for n in h.body]
            yield from _module_level(node.body + handlers + node.orelse + node.finalbody)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _module_level(node.body)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    # The oracle works: a planted cycle is found, an acyclic graph is not.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_the_model_imports():
    graph = edges(lazy=False)
    assert "keras_vq.presets" in graph["keras_vq.models.vqvae"]
    assert "keras_vq.serving" in graph["keras_vq.models.vae"]
    assert "keras_vq.models.pixelcnn" in graph["keras_vq.models.image_generator"]


@pytest.mark.parametrize("lazy", [True, False])
def test_no_import_cycle_in_keras_vq(lazy):
    cycle = find_cycle(edges(lazy=lazy))
    assert cycle is None, " → ".join(cycle)


def test_export_and_preset_layers_import_no_model_module():
    graph = edges(lazy=True)
    offenders = {
        module: sorted(t for t in targets if t.startswith("keras_vq.models"))
        for module, targets in graph.items()
        if module.startswith(LOWER_LAYERS)
    }
    assert not any(offenders.values()), {m: t for m, t in offenders.items() if t}
