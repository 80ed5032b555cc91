"""A stand-in for the backup sets (``rhvfs.vfs.backend.BackupSets``) the VFS tests read.

Every owner has a set of three configuration files and three images
(``DISK_SIZE`` bytes of ``image_bytes``), like ``inventory_engine()``'s VMs;
it counts opens, releases and listings so tests can check that browsing opens
nothing. Must not: start anything on an engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from rhvfs.errors import VmStateError
from tests.support.fake_engine import DISK_SIZE
from tests.support.fake_engine import inventory_disk as disk


def image_bytes(owner_id: str, key: str, size: int) -> bytes:
    seed = hashlib.sha256(f"{owner_id}/{key}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclasses.dataclass(frozen=True)
class FakeEntry:
    name: str
    key: str
    size: int
    blocks: int
    mtime_ns: int
    disk_id: str | None = None


class FakeBackups:
    """BackupManager stand-in: sets of three config files and three images per owner."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, str]] = []
        self.released = 0
        self.list_calls = 0
        self.sessions: dict[str, int] = {}  # owner id -> open handles
        self._handles: dict[int, tuple[Any, str]] = {}
        self._next = 100

    def _config(self, owner: Any, key: str) -> bytes:
        return f"{key} of {owner.kind} {owner.name}\n".encode()

    async def list_set(self, owner: Any) -> list[FakeEntry]:
        self.list_calls += 1
        mtime = 1_700_000_000 * 10**9
        entries = [
            FakeEntry(name, f"config:{name}", len(self._config(owner, f"config:{name}")), 1, mtime)
            for name in ("vm.ovf", "vm.xml", "manifest.json")
        ]
        for n in range(3):
            d = disk(owner.id, n)
            entries.append(
                FakeEntry(f"{d.alias}--{d.id}.raw", f"disk:{d.id}", DISK_SIZE, 2048, mtime, d.id)
            )
        return entries

    async def list_disk_files(self, owner: Any) -> list[FakeEntry]:
        entries = [e for e in await self.list_set(owner) if e.disk_id]
        # "<alias>.raw", "--<diskid>" added when aliases collide (as the contract says)
        return [
            dataclasses.replace(e, name="data.raw") if e.name.startswith("data--") else e
            for e in entries
        ]

    async def open(self, owner: Any, key: str, *, reader_pid: int = 0) -> int:
        if owner.id == "vm-4":
            raise VmStateError("VM sleepy is suspended: resume or power it off to back it up")
        self.opened.append((owner.id, key))
        self.sessions[owner.id] = self.sessions.get(owner.id, 0) + 1
        self._next += 1
        self._handles[self._next] = (owner, key)
        return self._next

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        owner, key = self._handles[handle]
        if key.startswith("config:"):
            data = self._config(owner, key)
        else:
            data = image_bytes(owner.id, key, DISK_SIZE)
        return data[offset : offset + size]

    async def release(self, handle: int) -> None:
        owner, _ = self._handles.pop(handle)
        self.released += 1
        self.sessions[owner.id] -= 1

    def status(self) -> dict[str, Any]:
        return {
            "open_handles": len(self._handles),
            "owners": sorted(k for k, v in self.sessions.items() if v),
        }
