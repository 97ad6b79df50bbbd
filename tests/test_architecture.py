"""The layering rules of DESIGN.md, checked on the source: they hold by test, not by habit."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import dropkit.lab

SRC = Path(__file__).parent.parent / "src" / "dropkit"


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_no_private_name_is_imported_across_modules() -> None:
    offenders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dropkit"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{path.relative_to(SRC)}: {node.module}.{alias.name}")
    assert not offenders, offenders


def test_the_core_never_imports_the_lab() -> None:
    offenders = []
    for path, tree in _modules():
        if "lab" in path.relative_to(SRC).parts or path.name == "cli.py":
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("dropkit.lab")]
    assert not offenders, offenders


def test_nothing_imports_the_cli() -> None:
    """Only ``python -m dropkit`` (``__main__.py``) starts it."""
    for path, tree in _modules():
        if path.name == "__main__.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "dropkit.cli", path
            elif isinstance(node, ast.Import):
                assert all(a.name != "dropkit.cli" for a in node.names), path


def test_only_the_cli_names_command_line_flags() -> None:
    """Messages of the library name arguments (`` `seeds` ``); the CLI translates them into
    flags. Docstrings may show the command-line equivalent of a call."""
    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    offenders = []
    for path, tree in _modules():
        if path.name in ("cli.py", "__main__.py"):
            continue
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and flag.search(node.value)
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value[:60]!r}")
    assert not offenders, offenders


# -- the lab's pipeline: plan -> train -> execute -> store -> results, api on top ---------------------

LAB = SRC / "lab"
STAGES = ("plan", "train", "execute", "results")


def _stage(path: Path) -> str:
    """``plan``, ``train``, ``execute``, ``results``, ``store``, ``api``, ``lab`` (its ``__init__``)
    or ``core`` (the rest of dropkit)."""
    parts = path.relative_to(SRC).parts
    if parts[0] != "lab":
        return "core"
    if parts[1] in STAGES:
        return parts[1]
    return {"store.py": "store", "api.py": "api", "__init__.py": "lab"}[parts[1]]


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every module an import statement names (at any depth: lazy imports count too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def _lab_stage_of(module: str) -> str | None:
    """The stage a ``dropkit.lab...`` module name belongs to (None: not the lab)."""
    parts = module.split(".")
    if parts[:2] != ["dropkit", "lab"]:
        return None
    if len(parts) == 2:
        return "lab"
    if parts[2] in STAGES:
        return parts[2]
    return {"store": "store", "api": "api"}.get(parts[2], "lab")


ALLOWED = {
    "plan": {"plan"},
    "train": {"plan", "train"},
    "execute": {"plan", "train", "execute", "store"},
    "store": {"plan", "store"},
    "results": {"plan", "store", "results"},
    "api": {"plan", "train", "execute", "store", "results", "api"},
    "lab": {"plan", "train", "execute", "store", "results", "api", "lab"},
}
"""The lab stages each stage may import (data flows one way: plan -> train -> execute ->
store -> results; the api on top). ``train`` never sees the store, the runner or the results;
``results`` never sees the trainers or the runner; nothing below ``api`` imports it."""

FORBIDDEN_THIRD_PARTY = {"train": ("rich", "typer"), "plan": ("rich", "typer")}


def test_each_lab_stage_imports_only_the_stages_before_it() -> None:
    offenders = []
    for path, tree in _modules():
        stage = _stage(path)
        if stage == "core":
            continue
        for line, module in _imported(tree):
            target = _lab_stage_of(module)
            if target is not None and target not in ALLOWED[stage]:
                offenders.append(f"{path.relative_to(SRC)}:{line} ({stage}) imports {module}")
            if module.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(stage, ()):
                offenders.append(f"{path.relative_to(SRC)}:{line} ({stage}) imports {module}")
    assert not offenders, "\n".join(offenders)


def test_only_the_runner_writes_the_store() -> None:
    """``ResultsStore.add_runs`` (the one write of results) is called from ``lab/execute`` only."""
    offenders = []
    for path, tree in _modules():
        if _stage(path) in ("execute", "store"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_runs"
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders


def test_the_lab_has_no_import_circle() -> None:
    """Module-level and lazy imports alike: no lab module reaches itself again."""
    names = {}
    for path, _ in _modules():
        if _stage(path) == "core":
            continue
        rel = path.relative_to(SRC.parent).with_suffix("")
        names[".".join(rel.parts).removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for _, m in _imported(tree) if m in names and m != name}
    # a package's __init__ re-exporting its own modules is not a circle through them
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, route = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*route, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*route, nxt]))
    assert not circles, "\n".join(sorted(set(circles))[:10])


def test_the_lab_folders_read_as_the_pipeline() -> None:
    """Every lab module lives in its stage's folder; no two module names collide."""
    top = sorted(p.name for p in LAB.glob("*.py"))
    assert top == ["__init__.py", "api.py", "store.py"]
    stems = [p.stem for p in LAB.rglob("*.py") if p.name != "__init__.py"]
    assert len(stems) == len(set(stems)), sorted(s for s in stems if stems.count(s) > 1)
    assert sorted(p.name for p in LAB.iterdir() if p.is_dir() and p.name != "__pycache__") == [
        "execute",
        "plan",
        "results",
        "train",
    ]


def test_the_cli_reaches_the_lab_through_dropkit_lab_only() -> None:
    """The CLI parses, calls ``dropkit.lab`` and prints: it imports none of the lab's modules
    (``from dropkit.lab import X`` names X, a public name of the lab)."""
    public = {f"dropkit.lab.{name}" for name in dropkit.lab.__all__}
    tree = ast.parse((SRC / "cli.py").read_text(encoding="utf-8"))
    offenders = [
        f"cli.py:{line}: {module}"
        for line, module in _imported(tree)
        if module.startswith("dropkit.lab.") and module not in public
    ]
    assert not offenders, offenders
