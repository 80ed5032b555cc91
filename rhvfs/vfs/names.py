"""Inode numbers derived from engine ids; the name escaping comes from ``rhvfs.backupset``.

Owns:

- ``derive_inode(kind, engine_id, sub_key)``: a stable 63-bit number from an
  entity's identity, so inode numbers are equal across mounts (restic and borg
  key their caches on them). ``InodeTable`` resolves the (astronomically rare)
  collisions deterministically by re-hashing with a counter.

``escape``/``unescape``/``is_hashed`` (engine names <-> file names) are
``rhvfs.backupset``'s, re-exported here for the tree: backup sessions name
their files with the same escaping, and they must not import the VFS.

Must not: know about FUSE, the engine, or directory layout.
"""

from __future__ import annotations

import hashlib

from rhvfs.backupset import NAME_MAX, escape, is_hashed, unescape

__all__ = [
    "FIRST_DERIVED_INODE",
    "NAME_MAX",
    "ROOT_INODE",
    "Identity",
    "InodeTable",
    "derive_inode",
    "escape",
    "is_hashed",
    "unescape",
]

ROOT_INODE = 1
#: Inode numbers below this are reserved (root and friends); hashes never land there.
FIRST_DERIVED_INODE = 1024
_INODE_MASK = (1 << 63) - 1


def derive_inode(kind: str, engine_id: str, sub_key: str = "", *, attempt: int = 0) -> int:
    """A stable inode number in [FIRST_DERIVED_INODE, 2**63) for an entity's identity."""
    salt = 0
    while True:
        text = f"{kind}\0{engine_id}\0{sub_key}\0{attempt}\0{salt}"
        value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
        value &= _INODE_MASK
        if value >= FIRST_DERIVED_INODE:
            return value
        salt += 1


Identity = tuple[str, str, str]


class InodeTable:
    """Maps identities (kind, engine id, sub key) to inode numbers, without collisions.

    The first identity to claim a number keeps it; a colliding later one gets
    the next re-hash (attempt 1, 2, ...), which is deterministic for a given
    discovery order and, with 63-bit hashes, never happens in practice.
    """

    def __init__(self) -> None:
        self._by_identity: dict[Identity, int] = {}
        self._by_inode: dict[int, Identity] = {}
        self.collisions = 0

    def inode(self, kind: str, engine_id: str, sub_key: str = "") -> int:
        identity = (kind, engine_id, sub_key)
        found = self._by_identity.get(identity)
        if found is not None:
            return found
        attempt = 0
        while True:
            ino = derive_inode(kind, engine_id, sub_key, attempt=attempt)
            if ino not in self._by_inode:
                break
            self.collisions += 1
            attempt += 1
        self._by_identity[identity] = ino
        self._by_inode[ino] = identity
        return ino

    def identity(self, ino: int) -> Identity | None:
        return self._by_inode.get(ino)

    def __len__(self) -> int:
        return len(self._by_identity)
