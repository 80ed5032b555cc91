"""Layering of the filesystem code: only the FUSE front end knows pyfuse3 and errno values."""

from __future__ import annotations

import ast
from pathlib import Path

RHVFS = Path(__file__).resolve().parents[2] / "rhvfs"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_fs_and_mount_import_pyfuse3() -> None:
    users = {
        str(path.relative_to(RHVFS))
        for path in RHVFS.rglob("*.py")
        if any(name.split(".")[0] == "pyfuse3" for name in imported_modules(path))
    }
    assert users == {"fs.py", "mount.py"}


def test_vfs_knows_no_errno_values() -> None:
    for path in (RHVFS / "vfs").glob("*.py"):
        assert "errno" not in imported_modules(path), path.name
