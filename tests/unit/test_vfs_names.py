"""Name escaping and inode derivation (rhvfs.vfs.names)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhvfs.vfs import names
from rhvfs.vfs.names import (
    FIRST_DERIVED_INODE,
    NAME_MAX,
    InodeTable,
    derive_inode,
    escape,
    is_hashed,
    unescape,
)

any_names = st.text(alphabet=st.characters(), max_size=300)


@pytest.mark.parametrize(
    ("name", "file_name"),
    [
        ("myvm", "myvm"),
        ("a/b", "a%2Fb"),
        ("50%", "50%25"),
        ("nul\0byte", "nul%00byte"),
        (".", "%2E"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("line\nbreak", "line%0Abreak"),
        ("", "%"),
        ("ünïcode vm", "ünïcode vm"),
        ("a.b.", "a.b."),
    ],
)
def test_escape_examples(name: str, file_name: str) -> None:
    assert escape(name) == file_name
    assert unescape(file_name) == name


@given(any_names)
def test_escape_is_safe_and_reversible(name: str) -> None:
    file_name = escape(name)
    assert "/" not in file_name and "\0" not in file_name
    assert file_name not in (".", "..", "")
    assert len(file_name.encode("utf-8")) <= NAME_MAX
    if not is_hashed(file_name):
        assert unescape(file_name) == name


@given(any_names, any_names)
def test_escape_is_injective(a: str, b: str) -> None:
    if a != b:
        assert escape(a) != escape(b)


def test_long_names_are_cut_with_a_stable_hash() -> None:
    a, b = "x" * 300, "x" * 299 + "y"
    assert is_hashed(escape(a)) and is_hashed(escape(b))
    assert escape(a) != escape(b)
    assert escape(a) == escape("x" * 300)
    assert len(escape("é" * 200).encode()) <= NAME_MAX
    with pytest.raises(ValueError):
        unescape(escape(a))


@pytest.mark.parametrize("bad", ["%41", "%zz", "a%2", "a/b", ".x", "%u12", "x\0"])
def test_unescape_rejects_non_canonical(bad: str) -> None:
    with pytest.raises(ValueError):
        unescape(bad)


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
