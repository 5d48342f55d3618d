"""The package's rules (docs/architecture.md): no import cycles; inference never imports training,
phantom, import or evaluation code, at module level or inside a function; of inference, only
nnunet_glue.py imports nnU-Net, pinned to the installed and required release; one table (options.py)
defines every command-line option, and README lists those of `predict` as the table says."""

import ast
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "mixmicrobleednet"
#: Beside inference: each may import inference modules, never the other way round.
TOOLS = {"train", "phantoms", "v1import", "evaluate", "regression"}
FRONT = {"cli"}  # the command line reaches every tool, each inside its command


def _imports(module: Path, level: int = 1) -> set[str]:
    """The package's modules that `module` imports anywhere in its code (`level`: the relative import's
    dots that reach the package, 2 in a subpackage)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == level:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").is_file())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixmicrobleednet."):
            found.add(node.module.split(".")[1])
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports; a subpackage (review/) is one node."""
    graph = {path.stem: _imports(path) - {path.stem} for path in PACKAGE.glob("*.py")}
    for subpackage in (path.parent for path in PACKAGE.glob("*/__init__.py")):
        graph[subpackage.name] = set().union(*(_imports(path, 2) for path in subpackage.glob("*.py"))) - {subpackage.name}
    return graph


def test_the_graph_is_read():
    graph = _graph()
    assert "model" in graph["pipeline"] and "modelfolder" in graph["model"] and "train" in graph["cli"]
    assert "nnunet_glue" in graph["model"]  # imported inside functions
    assert "decisions" in graph["review"] and "review" in graph["cli"]  # a subpackage, as one node


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


def _packages_imported(module: Path) -> set[str]:
    """The top-level packages outside this one that `module` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - {"mixmicrobleednet"}


def test_of_inference_only_the_glue_imports_nnunet():
    inference = set(_graph()) - TOOLS - FRONT
    sources = {module: [PACKAGE / f"{module}.py"] if (PACKAGE / f"{module}.py").is_file()
               else list((PACKAGE / module).glob("*.py")) for module in inference}
    importers = {module for module, paths in sources.items() if any("nnunetv2" in _packages_imported(p) for p in paths)}
    assert importers == {"nnunet_glue"}, f"nnunetv2 imported outside nnunet_glue.py: {sorted(importers - {'nnunet_glue'})}"


def _module_constant(module: Path, name: str):
    """The value a module assigns to `name` at its top level, read without importing it."""
    for node in ast.parse(module.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{module.name} assigns no {name}")


def test_nnunet_is_the_release_the_glue_mirrors():
    """An nnU-Net upgrade fails here: nnunet_glue.py mirrors one release's internals, so the pin moves
    only with the glue checked against the new release (and the shipped tier run against it)."""
    pinned = _module_constant(PACKAGE / "nnunet_glue.py", "NNUNET_VERSION")
    assert metadata.version("nnunetv2") == pinned
    requirement = f"nnunetv2=={pinned}"
    assert requirement in (REPO / "requirements.txt").read_text().split()
    assert requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_the_preprocessing_starts_without_nnunets_predictor_module():
    """nnU-Net's predictor module imports torch._dynamo (about 1.2 s): the preprocessing's imports
    leave it to the model's loading thread, so the first case is preprocessed meanwhile."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys; import mixmicrobleednet.nnunet_glue; "
                             "print(sorted(m for m in ('torch._dynamo', 'nnunetv2.inference.predict_from_raw_data') "
                             "if m in sys.modules))"], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def _argument_calls(path: Path) -> list[int]:
    """Lines where `path` calls add_argument (an option defined outside the table)."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"]


def test_only_the_option_table_defines_options():
    # the package and the container's entry point; benchmark scripts keep their own few options
    sources = [*PACKAGE.glob("*.py"), *PACKAGE.glob("*/*.py"), REPO / "process.py"]
    outside = {path.name: lines for path in sources if path.name != "options.py"
               for lines in [_argument_calls(path)] if lines}
    assert not outside, f"add_argument outside options.py: {outside}"
    assert _argument_calls(PACKAGE / "options.py"), "the table is no longer what builds the parsers"


def test_readme_lists_the_options_of_predict_as_the_table_says():
    from mixmicrobleednet.options import with_readme_table

    readme = (REPO / "README.md").read_text()
    assert readme == with_readme_table(readme), \
        "README's option list differs from options.OPTIONS: .venv/bin/python -m mixmicrobleednet.options README.md"
