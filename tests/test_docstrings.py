"""Docstrings and comments that name the library's code name code that exists.

A reference is a double-backticked dotted name whose first part is one of the library's modules
(``spec.CellSpec``, ``stats.effects``: a module name found once in the package) or one of its
packages followed by a module of it (``tracking.done.finished_rows``, ``grid.status.grid_status``).
The rest must be defined there: a top-level function, class or name of the module (imports count:
they are reachable as written), then attributes of a class. Other dotted words (MLflow tags such as
``grid.name``, metric names such as ``cost.wall_s``, file names) are not references and are left
alone. Read from the source (no import), so it runs in the quick loop.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "thesis_mlflow"
REF = re.compile(r"``([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\([^`]*\))?``")
FILES = {"h5", "csv", "json", "yaml", "pt", "npz", "html", "txt", "log", "sh", "sub", "dag", "py", "md", "pdf", "tex", "out"}


def _defined(tree: ast.AST) -> dict[str, ast.AST | None]:
    """Names defined at the top of a module or class body -> the class node (None: not a class)."""
    out: dict[str, ast.AST | None] = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = None
        elif isinstance(node, ast.ClassDef):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out[n.id] = None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                out[(a.asname or a.name).split(".")[0]] = None
        elif isinstance(node, (ast.If, ast.Try)):
            out.update(_defined(ast.Module(body=node.body, type_ignores=[])))
    return out


def _classes(modules) -> dict[str, list[str]]:
    """Class name -> the modules that define it (a class named once in the package is a reference)."""
    out: dict[str, list[str]] = {}
    for key, (tree, _text) in modules.items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                out.setdefault(node.name, []).append(key)
    return out


def _public_names(text: str) -> set[str]:
    """A package's lazily exposed names (``public(__name__, {"name": "module", ...})``)."""
    m = re.search(r"public\(__name__,\s*\{(.*?)\}\)", text, re.S)
    return set(re.findall(r'"([A-Za-z_]\w*)"\s*:', m.group(1))) if m else set()


def _index():
    modules = {}  # dotted path under thesis_mlflow -> (tree, text)
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE).with_suffix("").parts
        key = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
        text = p.read_text()
        modules[key] = (ast.parse(text), text)
    leaf: dict[str, list[str]] = {}
    for key in modules:
        if key:
            leaf.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    return modules, leaf


def _missing(ref: str, modules, leaf) -> str | None:
    parts = ref.split(".")
    if parts[-1] in FILES:
        return None
    if parts[0] == "thesis_mlflow":
        parts = parts[1:]
    # the longest prefix that is a module of the package (a package alone must be followed by one of its modules)
    base = None
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in modules:
            base, rest = head, parts[i:]
            break
    if base is None or (base and "." not in base and (PACKAGE / base).is_dir() and not rest):
        if len(parts) > 1 and len(leaf.get(parts[0], [])) == 1 and not (PACKAGE / parts[0]).is_dir():
            base, rest = leaf[parts[0]][0], parts[1:]  # a module by its own name: ``stats.effects``
        elif len(parts) > 1 and len(_classes(modules).get(parts[0], [])) == 1:
            base, rest = _classes(modules)[parts[0]][0], parts  # a class by its own name: ``CellSpec.model_config``
        else:
            return None
    while rest and f"{base}.{rest[0]}" in modules:  # a package, then one of its modules
        base, rest = f"{base}.{rest[0]}", rest[1:]
    if (PACKAGE / base.replace(".", "/")).is_dir() and rest:
        tree, text = modules[base]
        if rest[0] not in _defined(tree) and rest[0] not in _public_names(text):
            return None  # a package then a word that is none of its modules or names: a tag or metric, not a reference
    tree, text = modules[base]
    scope: ast.AST | None = tree
    names = {**_defined(tree), **dict.fromkeys(_public_names(text))}
    for part in rest:
        if scope is None:
            return None  # an attribute of a function or a value: not checked
        if part not in names:
            return f"{base} has no {part!r}"
        scope = names[part]
        names = _defined(scope) if scope is not None else {}
        if isinstance(scope, ast.ClassDef):  # a dataclass's fields, properties, methods
            names = _defined(scope)
    return None


def test_every_reference_in_a_docstring_or_comment_names_existing_code():
    modules, leaf = _index()
    wrong = []
    for key, (_tree, text) in modules.items():
        for n, line in enumerate(text.splitlines(), 1):
            for ref in REF.findall(line):
                why = _missing(ref, modules, leaf)
                if why:
                    wrong.append(f"thesis_mlflow/{key.replace('.', '/') or '__init__'}:{n}: ``{ref}``: {why}")
    assert wrong == [], "\n".join(wrong)


def test_a_stale_name_is_caught(tmp_path):
    """Planted: a renamed function and a misspelt module attribute are named, a tag is not."""
    modules, leaf = _index()
    assert _missing("tracking.done.finished_rows", modules, leaf) is None
    assert _missing("tracking.done.finished_rowz", modules, leaf) == "tracking.done has no 'finished_rowz'"
    assert _missing("stats.effects", modules, leaf) is None
    assert _missing("stats.efects", modules, leaf) == "report.stats has no 'efects'"
    assert _missing("spec.CellSpec.stream_key", modules, leaf) is None
    assert _missing("spec.CellSpec.stream_kee", modules, leaf) == "spec has no 'stream_kee'"
    assert _missing("grid.name", modules, leaf) is None and _missing("cost.wall_s", modules, leaf) is None
    assert _missing("grid.rehearsal.Rehearsal", modules, leaf) is None
    assert _missing("CellSpec.model_config", modules, leaf) is None
    assert _missing("CellSpec.model_konfig", modules, leaf) == "spec has no 'model_konfig'"
