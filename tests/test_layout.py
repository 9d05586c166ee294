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


# The readers of finished outputs (pipeline/outputs/: verify, query, events, plot, render,
# report) use the runtime; the rest of pipeline/ (the runtime) never imports them.
READERS = "pipeline.outputs"


def test_the_runtime_never_imports_the_output_readers():
    graph = module_graph(REPO, ORDER)
    bad = [
        f"{name} imports {sorted(e for e in edges if e.startswith(READERS))}"
        for name, edges in sorted(graph.items())
        if name.startswith("pipeline") and not name.startswith(READERS)
        if any(e.startswith(READERS) for e in edges)
    ]
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
STORAGE_PACKAGE = "pipeline/storage/"
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
    """What in `path` (shown as `rel`) belongs to pipeline/storage/: building fsspec
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
    """pipeline/storage/ is the one package that builds filesystems and reads URI schemes."""
    rels = {path: path.relative_to(REPO).as_posix() for path in source_files()}
    bad = [
        v
        for p, rel in rels.items()
        if not rel.startswith(STORAGE_PACKAGE)
        for v in storage_violations(p, rel)
    ]
    assert not bad, "use pipeline.storage instead:\n" + "\n".join(bad)


# The raw filesystem accessors of pipeline/storage/, and the modules allowed them: Ray Train
# takes a pyarrow filesystem for its checkpoints (issue 25: no other module gets a filesystem;
# each reads, lists and writes through storage's verbs).
RAW_ACCESSORS = {"filesystem": set(), "arrow_filesystem": {"training/loop.py"}}


def raw_filesystem_uses(path, rel: str) -> list[str]:
    """Where `path` imports or calls a raw filesystem accessor it is not allowed."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline.storage"):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        out += [
            f"{rel}:{node.lineno} uses {n}"
            for n in names
            if n in RAW_ACCESSORS and rel not in RAW_ACCESSORS[n]
        ]
    return out


def outside_storage(check) -> list[str]:
    """What `check(path, rel)` finds in every source module outside pipeline/storage/."""
    return [
        v
        for path in source_files()
        if not (rel := path.relative_to(REPO).as_posix()).startswith(STORAGE_PACKAGE)
        for v in check(path, rel)
    ]


def test_no_filesystem_outside_storage():
    """No module outside pipeline/storage/ is handed a raw filesystem (issue 25)."""
    bad = outside_storage(raw_filesystem_uses)
    assert not bad, "read, list and write through pipeline.storage's verbs:\n" + "\n".join(bad)


# Retrying is storage's: its verbs retry within storage.retry_s (issue 25). Outside it, no
# module names the retry machinery or writes its own loop of try + sleep.
RETRY_NAMES = {"Backoff", "with_retries", "iter_with_retries"}


def retry_loops(path, rel: str) -> list[str]:
    """Where `path` uses the retry machinery or writes a retry loop (a loop holding both a
    try statement and a sleep call)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith(".retry"):
            out += [f"{rel}:{node.lineno} imports {node.module}"]
        elif isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in RETRY_NAMES:
                out.append(f"{rel}:{node.lineno} uses {name}")
        elif isinstance(node, ast.While | ast.For):
            inner = list(ast.walk(node))
            sleeps = any(
                isinstance(n, ast.Call)
                and getattr(n.func, "attr", getattr(n.func, "id", "")) == "sleep"
                for n in inner
            )
            if sleeps and any(isinstance(n, ast.Try) for n in inner):
                out.append(f"{rel}:{node.lineno} loops over try and sleep (a retry loop)")
    return out


def test_no_retry_outside_storage():
    """Transient faults are retried by pipeline.storage.Storage's verbs and nowhere else."""
    bad = outside_storage(retry_loops)
    assert not bad, "retry through pipeline.storage.Storage:\n" + "\n".join(bad)


def test_the_retry_check_sees_loops(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text(
        "import time\n"
        "from pipeline.storage.retry import Backoff\n"
        "def f(g):\n"
        "    Backoff(1, 'x')\n"
        "    while True:\n"
        "        try:\n"
        "            return g()\n"
        "        except OSError:\n"
        "            time.sleep(1)\n"
        "def h(g):\n"
        "    while not g():\n"
        "        time.sleep(1)\n"
    )
    found = retry_loops(src, "mod.py")
    assert len(found) == 3, found  # the import, the name, the first loop (not the poll)


# Storage calls no code of the layers above it (issue 25: the walk from `vaerr infer`'s
# arguments goes down only). Outside pipeline/storage/, nothing hands a Storage a function to
# run (`store.call(lambda: ...)`); work redone whole loops over `store.attempts(...)` itself.
def storage_callbacks(path, rel: str) -> list[str]:
    """Where `path` passes a function to a Storage's `call` (a receiver named *store)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if node.func.attr == "call" and name.endswith("store"):
                out.append(f"{rel}:{node.lineno} hands {name}.call a function to run")
    return out


def test_storage_calls_nothing_back():
    bad = outside_storage(storage_callbacks)
    assert not bad, "call storage's verbs, or loop over store.attempts():\n" + "\n".join(bad)


def test_the_callback_check_sees_calls(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text(
        "def f(self, g):\n    self.store.call(g, 'x')\n    store.call(lambda: g(), 'y')\n"
    )
    assert len(storage_callbacks(src, "mod.py")) == 2


def test_the_filesystem_check_sees_uses(tmp_path):
    """The check above sees an import and an attribute use of each accessor."""
    src = tmp_path / "mod.py"
    src.write_text(
        "from pipeline.storage import filesystem, join\n"
        "from pipeline import storage\n"
        "def f(u):\n"
        "    return storage.arrow_filesystem(u), join(u, 'x')\n"
    )
    assert len(raw_filesystem_uses(src, "mod.py")) == 2
    assert raw_filesystem_uses(src, "training/loop.py") == ["training/loop.py:1 uses filesystem"]


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


# -- No import cycles among the project's modules (issue 26) ---------------------------------
# Every import counts: at module level, inside functions and under TYPE_CHECKING, since each
# ties the two modules' design together even when Python happens to run it.


def _module_names(root, packages) -> dict[str, object]:
    """Dotted module name -> file, for every module of `packages` under `root`."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported_names(path, name: str):
    """Every dotted name an import in `path` (module `name`) may bind, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def module_graph(root, packages) -> dict[str, set[str]]:
    """module -> the project's modules it imports (the longest known prefix of each name; a
    package's __init__ counts only when the package itself is imported)."""
    modules = _module_names(root, packages)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _imported_names(path, name):
            parts = target.split(".")
            known = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
            hit = next((m for m in known if m in modules), None)
            if hit and hit != name:
                edges.add(hit)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    """No two of the project's modules import each other, directly or through others."""
    cycles = import_cycles(module_graph(REPO, ORDER))
    assert not cycles, "import cycles (move what both need below both):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


CYCLE_CASES = {
    "in a function": ("from pkg.b import g\n", "def g():\n    from pkg.a import f\n"),
    "under TYPE_CHECKING": (
        "from pkg.b import g\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import F\n",
    ),
    "relative, through a third": ("from .b import g\n", "from . import c\n"),
    "by package attribute": ("from pkg import b\n", "import pkg.c\n"),
}


@pytest.mark.parametrize("case", sorted(CYCLE_CASES))
def test_the_cycle_check_sees_cycles(tmp_path, case):
    """The checker itself: a cycle closed in a function, under TYPE_CHECKING, by a relative
    import through a third module or through a package attribute is found; the same modules
    with the closing import removed are not a cycle."""
    a, b = CYCLE_CASES[case]
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(a)
    (pkg / "b.py").write_text(b)
    (pkg / "c.py").write_text("from pkg.a import f\n")
    cycles = import_cycles(module_graph(tmp_path, ["pkg"]))
    assert cycles and "pkg.a" in cycles[0] and "pkg.b" in cycles[0], cycles
    (pkg / "a.py").write_text("")
    assert import_cycles(module_graph(tmp_path, ["pkg"])) == []
