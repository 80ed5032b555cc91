"""The incremental manager over the fake engine's backups and dirty extents, read like the VFS.

``Rig`` runs an ``IncrementalManager`` (behind a ``SetRouter``) on
``FakeEngine`` with ``DirtyClient`` data planes; ``Rig.read_set`` lists a set
and copies every file into ``Rig.out`` (random-sized chunks), then waits until
the session closed. ``new_vm`` adds a VM whose disks have incremental backup
enabled. MockClock tests: the engine's latency and the grace periods run instantly.
A rig is one mount: ``Rig(tmp_path, engine=..., state=...)`` is a later mount of
the same engine and state directory, and with ``crash`` (``tests.support.crash``)
the mount's process can die at a chosen call; ``mounted`` runs its manager.
Must not: assert anything about the sets (the tests do).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from rhvfs.backupset import SetKind
from rhvfs.sessions._router import SetRouter
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._model import Owner, SetEntry
from rhvfs.sessions.full._manager import SetView
from rhvfs.sessions.incremental._chainstate import ChainState
from rhvfs.sessions.incremental._manager import IncrementalManager
from tests.support.configs import make_config
from tests.support.crash import Crash
from tests.support.data import MiB
from tests.support.fake_dataplane import DirtyClient, FakeDataPlane
from tests.support.fake_engine import ENGINE_LIKE, FakeEngine


class Full:
    """A stand-in for BackupManager: the router must pass @rhv/ calls through untouched."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.ended: list[str] = []

    async def list_set(self, owner: Any) -> list[Any]:
        return [SetEntry(name="root--abc.raw", key="disk:abc", size=1, blocks=1, mtime_ns=0)]

    async def list_disk_files(self, owner: Any) -> list[Any]:
        return [SetEntry(name="root.raw", key="disk:abc", size=1, blocks=1, mtime_ns=0)]

    async def config_view(self, owner: Any, *, read_id: str, via_backup: bool) -> SetView:
        return SetView(
            read_id=read_id,
            method="backup" if via_backup else "snapshot",
            entries=tuple(await self.list_set(owner)),
            disk_entries=tuple(await self.list_disk_files(owner)),
            contents={},
            image_ids={"abc": "volume"},
            shape="shape",
        )

    async def open(
        self,
        owner: Any,
        key: str,
        *,
        read_id: str | None = None,
        expect_images: Mapping[str, str] | None = None,
    ) -> int:
        self.opened.append(key)
        return 7

    def end_read(self, owner: Any, read_id: str, *, reason: str) -> None:
        self.ended.append(read_id)

    def read_ended(self, owner: Any) -> None:
        pass

    def read_lost(self, read_id: str) -> str | None:
        return None

    async def settled(self, owner: Any) -> None:
        pass

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        return b"full"

    async def release(self, handle: int) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"sessions": []}


class Rig:
    """An IncrementalManager and a SetRouter (full sets: ``Full``) on a fake engine;
    ``config``: settings over the rig's (``make_config``). ``engine``: an engine an
    earlier rig made; ``state``: the state directory (default ``tmp_path/state``);
    ``crash``: the mount's process, which dies where the test says (its artifacts
    name a dead process)."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        engine: FakeEngine | None = None,
        state: Path | None = None,
        crash: Crash | None = None,
        **config: Any,
    ) -> None:
        self.engine = engine or FakeEngine(latency=ENGINE_LIKE)
        self.plane = FakeDataPlane(self.engine, client=DirtyClient)
        self.state = state or tmp_path / "state"
        self.chain = ChainState(self.state / "chain.json")
        self.journal = Journal(self.state / "journal.json")
        # an incomplete set outlives its last close by read_idle_limit (transfers parked
        # after the grace period)
        self.config = make_config(**{"grace_period": 5.0, "read_idle_limit": 20.0, **config})
        self.manager = IncrementalManager(
            crash.engine(self.engine) if crash is not None else self.engine,
            self.config,
            chain=self.chain,
            journal=self.journal,
            imageio_opener=self.plane.opener,
            reader_factory=self.plane.reader_factory,
            cleanup_on_start=False,
        )
        if crash is not None:
            self.manager._process = crash.process
        self.full = Full()
        self.router = SetRouter(self.full, self.manager, config=self.config)
        self.out = tmp_path / "out"  # a later mount's sets go next to the earlier ones
        self.out.mkdir(exist_ok=True)

    async def read_set(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None = None,
        *,
        stop_after: int | None = None,
    ) -> list[SetEntry]:
        """List the set, copy every file into ``out`` (random-sized chunks), wait for the close."""
        entries = await self.copy_set(owner, kind, since, stop_after=stop_after)
        await trio.sleep(self.config.grace_period + 30)
        assert owner.id not in self.manager._sessions
        return entries

    async def copy_set(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None = None,
        *,
        stop_after: int | None = None,
    ) -> list[SetEntry]:
        """List the set and copy every file into ``out``; the set closes after that."""
        entries = await self.router.list_incremental(owner, kind, since)
        for i, e in enumerate(entries):
            h = await self.router.open(owner, e.key)
            data = bytearray()
            chunk = 128 * 1024 + 512 * (i % 3)
            while True:
                if (
                    stop_after is not None
                    and len(data) >= stop_after
                    and e.name.endswith((".qcow2", ".raw"))
                ):
                    break
                part = await self.router.read(h, len(data), chunk)
                if not part:
                    break
                data += part
            await self.router.release(h)
            (self.out / e.name).write_bytes(data)
            if stop_after is None:
                assert len(data) == e.size
        return entries


@asynccontextmanager
async def mounted(rig: Rig) -> AsyncIterator[Rig]:
    """``rig``'s manager runs (the mount is up) for the body; then every set ends."""
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.manager.run)
        yield rig
        await rig.manager.aclose_all()
        nursery.cancel_scope.cancel()


def manifest(rig: Rig, entries: list[SetEntry]) -> dict[str, Any]:
    name = next(e.name for e in entries if e.name.startswith("manifest--"))
    doc: dict[str, Any] = json.loads((rig.out / name).read_bytes())
    return doc


def image(entries: list[SetEntry], disk_id: str) -> SetEntry:
    return next(e for e in entries if e.disk_id == disk_id)


def new_vm(
    engine: FakeEngine,
    *,
    disks: Sequence[tuple[str, int]] = (("root", 4 * MiB), ("data", 2 * MiB)),
) -> Owner:
    vm = engine.add_vm("web01", disks=disks)
    for a in engine.attachments[vm.id]:
        engine.set_disk(vm.id, a.disk.alias, backup="incremental", format="cow")
    return Owner("vm", vm.id, vm.name)
