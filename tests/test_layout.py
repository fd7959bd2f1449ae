"""The layout's rules, read from the source (nothing is imported): each role's package imports
only what its ``__init__`` says it may, modules import each other without a circle, MLflow is
imported only at its boundary, and an import inside a function is there only to defer a heavy
library, saying so on its line (``# lazy: ...``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "thesis_mlflow"

# What each part of the library may import from the others: the "May import" sentence of each
# package's __init__ (a change here is a change of the design: docs/design.md section 2 too).
MAY_IMPORT = {
    "": {"tracking"},  # the package itself: telemetry off before anything else
    "learn": {"errors", "spec", "_lazy"},
    "tracking": {"learn", "errors", "spec", "secret", "_lazy"},
    "pipeline": {"learn", "tracking", "errors", "spec", "paths", "_lazy"},
    "grid": {"pipeline", "tracking", "learn", "errors", "spec", "paths", "permissions", "secret", "_lazy"},
    "report": {"grid", "tracking", "learn", "errors", "spec", "paths", "secret", "_lazy"},
    "forecast": {"grid", "tracking", "learn", "errors", "spec", "paths", "_lazy"},
    "server": {"tracking", "errors", "permissions", "secret", "_lazy"},
    "spec": {"errors"},
    "permissions": {"errors"},
    "secret": set(),
    "errors": set(),
    "paths": set(),
    "_lazy": set(),
}
# MLflow itself only behind its boundary; elsewhere only its plain record classes
MLFLOW_MAY_BE_IMPORTED_IN = {"tracking", "server"}
MLFLOW_RECORDS = "mlflow.entities"


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = PACKAGE) -> dict[str, ast.Module]:
    return {_module_name(p, root): ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))}


def _part(module: str) -> str:
    """``thesis_mlflow.grid.runs`` -> ``grid``; ``thesis_mlflow.spec`` -> ``spec``; the package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(tree: ast.Module, names: set[str], top_only: bool) -> list[tuple[ast.stmt, str]]:
    """(statement, module imported) for each of the package's modules a file imports; ``from x
    import y`` names the module ``x.y`` when that is one."""
    nodes = tree.body if top_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node, a.name) for a in node.names if a.name.split(".")[0] == "thesis_mlflow"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "thesis_mlflow":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((node, sub if sub in names else node.module))
    return out


def _check(modules: dict[str, ast.Module], sources: dict[str, list[str]]) -> list[str]:
    """Every breach of the rules above, one line each (empty: the layout holds)."""
    names = set(modules)
    wrong = []
    graph: dict[str, set[str]] = {m: set() for m in names}
    for m, tree in modules.items():
        top = {id(n) for n in tree.body}
        for node, target in _imports(tree, names, top_only=False):
            mine, theirs = _part(m), _part(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                wrong.append(f"{m}:{node.lineno} imports {target}: {mine or 'the package'} may not import {theirs}")
            graph[m].add(target)  # a deferred import is an edge too: a circle hidden by "# lazy:" is still a circle
            if id(node) not in top and "# lazy:" not in sources[m][node.lineno - 1]:
                wrong.append(f"{m}:{node.lineno} imports {target} inside a function without '# lazy: <what it defers>'")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for mod in mods:
                    if mod.split(".")[0] == "mlflow" and _part(m) not in MLFLOW_MAY_BE_IMPORTED_IN \
                            and not mod.startswith(MLFLOW_RECORDS):
                        wrong.append(f"{m}:{node.lineno} imports {mod}: MLflow is imported only in tracking/ and server/")
    # a circle among the imports, deferred ones included (a package's module counts as importing the package)
    for m in names:
        if "." in m.removeprefix("thesis_mlflow."):
            graph[m].add(m.rsplit(".", 1)[0])
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                wrong.append("import circle: " + " -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(names):
        if m not in state:
            visit(m, [m])
    return wrong


def _load(root: Path = PACKAGE):
    modules = _modules(root)
    sources = {_module_name(p, root): p.read_text().splitlines() for p in root.rglob("*.py")}
    return modules, sources


def test_the_library_keeps_its_layout():
    assert _check(*_load()) == []


def test_every_part_of_the_library_has_its_rule():
    parts = {_part(m) for m in _modules()}
    assert parts == set(MAY_IMPORT), parts ^ set(MAY_IMPORT)


@pytest.mark.parametrize("file, line, found", [
    # a step's work reaching up to the grid that runs it
    ("pipeline/cell.py", "from thesis_mlflow.grid import driver", "pipeline may not import grid"),
    # the bottom's spec importing the learning core above it
    ("spec.py", "from thesis_mlflow.learn import model", "spec may not import learn"),
    # a circle inside one part: the model importing the training loop that imports it
    ("learn/model.py", "from thesis_mlflow.learn import training", "thesis_mlflow.learn.model -> thesis_mlflow.learn.training"),
    # a circle hidden behind a deferred import is still a circle (the grid file reaching up to the driver)
    ("grid/gridfile.py", "def _late():\n    from thesis_mlflow.grid import driver  # lazy: the driver\n    return driver",
     "thesis_mlflow.grid.gridfile"),
    # an import hidden in a function with no reason given
    ("pipeline/inputs.py", "def _late():\n    from thesis_mlflow.learn import model\n    return model", "inside a function without"),
    # MLflow's client outside its boundary
    ("report/stats.py", "import mlflow", "MLflow is imported only in tracking/ and server/"),
])
def test_a_planted_breach_is_named(tmp_path, file, line, found):
    import shutil

    root = tmp_path / "thesis_mlflow"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    path = root / file
    path.write_text(path.read_text() + "\n" + line + "\n")
    wrong = _check(*_load(root))
    assert any(found in w for w in wrong), wrong


def _root_breaches(tests_dir: Path) -> list[str]:
    """Test functions and fixtures that make a call only root may make (``tests/privileges.py``)
    without first skipping for an ordinary user (``needs_root``, or the SLURM cluster's ``why_not``)."""
    from tests.privileges import ROOT_CALLS

    wrong = []
    for path in sorted(tests_dir.glob("*.py")):
        if path.name == "privileges.py":
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                src = ast.get_source_segment(text, node) or ""
                if any(c in src for c in ROOT_CALLS) and "needs_root(" not in src and "why_not(" not in src:
                    wrong.append(f"{path.name}:{node.lineno} {node.name} needs root but does not skip without it")
    return wrong


def test_tests_that_need_root_skip_without_it(tmp_path):
    """As an ordinary user on a shared node the suite passes, root-only tests skipped saying why
    (a test that gives a file to another user failed there). A planted ``os.chown`` in a test
    without ``needs_root`` is named."""
    tests_dir = Path(__file__).resolve().parent
    assert _root_breaches(tests_dir) == []
    (tmp_path / "test_x.py").write_text("import os\n\ndef test_x(tmp_path):\n    os.chown(tmp_path, 65534, 65534)\n")
    (tmp_path / "test_y.py").write_text("import os\nfrom tests.privileges import needs_root\n\ndef test_y(tmp_path):\n"
                                        "    needs_root('x')\n    os.chown(tmp_path, 65534, 65534)\n")
    assert _root_breaches(tmp_path) == ["test_x.py:3 test_x needs root but does not skip without it"]


def test_every_backend_is_one_registered_folder_of_the_same_shape():
    """A backend is a folder under grid/ with the same modules (settings, submit; a batch
    scheduler also state, whose ``state.cell_views(folder)`` gives the grid's one model of a
    job) and one line in ``grid.backends``: a folder without its line, or a line without its
    folder, fails here."""
    import importlib
    import inspect

    from thesis_mlflow.grid.backends import BACKENDS, BATCH

    folders = {p.parent.name for p in (PACKAGE / "grid").glob("*/__init__.py")}
    assert folders == {b.package.rsplit(".", 1)[1] for b in BACKENDS.values()} == set(BACKENDS), folders
    assert set(BACKENDS) >= {"local", "condor", "slurm"} and {b.name for b in BATCH} == {"condor", "slurm"}
    for b in BACKENDS.values():
        for module in ("settings", "submit"):
            assert (PACKAGE / "grid" / b.name / f"{module}.py").is_file(), (b.name, module)
    for b in BATCH:
        for module in ("settings", "submit", "state"):
            assert (PACKAGE / "grid" / b.name / f"{module}.py").is_file(), (b.name, module)
        state = importlib.import_module(f"{b.package}.state")
        assert len(inspect.signature(state.cell_views).parameters) == 1 and b.folder_tag, b.name
