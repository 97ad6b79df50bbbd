"""The layering rules of DESIGN.md, checked on the source: they hold by test, not by habit."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

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
