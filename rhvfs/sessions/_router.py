"""``SetRouter``: one ``BackupSets`` face over full sets and incremental sets.

The VFS talks to one object (rhvfs/sessions/CONTRACT.md). This router passes
``@rhv/`` and ``disks/`` calls to the ``BackupManager`` and the calls of
``@rhv-incremental/``, ``@rhv-differential/`` and ``@rhv-since/<cp>/`` to the
``IncrementalManager``, and keeps one handle namespace over both (by the
file's key: ``rhvfs.backupset.FileKey``): a ``HandleTable`` of its own, as
each manager keeps one in its ``SessionRegistry``. (The router's ids map to
``(manager, manager's id)``: the full side is a ``FullSets`` protocol whose
implementations number their own handles, so the two tables cannot be merged.)

Must not: hold any session state of its own beyond the handle map.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from rhvfs.backupset import DiskKey, DisksDirKey, SetFileKey, SetKind, disk_id_of_key, parse_key
from rhvfs.sessions.core._model import Owner, SetEntry
from rhvfs.sessions.core._registry import HandleTable
from rhvfs.sessions.incremental._manager import IncrementalManager


class FullSets(Protocol):
    async def list_set(self, owner: Any) -> list[Any]: ...
    async def list_disk_files(self, owner: Any) -> list[Any]: ...
    async def open(self, owner: Any, key: str) -> int: ...
    async def read(self, handle: int, offset: int, size: int) -> bytes: ...
    async def release(self, handle: int) -> None: ...
    def status(self) -> dict[str, Any]: ...


class SetRouter:
    """Full sets from ``full``, incremental/differential/since sets from ``incremental``."""

    def __init__(
        self, full: FullSets, incremental: IncrementalManager, *, full_sets_via_backup: bool = False
    ) -> None:
        self.full = full
        self.incremental = incremental
        #: serve the data of @rhv/ (and disks/) of VMs with incremental-enabled disks from a
        #: full engine backup, so that reading @rhv/ establishes the chain's checkpoint (issue 5
        #: item 2). Listings stay the BackupManager's (listing never starts a backup).
        self.full_sets_via_backup = full_sets_via_backup
        self._handles: HandleTable[tuple[Any, int]] = HandleTable()  # -> (manager, its handle)

    async def list_set(self, owner: Any) -> list[Any]:
        return await self.full.list_set(owner)

    async def list_disk_files(self, owner: Any) -> list[Any]:
        """``disks/``: the BackupManager's files, keys marked so that their reads stay
        snapshot-based (browsing a disk must not create engine checkpoints)."""
        return [
            dataclasses.replace(e, key=DisksDirKey(_disk_id(e.key)).encode())
            for e in await self.full.list_disk_files(owner)
        ]

    async def list_incremental(
        self, owner: Owner, kind: SetKind, since: str | None = None
    ) -> list[SetEntry]:
        """Files of ``@rhv-<kind>/`` (or ``@rhv-since/<since>/``); starts the set's backup."""
        return await self.incremental.list_set(owner, kind, since)

    async def since_checkpoints(self, owner: Owner) -> list[str]:
        """Names under ``@rhv-since/``: checkpoints of completed sets rhvfs recorded."""
        return self.incremental.since_checkpoints(owner)

    async def open(self, owner: Any, key: str) -> int:
        target: Any
        parsed = parse_key(key)
        if isinstance(parsed, DisksDirKey):
            target = self.full
            inner = await target.open(owner, DiskKey(parsed.disk_id).encode())
        elif isinstance(parsed, SetFileKey):
            target = self.incremental
            inner = await target.open(owner, key)
        elif self.full_sets_via_backup and await self.incremental.backs_up_with_checkpoints(owner):
            target = self.incremental
            inner = await target.open_full(owner, key, await self.full.list_set(owner))
        else:
            target = self.full
            inner = await target.open(owner, key)
        return self._handles.add((target, inner))

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        target, inner = self._handles.get(handle)
        data: bytes = await target.read(inner, offset, size)
        return data

    async def release(self, handle: int) -> None:
        item = self._handles.pop(handle)
        if item is not None:
            await item[0].release(item[1])

    def status(self) -> dict[str, Any]:
        status = dict(self.full.status())
        status["incremental"] = self.incremental.status()
        return status

    async def collect_garbage(self, *, dry_run: bool = False) -> list[str]:
        collect = getattr(self.full, "collect_garbage", None)
        lines: list[str] = list(await collect(dry_run=dry_run)) if collect is not None else []
        if not dry_run:
            lines += await self.incremental.finalize_leftovers()
        return lines


def _disk_id(key: str) -> str:
    disk_id = disk_id_of_key(key)
    if disk_id is None:
        raise ValueError(f"{key!r} is not the key of a disk")
    return disk_id
