"""The architecture, checked: imports only point down the layers, siblings never import each
other, no module takes part in an import cycle, and SQL lives only in the SQLite backend.

Every ``import`` in every module counts — at the top, inside functions (lazy imports for start-up
speed are fine, as long as they point down) and under ``TYPE_CHECKING``. README "Code layout"
draws the same table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "envcache"

#: Lowest first. A module may import its own package and any package of a lower rank; packages
#: that share a rank are siblings and may not import each other (the composition root in
#: ``service`` passes callables between them).
LAYERS: list[tuple[str, ...]] = [
    ("errors",),                            # what a user can cause: everyone may import it
    ("progress",),                          # progress lines for long work: a line every few seconds
    ("oci",),                               # the OCI vocabulary: pure, no I/O
    ("definition",),                        # environment definitions: pure, offline
    ("wire",),                              # what the client and the daemon both speak
    ("store",),                             # repositories (all SQL) and blob storage
    ("registry", "builder", "upstream", "pipeline"),  # siblings over the store
    ("service",),                           # the daemon: composition root, views, ensure
    ("cli",),                               # the command
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
#: The client library stands beside the daemon and may use only these.
CLIENT_MAY_IMPORT = {"client", "wire", "definition", "oci", "errors"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every envcache module ``name`` imports, wherever the statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # ``from package import submodule`` names the submodule; otherwise the module itself.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "envcache" or t.startswith("envcache."))
    return found


def layer(module: str) -> str:
    """``envcache.builder.stages.pip`` → ``builder``; the package root is ``envcache``."""
    return module.split(".")[1] if "." in module else "envcache"


def allowed(importer: str, imported: str) -> bool:
    source, target = layer(importer), layer(imported)
    if source == target or target in ("errors", "envcache"):
        return True  # its own package; errors and the root's __version__ are for everyone
    if target == "client":
        return source in ("envcache", "cli")  # the package root re-exports it; the CLI talks through it
    if source == "client":
        return target in CLIENT_MAY_IMPORT
    if source == "envcache":
        return False
    return RANK[target] < RANK[source]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_package_has_a_place_in_the_table() -> None:
    packages = {layer(name) for name in modules()} - {"envcache", "client"}
    assert packages == set(RANK), "add new packages to LAYERS (and README, 'Code layout')"


def test_imports_point_down_and_siblings_stay_apart() -> None:
    wrong = sorted(f"{importer} imports {imported}" for importer, targets in graph().items()
                   for imported in targets if not allowed(importer, imported))
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in edges:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The checks would fail on a bad import hidden in a function or under TYPE_CHECKING."""
    source = tmp_path / "envcache" / "store" / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from envcache.service.config import X\n"
                      "def f():\n    from envcache.builder import build\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "envcache"
    try:
        found = imports("envcache.store.bad", source, {"envcache.builder.build"})
    finally:
        ROOT = saved
    assert found == {"envcache.service.config", "envcache.builder.build"}
    assert not any(allowed("envcache.store.bad", target) for target in found)
    assert not allowed("envcache.builder.build", "envcache.upstream.source")  # siblings
    assert not allowed("envcache.client.sync", "envcache.service.app")


SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b",
                 re.IGNORECASE)


def test_sql_lives_only_in_the_sqlite_backend() -> None:
    outside = sorted(str(path.relative_to(ROOT.parent)) for name, path in modules().items()
                     if not name.startswith("envcache.store.sqlite") and SQL.search(path.read_text()))
    assert outside == []


def test_the_client_and_the_daemon_agree_on_variant_names() -> None:
    from envcache.definition.variants import CHOICES
    from envcache.wire import VARIANT_CHOICES

    assert tuple(VARIANT_CHOICES) == tuple(CHOICES)
