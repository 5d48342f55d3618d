"""The package's rules (docs/architecture.md): no import cycles; inference never imports training,
phantom, import or evaluation code, at module level or inside a function; one table (options.py)
defines every command-line option, and README lists those of `predict` as the table says."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "mixmicrobleednet"
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


def _argument_calls(path: Path) -> list[int]:
    """Lines where `path` calls add_argument (an option defined outside the table)."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"]


def test_only_the_option_table_defines_options():
    # the package and the container's entry point; benchmark scripts keep their own few options
    sources = [*PACKAGE.glob("*.py"), REPO / "process.py"]
    outside = {path.name: lines for path in sources if path.name != "options.py"
               for lines in [_argument_calls(path)] if lines}
    assert not outside, f"add_argument outside options.py: {outside}"
    assert _argument_calls(PACKAGE / "options.py"), "the table is no longer what builds the parsers"


def test_readme_lists_the_options_of_predict_as_the_table_says():
    from mixmicrobleednet.options import with_readme_table

    readme = (REPO / "README.md").read_text()
    assert readme == with_readme_table(readme), \
        "README's option list differs from options.OPTIONS: .venv/bin/python -m mixmicrobleednet.options README.md"
