"""rhvfs.backupset's public surface, and the rule that it depends on nothing above it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib

import rhvfs.backupset as backupset

ROOT = pathlib.Path(backupset.__file__).parent.parent


def test_all_is_exactly_the_public_surface() -> None:
    public = {name for name in vars(backupset) if not name.startswith("_")}
    assert public == set(backupset.__all__)
    assert len(backupset.__all__) == len(set(backupset.__all__))
    for name in backupset.__all__:
        assert getattr(backupset, name) is not None, name


def test_records_are_frozen() -> None:
    for name in backupset.__all__:
        obj = getattr(backupset, name)
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            assert vars(obj)["__dataclass_params__"].frozen, name


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def test_backupset_imports_nothing_above_it() -> None:
    above = ("rhvfs.sessions", "rhvfs.vfs", "rhvfs.fs", "rhvfs.cache", "rhvfs.imageio", "rhvfs.sim")
    above += ("rhvfs.mount", "rhvfs.cli", "rhvfs.commands", "trio", "httpx", "ovirtsdk4")
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "backupset").glob("*.py")
        for name in _imports(path)
        if any(name == a or name.startswith(a + ".") for a in above)
    ]
    assert offenders == []


def test_sessions_never_import_the_vfs_and_use_only_the_facade() -> None:
    offenders = []
    for path in (ROOT / "sessions").rglob("*.py"):
        for name in _imports(path):
            if name.startswith(("rhvfs.vfs", "rhvfs.fs")) or name.startswith("rhvfs.backupset._"):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
