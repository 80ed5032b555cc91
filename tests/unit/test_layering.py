"""The package layering of rhvfs/, checked on the import statements of every module.

Imports are read with ``ast`` (the code is not imported): module-level imports,
imports inside functions and methods, and imports under ``if TYPE_CHECKING:``
all count. A type-only import is still a dependency of the module's design:
an upward or cyclic one means the type lives in the wrong place (it belongs in
a lower module or a ``Protocol``), so TYPE_CHECKING is deliberately *not* an
escape hatch. ``import a.b.c`` and ``from a.b import c`` (c a submodule) depend
on ``a.b.c``; ``from a.b import name`` depends on ``a.b`` (its ``__init__``).
The parent packages that Python imports on the way are not counted.

The rules:

1. Foreign libraries stay in their adapter: only ``rhvfs/engine/`` imports
   ovirtsdk4; only ``rhvfs/imageio/`` imports httpx, httpcore and h11; only
   ``rhvfs/fs.py`` and ``rhvfs/mount.py`` import pyfuse3. The simulator
   (``rhvfs/sim/``) is a separate program and is exempt: it builds its API
   with the SDK's types.
2. The simulator and the client stay apart: ``rhvfs.sim`` imports nothing of
   the client side (only ``rhvfs.sim.*``, the standard library and third
   parties), and no client module imports ``rhvfs.sim`` except ``rhvfs/cli.py``,
   which dispatches ``rhvfs sim``.
3. Layers import only downward: entry points (cli, commands) -> mount -> fs ->
   vfs -> sessions -> backupset | cache -> imageio | engine -> the package root,
   errors, config, retry. Two packages of one layer (backupset and cache,
   imageio and engine) do not import each other either; in the lowest layer
   they may. Every module must belong to a layer (a new package gets a place
   in ``LAYERS`` on purpose). Hence backupset imports nothing of sessions, vfs
   or (rule 1) the SDK.
4. Inside ``rhvfs.sessions``: the façade and ``_router`` -> full | incremental
   | restore -> core; the three kinds import only core (not each other), and
   core imports none of them.
5. No import cycles between modules; the failure shows each cycle's path with
   the line of every import on it.

Every failure message names the importing file and line, the imported module
and the boundary it crosses.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rhvfs"

#: (rank, layer name, module prefixes); a module belongs to the longest matching prefix.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (7, "entry points", ("rhvfs.cli", "rhvfs.commands")),
    (6, "mount", ("rhvfs.mount",)),
    (5, "fs", ("rhvfs.fs",)),
    (4, "vfs", ("rhvfs.vfs",)),
    (3, "sessions", ("rhvfs.sessions",)),
    (2, "backupset", ("rhvfs.backupset",)),
    (2, "cache", ("rhvfs.cache",)),
    (1, "imageio", ("rhvfs.imageio",)),
    (1, "engine", ("rhvfs.engine",)),
    (
        0,
        "base",
        (
            "rhvfs",
            "rhvfs.errors",
            "rhvfs.config",
            "rhvfs.retry",
            "rhvfs.intervals",
            "rhvfs.private",
            "rhvfs.redact",
            "rhvfs.selection",
            "rhvfs.events",
        ),
    ),
]
LAYER_CHAIN = (
    "entry points -> mount -> fs -> vfs -> sessions -> backupset|cache -> imageio|engine "
    "-> base (rhvfs, errors, config, retry, intervals, private, redact, selection)"
)
#: Rank of the parts of rhvfs.sessions (same idea, one level down).
SESSION_PARTS: list[tuple[int, str, tuple[str, ...]]] = [
    (2, "sessions façade/router", ("rhvfs.sessions", "rhvfs.sessions._router")),
    (1, "full", ("rhvfs.sessions.full",)),
    (1, "incremental", ("rhvfs.sessions.incremental",)),
    (1, "restore", ("rhvfs.sessions.restore",)),
    (0, "core", ("rhvfs.sessions.core",)),
]
SESSION_CHAIN = "sessions façade/_router -> full|incremental|restore -> core"
#: Third-party top-level package -> module prefixes of the client allowed to import it.
CONFINED = {
    "ovirtsdk4": ("rhvfs.engine",),
    "httpx": ("rhvfs.imageio",),
    "httpcore": ("rhvfs.imageio",),
    "h11": ("rhvfs.imageio",),
    "pyfuse3": ("rhvfs.fs", "rhvfs.mount"),
}
SIM = "rhvfs.sim"
SIM_DISPATCHERS = ("rhvfs.cli",)


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported module of one importing module."""

    source: str  # importing module
    path: Path  # its file
    line: int
    target: str  # imported module (absolute, dotted)
    type_checking: bool  # under ``if TYPE_CHECKING:``

    def where(self) -> str:
        note = " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.path.relative_to(ROOT)}:{self.line}{note}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(
    source: str, path: Path, text: str, *, is_package: bool, known: Iterable[str]
) -> Iterator[Import]:
    """Every module ``text`` imports: module level, in functions, under TYPE_CHECKING."""
    known = set(known)
    package = source if is_package else source.rpartition(".")[0]
    tree = ast.parse(text, filename=str(path))
    guarded: set[int] = set()  # ids of nodes under `if TYPE_CHECKING:`
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                guarded.update(id(n) for n in ast.walk(child))
    for node in ast.walk(tree):
        tc = id(node) in guarded
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, path, node.lineno, alias.name, tc)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield Import(source, path, node.lineno, sub if sub in known else module, tc)


def all_imports(modules: dict[str, Path]) -> list[Import]:
    out: list[Import] = []
    for name, path in modules.items():
        out += imports_of(
            name, path, path.read_text(), is_package=path.name == "__init__.py", known=modules
        )
    return out


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _part(module: str, table: list[tuple[int, str, tuple[str, ...]]]) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None  # (prefix length, rank, name)
    for rank, name, prefixes in table:
        for prefix in prefixes:
            if prefix == "rhvfs" and module != "rhvfs":
                continue  # the package root is a module of the base layer, not a prefix
            if _within(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank, name)
    return None if best is None else (best[1], best[2])


def _is_client(module: str) -> bool:
    return not _within(module, SIM)


def _internal(imp: Import) -> bool:
    return _within(imp.target, "rhvfs")


# -- the rules: each returns the violations as messages ----------------------------------


def unplaced_modules(modules: Iterable[str]) -> list[str]:
    return [
        f"{m} belongs to no layer: give its package a place in LAYERS ({LAYER_CHAIN})"
        for m in modules
        if _is_client(m) and _part(m, LAYERS) is None
    ]


def confinement_violations(imports: Iterable[Import]) -> list[str]:
    out = []
    for imp in imports:
        if not _is_client(imp.source):
            continue
        lib = imp.target.split(".")[0]
        allowed = CONFINED.get(lib)
        if allowed is not None and not any(_within(imp.source, a) for a in allowed):
            out.append(
                f"{imp.where()}: {imp.source} imports {imp.target}, but only "
                f"{' and '.join(allowed)} may import {lib} (keep {lib} inside its adapter)"
            )
    return out


def sim_boundary_violations(imports: Iterable[Import]) -> list[str]:
    out = []
    for imp in imports:
        if not _internal(imp):
            continue
        if not _is_client(imp.source) and _is_client(imp.target):
            out.append(
                f"{imp.where()}: the simulator module {imp.source} imports the client "
                f"module {imp.target} (rhvfs.sim imports only rhvfs.sim.*, stdlib, third parties)"
            )
        if (
            _is_client(imp.source)
            and not _is_client(imp.target)
            and imp.source not in SIM_DISPATCHERS
        ):
            out.append(
                f"{imp.where()}: the client module {imp.source} imports the simulator "
                f"module {imp.target} (only {', '.join(SIM_DISPATCHERS)} may, to dispatch `rhvfs sim`)"
            )
    return out


def _direction_violations(
    imports: Iterable[Import],
    table: list[tuple[int, str, tuple[str, ...]]],
    chain: str,
    *,
    scope: str,
    siblings_ok_at: int | None,
) -> list[str]:
    out = []
    for imp in imports:
        if not (_internal(imp) and _is_client(imp.source) and _is_client(imp.target)):
            continue
        if not (_within(imp.source, scope) and _within(imp.target, scope)):
            continue
        src, dst = _part(imp.source, table), _part(imp.target, table)
        if src is None or dst is None or src[1] == dst[1]:
            continue
        (src_rank, src_name), (dst_rank, dst_name) = src, dst
        if dst_rank > src_rank:
            out.append(
                f"{imp.where()}: {imp.source} imports {imp.target}: '{src_name}' must not import "
                f"'{dst_name}', which is above it ({chain})"
            )
        elif dst_rank == src_rank and src_rank != siblings_ok_at:
            out.append(
                f"{imp.where()}: {imp.source} imports {imp.target}: '{src_name}' and "
                f"'{dst_name}' are siblings of one layer and must not import each other ({chain})"
            )
    return out


def layer_violations(imports: Iterable[Import]) -> list[str]:
    return _direction_violations(imports, LAYERS, LAYER_CHAIN, scope="rhvfs", siblings_ok_at=0)


def session_violations(imports: Iterable[Import]) -> list[str]:
    return _direction_violations(
        imports, SESSION_PARTS, SESSION_CHAIN, scope="rhvfs.sessions", siblings_ok_at=None
    )


def import_cycles(imports: Iterable[Import]) -> list[tuple[list[str], list[Import]]]:
    """Per strongly connected group of modules: the group and one shortest cycle through it
    (as the imports along it)."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if _internal(imp) and imp.target != imp.source:
            graph.setdefault(imp.source, {}).setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for group in sorted(groups):
        members = set(group)
        start = group[0]
        # breadth-first from start back to start inside the group: a shortest cycle
        paths: dict[str, list[Import]] = {start: []}
        todo = [start]
        found: list[Import] | None = None
        while todo and found is None:
            nxt = []
            for v in todo:
                for w, imp in sorted(graph.get(v, {}).items()):
                    if w not in members:
                        continue
                    if w == start:
                        found = [*paths[v], imp]
                        break
                    if w not in paths:
                        paths[w] = [*paths[v], imp]
                        nxt.append(w)
                if found is not None:
                    break
            todo = nxt
        assert found is not None
        cycles.append((group, found))
    return cycles


def describe_cycle(group: list[str], cycle: list[Import]) -> str:
    path = " -> ".join([c.source for c in cycle] + [cycle[0].source])
    steps = "\n".join(f"    {imp.source} -> {imp.target}  ({imp.where()})" for imp in cycle)
    more = ""
    if len(group) > len(cycle):
        more = f"\n    (the modules {', '.join(group)} all reach each other)"
    return f"import cycle {path}:\n{steps}{more}"


# -- the tests -------------------------------------------------------------------------------

MODULES = find_modules()
IMPORTS = all_imports(MODULES)


def _check(title: str, violations: list[str]) -> None:
    if violations:
        pytest.fail(
            f"{title} ({len(violations)}):\n" + "\n".join(f"  {v}" for v in violations),
            pytrace=False,
        )


def test_every_client_module_belongs_to_a_layer() -> None:
    _check("modules outside the layering", unplaced_modules(MODULES))


def test_foreign_libraries_stay_in_their_adapters() -> None:
    _check("foreign library imported outside its adapter", confinement_violations(IMPORTS))


def test_simulator_and_client_stay_apart() -> None:
    _check("imports across the simulator/client boundary", sim_boundary_violations(IMPORTS))


def test_layers_import_only_downward() -> None:
    _check("imports against the layering", layer_violations(IMPORTS))


def test_session_kinds_import_only_core() -> None:
    _check("imports against the sessions layering", session_violations(IMPORTS))


def test_no_import_cycles() -> None:
    _check("import cycles", [describe_cycle(g, c) for g, c in import_cycles(IMPORTS)])


# -- the checker itself -------------------------------------------------------------------------


def _fake(modules: dict[str, str]) -> list[Import]:
    out: list[Import] = []
    for name, text in modules.items():
        is_package = name in ("rhvfs", "rhvfs.sessions") or name.endswith("_pkg")
        path = PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py")
        out += imports_of(name, path, text, is_package=is_package, known=modules)
    return out


def test_checker_sees_function_level_relative_and_type_checking_imports() -> None:
    imports = _fake(
        {
            "rhvfs.sessions.core._model": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from rhvfs.vfs.names import X\n"
                "def f():\n    import httpx\n    from ..restore import _vm\n"
            ),
            "rhvfs.sessions.restore._vm": "from rhvfs.sessions.core import _model\n",
        }
    )
    by_target = {i.target: i for i in imports}
    assert by_target["rhvfs.vfs.names"].type_checking
    assert not by_target["httpx"].type_checking
    assert by_target["rhvfs.sessions.restore._vm"].line == 6
    assert by_target["rhvfs.sessions.core._model"].source == "rhvfs.sessions.restore._vm"
    (upward,) = layer_violations(imports)
    assert "rhvfs/sessions/core/_model.py:3 (under TYPE_CHECKING)" in upward
    assert "'sessions' must not import 'vfs', which is above it" in upward
    (foreign,) = confinement_violations(imports)
    assert foreign.startswith("rhvfs/sessions/core/_model.py:5: rhvfs.sessions.core._model ")
    assert "only rhvfs.imageio may import httpx" in foreign
    (kinds,) = session_violations(imports)
    assert "'core' must not import 'restore', which is above it" in kinds
    ((group, cycle),) = import_cycles(imports)
    assert describe_cycle(group, cycle).startswith(
        "import cycle rhvfs.sessions.core._model -> rhvfs.sessions.restore._vm"
        " -> rhvfs.sessions.core._model:"
    )


def test_checker_knows_siblings_the_simulator_and_unplaced_packages() -> None:
    imports = _fake(
        {
            "rhvfs.cache._reader": "import rhvfs.backupset._qcow2\n",
            "rhvfs.config": "from rhvfs import errors\n",
            "rhvfs.errors": "",
            "rhvfs.vfs.tree": "from rhvfs.sim import client\n",
            "rhvfs.sim.client": "import ovirtsdk4\nfrom rhvfs.engine import types\n",
            "rhvfs.cli": "from rhvfs.sim.cli import main\n",
            "rhvfs.sessions.full._manager": "from rhvfs.sessions.incremental import _manager\n",
        }
    )
    layering = layer_violations(imports)
    assert len(layering) == 1 and "'cache' and 'backupset' are siblings" in layering[0]
    sim = sim_boundary_violations(imports)
    assert len(sim) == 2
    assert "client module rhvfs.vfs.tree imports the simulator module rhvfs.sim.client" in sim[0]
    assert "simulator module rhvfs.sim.client imports the client module rhvfs.engine" in sim[1]
    assert confinement_violations(imports) == []  # the simulator may use the SDK
    (kinds,) = session_violations(imports)
    assert "'full' and 'incremental' are siblings" in kinds
    assert unplaced_modules(["rhvfs.newpkg.x", "rhvfs.sim.new", "rhvfs.retry"]) == [
        f"rhvfs.newpkg.x belongs to no layer: give its package a place in LAYERS ({LAYER_CHAIN})"
    ]
