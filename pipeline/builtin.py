"""A real-text corpus that ships with every Python installation, so the default run needs no network.

Documents are the language reference topics behind `help()` (pydoc_data) and, for each standard
library module, its docstrings (module, classes, functions) read with `ast`, without importing it.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from pipeline.documents import Doc

SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__"}


def builtin_units() -> list[str]:
    """Stable names of every document of the built-in corpus, in order."""
    import pydoc_data.topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = sorted(
        p.relative_to(stdlib).as_posix()
        for p in stdlib.rglob("*.py")
        if not SKIPPED_DIRS.intersection(p.relative_to(stdlib).parts)
    )
    return [f"topic/{t}" for t in sorted(pydoc_data.topics.topics)] + [f"module/{m}" for m in modules]


def read_builtin(source: str, units: list[str]) -> Iterator[Doc]:
    """The documents named by `units` (from builtin_units)."""
    import pydoc_data.topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for unit in units:
        kind, _, name = unit.partition("/")
        doc_id = f"{source}/{unit}"
        if kind == "topic":
            yield Doc(doc_id, source, pydoc_data.topics.topics[name], {"topic": name})
            continue
        try:
            tree = ast.parse((stdlib / name).read_bytes())
        except (SyntaxError, ValueError, OSError) as e:
            yield Doc.rejected(doc_id, source, "unreadable_file", f"{type(e).__name__}: {e}")
            continue
        yield Doc(doc_id, source, "\n\n".join(_docstrings(tree)), {"module": name})


def _docstrings(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
