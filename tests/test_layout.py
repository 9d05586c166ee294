"""Imports run one way: jobs -> training -> pipeline -> schemas (DESIGN.md)."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

ORDER = ["schemas", "pipeline", "training", "jobs"]


def imported_packages(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno


@pytest.mark.parametrize("package", ORDER)
def test_imports_run_one_way(package):
    allowed = set(ORDER[: ORDER.index(package) + 1])
    bad = []
    for path in (REPO / package).rglob("*.py"):
        for name, line in imported_packages(path):
            if name in ORDER and name not in allowed:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bad, "\n".join(bad)
