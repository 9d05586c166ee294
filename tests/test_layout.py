"""Imports run one way: jobs -> training -> pipeline -> schemas (DESIGN.md)."""

from __future__ import annotations

import ast
import re

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


# -- Size: no module over 600 lines, no function over 80 (issue 14) --------------------------

SIZED = [*ORDER, "bench"]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# Still over the limits, each with its reason.
LONG_MODULES_ALLOWED: set[str] = set()
LONG_FUNCTIONS_ALLOWED = {
    "bench/keyframe.py::main",  # a one-off measurement script read top to bottom (issue 15)
}


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, lines) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            yield name, node.end_lineno - node.lineno + 1
            yield from _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


def _sources():
    for package in SIZED:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), path.read_text()


def test_no_module_over_600_lines():
    long = {
        f"{rel}: {text.count(chr(10))} lines"
        for rel, text in _sources()
        if text.count("\n") > MAX_MODULE_LINES and rel not in LONG_MODULES_ALLOWED
    }
    assert not long, "split these modules (or list them, with the reason):\n" + "\n".join(long)


def test_no_function_over_80_lines():
    long, seen = [], set()
    for rel, text in _sources():
        for name, lines in _functions(ast.parse(text)):
            key = f"{rel}::{name}"
            seen.add(key)
            if lines > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS_ALLOWED:
                long.append(f"{key}: {lines} lines")
    assert not long, "split these functions (or list them, with the reason):\n" + "\n".join(long)
    stale = LONG_FUNCTIONS_ALLOWED - seen
    assert not stale, f"allow-list names functions that no longer exist: {sorted(stale)}"


def test_the_size_checks_see_long_code():
    """The checker itself: a 81-line function and its method form are found."""
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    tree = ast.parse(f"def f():\n{body}\n\nclass C:\n    def g(self):\n        pass\n")
    sizes = dict(_functions(tree))
    assert sizes == {"f": 81, "C.g": 2}


SOURCE_PACKAGES = ["schemas", "pipeline", "training", "jobs", "bench"]
STORAGE_MODULE = "pipeline/storage.py"
# Modules that only the storage module may import: fsspec and its backends build filesystems,
# urlparse is how a URI's scheme is read.
FS_MODULES = {"fsspec", "s3fs", "gcsfs", "adlfs"}
URI_PARSERS = {"urlparse", "urlsplit"}
# A bare scheme prefix ("://", "file://", "s3://") in code is a URI test or URI surgery; help
# texts and docstrings with a whole example URI ("s3://bucket/prefix") are longer than this.
BARE_SCHEME = re.compile(r"^[A-Za-z0-9+.-]{0,8}://$")


def source_files():
    for package in SOURCE_PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def storage_violations(path, rel: str) -> list[str]:
    """What in `path` (shown as `rel`) belongs to pipeline/storage.py: building fsspec
    filesystems, parsing URIs, or testing a string for a scheme."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where} imports {a.name}" for a in node.names if a.name in FS_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FS_MODULES:
                out.append(f"{where} imports from {node.module}")
            out += [f"{where} imports {a.name}" for a in node.names if a.name in URI_PARSERS]
        elif isinstance(node, ast.Attribute) and node.attr in URI_PARSERS | {"FSSpecHandler"}:
            out.append(f"{where} uses {node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if BARE_SCHEME.match(node.value) or node.value.startswith("://"):
                out.append(f"{where} tests or builds a URI with {node.value!r}")
    return out


def test_only_storage_owns_uris():
    """pipeline/storage.py is the one module that builds filesystems and reads URI schemes."""
    rels = {path: path.relative_to(REPO).as_posix() for path in source_files()}
    bad = [
        v for p, rel in rels.items() if rel != STORAGE_MODULE for v in storage_violations(p, rel)
    ]
    assert not bad, "use pipeline.storage instead:\n" + "\n".join(bad)


def test_storage_check_sees_violations(tmp_path):
    """The check above catches each kind of violation it claims to (and not docstrings)."""
    src = tmp_path / "mod.py"
    src.write_text(
        '"""Reads s3://bucket/prefix."""\n'
        "import fsspec\n"
        "from urllib.parse import urlparse\n"
        "def f(u, p):\n"
        '    a = "://" in u\n'
        '    b = u.startswith("file://")\n'
        '    return f"{p}://{u}", fsspec.filesystem("file")\n'
    )
    found = storage_violations(src, "mod.py")
    assert len(found) == 5, found


def test_no_private_names_across_packages():
    """`from a.b import _name` only within package a.b's own folder."""
    bad = []
    for path in source_files():
        rel = path.relative_to(REPO)
        here = ".".join(rel.parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            if node.module.split(".")[0] not in SOURCE_PACKAGES:
                continue
            owner = (
                node.module
                if (REPO / node.module.replace(".", "/")).is_dir()
                else node.module.rpartition(".")[0]
            )
            private = [a.name for a in node.names if a.name.startswith("_")]
            private = [n for n in private if not n.startswith("__")]
            if private and owner != here:
                bad.append(f"{rel}:{node.lineno} imports {private} from {node.module}")
    assert not bad, "\n".join(bad)
