"""Inode derivation (rhvfs.vfs.names); the name escaping is tested in test_backupset_names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhvfs.vfs import names
from rhvfs.vfs.names import FIRST_DERIVED_INODE, InodeTable, derive_inode


def test_derive_inode_is_stable_and_in_range() -> None:
    ino = derive_inode("vm", "3d1c0c1c-0000-4000-8000-000000000001", "")
    # A fixed value: inode numbers must never change between releases (restic/borg caches).
    assert ino == derive_inode("vm", "3d1c0c1c-0000-4000-8000-000000000001")
    assert ino == 0x4DA2C3AA08357385
    assert derive_inode("vm", "x", "a") != derive_inode("vm", "x", "b")
    assert derive_inode("vm", "x") != derive_inode("template", "x")


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=10))
def test_derived_inodes_avoid_reserved_range(kind: str, eid: str, sub: str) -> None:
    assert FIRST_DERIVED_INODE <= derive_inode(kind, eid, sub) < 2**63


def test_inode_table_resolves_collisions_deterministically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = names.derive_inode

    def colliding(kind: str, engine_id: str, sub_key: str = "", *, attempt: int = 0) -> int:
        if attempt == 0:
            return 5000  # every identity hashes to the same number first
        return real(kind, engine_id, sub_key, attempt=attempt)

    monkeypatch.setattr(names, "derive_inode", colliding)
    runs = []
    for _ in range(2):
        table = InodeTable()
        inos = [table.inode("vm", f"id{i}") for i in range(3)]
        assert inos[0] == 5000
        assert len(set(inos)) == 3
        assert table.inode("vm", "id1") == inos[1]
        assert table.identity(inos[2]) == ("vm", "id2", "")
        assert table.collisions == 2  # id1 and id2 each collide once with id0
        runs.append(inos)
    assert runs[0] == runs[1]
