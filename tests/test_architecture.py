"""The package's import rules (README, docs/architecture.md): no import cycles, and inference never
imports training, phantom, import or evaluation code, at module level or inside a function."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mixmicrobleednet"
#: Beside inference: each may import inference modules, never the other way round.
TOOLS = {"train", "phantoms", "v1import", "evaluate", "regression"}
FRONT = {"cli"}  # the command line reaches every tool, each inside its command


def _imports(module: Path) -> set[str]:
    """The package's modules that `module` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").is_file())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixmicrobleednet."):
            found.add(node.module.split(".")[1])
    return found


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path) - {path.stem} for path in PACKAGE.glob("*.py")}


def test_the_graph_is_read():
    graph = _graph()
    assert "model" in graph["pipeline"] and "modelfolder" in graph["model"] and "train" in graph["cli"]


def test_no_import_cycles():
    graph, done, path = _graph(), set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_inference_never_imports_tools():
    graph = _graph()
    inference = set(graph) - TOOLS - FRONT
    assert {"runner", "pipeline", "model", "modelfolder", "cases", "imaging", "records"} <= inference
    reached = {module: graph[module] & TOOLS for module in inference}
    assert not any(reached.values()), {m: sorted(t) for m, t in reached.items() if t}
