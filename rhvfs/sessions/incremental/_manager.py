"""Incremental, differential and since-checkpoint backup sets of VMs (issue 5).

``IncrementalManager`` serves ``/vms/<vm>/@rhv-incremental/``,
``@rhv-differential/`` and ``@rhv-since/<checkpoint>/``. Listing such a
directory starts (or joins) the VM's ``IncrementalSession``: one engine VM
backup (``from_checkpoint_id`` = the base set's checkpoint, from the local
``ChainState``), one image transfer per disk, the dirty extents of each
incremental disk, and from them a qcow2 delta layout (``Qcow2Delta``) whose
size is known before anything is read. The listing has to start the backup:
the file sizes are the dirty extents. The set holds:

- ``vm--<set>.ovf``, ``vm--<set>.xml``, ``manifest--<set>.json`` (configuration
  and a manifest with from/to checkpoint ids, parent set and per-disk mode),
- ``<alias>--<diskid>--<set>.qcow2`` per incremental disk: a delta whose backing
  file names the base set's file of that disk,
- ``<alias>--<diskid>--<set>.raw`` per disk read in full (raw or backup=none
  disks, disks new since the base, a broken chain), marked in the manifest.

``<set>`` is the backup's to-checkpoint id (the backup id for raw-only sets),
so names never collide between sets. A set counts as completed only when every
file of it was read to the end and closed and the engine backup was finalized;
only then is it recorded in the chain. A missing or invalid base checkpoint
makes the set a full one, with a warning in the log and status.

Disks without incremental support in a set with a base cannot be part of an
incremental engine backup (the engine refuses them). In ``@rhv-incremental/``
such a VM's sets form a snapshot chain instead (all its disks, one snapshot, see
``incremental_session``): the snapshot of a completed set is kept on the engine
as the next set's base, which reads only the newer layer. In the other set
kinds those disks are read in full from a snapshot of just those disks, taken
before the backup starts.

Modules: ``rhvfs.backupset`` (kinds, keys, file names, manifest), ``incremental_delta``
(extent maps, ``DeltaSource``), ``incremental_channel`` (a disk's plan and
transfer), ``incremental_session`` (one set), this one (``IncrementalManager``:
sessions per VM, handles, status, leftovers). This module re-exports their
public names.

A set read completely ends at once (its backup is finalized and the chain
advances), so the next listing of the directory starts the next set from the
new checkpoint; an incomplete set lives ``read_idle_limit`` after its last close
(transfers released after ``grace_period``). ``@rhv/`` of a VM that is up is a
``full`` set bound to one read of the ``SetRouter`` (``open_full(...,
read_id=R)``): backup id and set id are R, and the router serves the
configuration files.

After a set completed, its session removes the VM's old checkpoints that rhvfs
created beyond the newest ``keep_checkpoints`` (``_retention``).

Cleanups a set could not finish (transfers, the backup's finalization, the
fallback snapshot) are retried in the background while the manager runs
(``PendingCleanups``, ``status()["pending_cleanups"]``); ``finalize_leftovers``
finalizes only backups of this installation whose mount is dead.

Invariants between awaits: at most one session per VM in ``_sessions`` (a
``SessionRegistry``; the engine allows one backup per VM); a session's ``entries`` never change once
it is ready; a handle maps to exactly one session, which counts it; a read id in
``_ended_reads`` never gets a session.

Must not: know about inodes or pyfuse3; write anything but its own chain state
and journal entries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from rhvfs.backupset import SetKind
from rhvfs.config import Config
from rhvfs.errors import (
    NotFound,
    PointInTimeLost,
    RhvfsError,
    SessionError,
)
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._cleanup import finalize_backup
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._limits import EngineLimits, Slot
from rhvfs.sessions.core._model import (
    Owner,
    SetEntry,
)
from rhvfs.sessions.core._owner_data import OwnerDataSource
from rhvfs.sessions.core._pending import PendingCleanups, serve
from rhvfs.sessions.core._ports import (
    ImageioOpener,
    ReaderFactory,
    default_data_plane,
)
from rhvfs.sessions.core._registry import SessionRegistry
from rhvfs.sessions.incremental._chainstate import ChainState, PendingBackup
from rhvfs.sessions.incremental._channel import IncrementalDiskChannel, SetDiskPlan
from rhvfs.sessions.incremental._delta import (
    DeltaSource,
    changes_from_dirty,
    delta_file_extents,
    reader_extents,
)
from rhvfs.sessions.incremental._session import (
    EngineWithBackups,
    IncrementalSession,
    IncrementalSessionDeps,
)

__all__ = [
    "DeltaSource",
    "EngineWithBackups",
    "IncrementalDiskChannel",
    "IncrementalManager",
    "IncrementalSession",
    "IncrementalSessionDeps",
    "SetDiskPlan",
    "changes_from_dirty",
    "delta_file_extents",
    "reader_extents",
]

log = logging.getLogger(__name__)


class IncrementalManager:
    """Incremental, differential and since-checkpoint sets of VMs, one session per VM."""

    def __init__(
        self,
        engine: EngineWithBackups,
        config: Config,
        *,
        chain: ChainState,
        journal: Journal,
        imageio_opener: ImageioOpener | None = None,
        reader_factory: ReaderFactory | None = None,
        cleanup_on_start: bool = True,
        limits: EngineLimits | None = None,
    ) -> None:
        self.engine = engine
        self._owner_data = OwnerDataSource(engine)
        self.config = config
        #: the mount's limits on sessions and transfers, shared with the other manager
        self.limits = limits if limits is not None else EngineLimits.from_config(config)
        self.chain = chain
        self.journal = journal
        self._process = procid.current()
        self._opener, self._reader_factory = default_data_plane(
            config, imageio_opener=imageio_opener, reader_factory=reader_factory
        )
        self._cleanup_on_start = cleanup_on_start
        self._sessions: SessionRegistry[IncrementalSession] = SessionRegistry(
            what="the incremental manager"
        )
        self._completed = 0
        self._bytes_read_closed = 0  # bytes served by sessions that have closed
        self.cleanups = PendingCleanups(config, journal=journal)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; on cancellation every set ends (shielded), and what their
        cleanups left gets one last try."""
        await serve(
            self._sessions,
            journal=self.journal,
            cleanups=self.cleanups,
            on_start=self.finalize_leftovers if self._cleanup_on_start else None,
            task_status=task_status,
        )

    async def finalize_leftovers(self) -> list[str]:
        """Finalize engine backups started by dead mounts of this installation.

        Only backups in this installation's chain state, not of another installation
        (older entries name none), whose process is gone and whose mount instance holds
        no lock. A backup refuses to finalize (409) while its transfers are unfinished;
        the session gc cancels those, so a conflict is retried until ``system_timeout``.
        """
        done: list[str] = []
        cfg = self.config
        installation = self.journal.installation

        def dead(p: PendingBackup) -> bool:
            if p.process == self._process:
                return False
            if p.installation is not None and p.installation != installation.id:
                return False
            if installation.instance_alive(p.instance):
                return False
            return procid.is_alive(p.process) is False

        async def finalize(p: PendingBackup) -> None:
            try:
                await finalize_backup(self.engine, p.vm_id, p.backup_id, config=cfg)
            except RhvfsError as e:
                log.info("leftover backup %s of VM %s: %s", p.backup_id, p.vm_id, e)
                return
            self.chain.remove_pending(p.backup_id)
            done.append(f"finalized leftover backup {p.backup_id} of VM {p.vm_id}")
            log.info("%s", done[-1])

        async with trio.open_nursery() as nursery:
            for p in self.chain.pending():
                if dead(p):
                    nursery.start_soon(finalize, p)
        return done

    # -- listings -------------------------------------------------------------

    def since_checkpoints(self, owner: Owner) -> list[str]:
        """Checkpoints rhvfs recorded for ``owner`` (``@rhv-since/<id>/``), oldest first;
        not those checkpoint retention removed."""
        if owner.kind != "vm":
            return []
        seen: list[str] = []
        for s in self.chain.sets(owner.id):
            if s.checkpoint_id and not s.checkpoint_removed and s.checkpoint_id not in seen:
                seen.append(s.checkpoint_id)
        return seen

    async def list_set(
        self, owner: Owner, kind: SetKind, since: str | None = None
    ) -> list[SetEntry]:
        """Start or join ``owner``'s set of ``kind``; its files (sizes exact)."""
        session = await self._session(owner, kind, since)
        return list(session.entries)

    async def _session(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None,
        announced: Sequence[SetEntry] = (),
        read_id: str | None = None,
        slot: Slot | None = None,
    ) -> IncrementalSession:
        """``slot``: a granted place the caller reserved; it is this call's now: a session
        started here takes it, else it is released."""
        taken = False

        def new() -> IncrementalSession:
            nonlocal taken
            # may refuse (an ended read): the slot is then still this call's to release
            session = self._new_session(owner, kind, since, announced, read_id, slot=slot)
            taken = True
            return session

        try:
            return await self._acquire(owner, kind, since, read_id, new)
        finally:
            if slot is not None and not taken:
                slot.release()

    async def _acquire(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None,
        read_id: str | None,
        new: Callable[[], IncrementalSession],
    ) -> IncrementalSession:
        if owner.kind != "vm":
            raise NotFound(f"templates have no {kind} sets")
        if kind == "since" and since not in self.since_checkpoints(owner):
            raise NotFound(f"checkpoint {since} of {owner.name} was not recorded by rhvfs")
        self._sessions.check_running()

        # Another kind of set (or a closing one) holds the VM's only backup: wait for it.
        session = await self._sessions.acquire(
            owner.id,
            new=new,
            usable=lambda s: (
                (s.kind, s.since, s.read_id) == (kind, since, read_id) and not s.retiring
            ),
            make_way=self._sessions.retire,  # nobody reads it: end it now, not after its grace
            deadline=trio.current_time() + max(self.config.system_timeout, 1.0),
            busy=lambda s: SessionError(
                f"a {s.kind} set of VM {owner.name} is still being read; try again later"
            ),
        )
        if not session.handles and not session.ever_opened:
            session.schedule_close(session.grace_s)
        return session

    def _new_session(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None,
        announced: Sequence[SetEntry] = (),
        read_id: str | None = None,
        *,
        slot: Slot | None = None,
    ) -> IncrementalSession:
        self._sessions.check_read(read_id, owner)  # an ended read never gets a second backup
        deps = IncrementalSessionDeps(
            engine=self.engine,
            config=self.config,
            chain=self.chain,
            fetch_owner_data=self._owner_data,
            journal=self.journal,
            process=self._process,
            imageio_opener=self._opener,
            reader_factory=self._reader_factory,
            cleanups=self.cleanups,
            limits=self.limits,
            on_closed=self._closed,
            on_note=self._note,
        )
        return IncrementalSession(
            owner, kind, since, deps, announced=announced, read_id=read_id, slot=slot
        )

    def _closed(self, session: IncrementalSession) -> None:
        self._sessions.forget(session)
        self._bytes_read_closed += session.bytes_read
        if session.recorded:
            self._completed += 1

    def _note(self, owner: Owner, message: str, error: bool) -> None:
        self._sessions.notes.add(owner, message, level="error" if error else "warning")

    # -- @rhv/ through the backup API ----------------------------------------

    async def backs_up_with_checkpoints(self, owner: Owner) -> bool:
        """Whether ``@rhv/`` of ``owner`` is read from a full engine backup: a VM that is up,
        with a disk that supports incremental backup.

        Down VMs keep the snapshot-based full read: a backup adds a checkpoint bitmap
        to their volumes, which changes the disks' allocated size and with it the stable
        mtime that tools like restic rely on for unchanged VMs. Their chain starts with
        the first ``@rhv-incremental/`` set (a full one).
        """
        if owner.kind != "vm":
            return False
        vm = await self.engine.get_vm(owner.id)
        if vm.status != "up":  # the engine backs up VMs that are up or down, not paused ones
            return False
        atts = await self.engine.disk_attachments(owner.id)
        return any(a.disk.format == "cow" and a.disk.backup == "incremental" for a in atts)

    async def open_full(
        self,
        owner: Owner,
        key: str,
        announced: Sequence[SetEntry],
        *,
        read_id: str | None = None,
        slot: Slot | None = None,
    ) -> int:
        """Open ``key`` of ``owner``'s ``@rhv/`` served by a full engine backup.

        ``announced`` is the ``@rhv/`` listing (the BackupManager's): the set serves
        the same names, keys and sizes, with the checkpoint in its manifest, and
        once read completely it is the full set later incrementals start from.
        With ``read_id`` the set belongs to that read of the ``SetRouter`` (see the
        module docstring): an ended read is refused with ``PointInTimeLost``. ``slot``: a
        granted place among the mount's sessions the caller reserved; a set started here
        takes it, else it is released.
        """
        try:
            self._sessions.check_read(read_id, owner)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        session = self._sessions.get(owner.id)
        if (
            session is None
            or session.kind != "full"
            or session.state != "ready"
            or session.read_id != read_id
            or session.retiring
        ):
            # the slot is _session's now (taken by a set started there, or released)
            await self._session(owner, SetKind.FULL, None, announced, read_id, slot)
        elif slot is not None:
            slot.release()  # joined the read's set: it holds a place already
        return await self.open(owner, key)

    def end_read(self, owner: Owner, read_id: str, *, reason: str, complete: bool) -> None:
        """Read ``read_id`` of ``owner``'s ``@rhv/`` is over; ``complete``: the router saw
        every file read, so the set may join the chain. Its session closes with its last
        handle, and the read never gets a session again."""
        self._sessions.end_read(read_id, reason)
        session = self._sessions.get(owner.id)
        if session is None or session.read_id != read_id:
            return
        if complete:
            session.config_read = True
        session.retiring = True
        if not session.handles:
            session.on_last_release()

    def read_lost(self, read_id: str) -> str | None:
        """Why read ``read_id`` of a VM's ``@rhv/`` can get no data any more, or None."""
        return self._sessions.ended_read(read_id)

    async def settled(self, owner: Owner) -> None:
        """Until the owner's ending set (if any) has finalized its backup (see the registry)."""
        await self._sessions.settled(owner.id)

    def live_set(self, owner: Owner) -> IncrementalSession | None:
        """The owner's ready set, if any (for the router's reads of set directories)."""
        session = self._sessions.get(owner.id)
        return session if session is not None and session.state == "ready" else None

    def retire(self, owner: Owner) -> None:
        """The owner's set takes no new reader: it closes now, or with its last handle."""
        session = self._sessions.get(owner.id)
        if session is not None:
            self._sessions.retire(session)

    async def open(self, owner: Owner, key: str) -> int:
        session = self._sessions.get(owner.id)
        if session is None or session.state != "ready" or key not in session.entries_by_key:
            raise NotFound(
                f"{key} is not part of a live set of {owner.name} (list the set directory again)"
            )
        if session.retiring:
            raise PointInTimeLost(
                f"set {session.set_id} of {owner.name} was already read; list its directory "
                "again for a new set"
            )
        session.cancel_grace()
        session.ever_opened = True
        handle = self._sessions.handles.add((session, key))
        session.handles.add(handle)
        return handle

    async def read(self, handle: int, offset: int, size: int) -> bytes | memoryview:
        return await self._sessions.read(handle, offset, size)

    async def release(self, handle: int) -> None:
        item = self._sessions.handles.pop(handle)
        if item is None:
            return
        session = item[0]
        session.handles.discard(handle)
        for ch in session.channels.values():
            forget = getattr(ch.reader, "forget_handle", None)
            if forget is not None:
                forget(handle)
        if not session.handles:
            session.on_last_release()

    async def aclose_all(self) -> None:
        await self._sessions.aclose_all()

    def status(self) -> dict[str, Any]:
        live = self._sessions.sessions()
        return {
            "sessions": [s.status() for s in live],
            "totals": {
                "sets_started": self._sessions.started,
                "sets_completed": self._completed,
                "sessions_active": len(live),
                "handles_open": len(self._sessions.handles),
                "bytes_read": self._bytes_read_closed + sum(s.bytes_read for s in live),
            },
            "pending_cleanups": self.cleanups.status(),
            "notes": self._sessions.notes.list(),
        }
