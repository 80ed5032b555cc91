"""``BackupManager``: backup-set listings, handles and the sessions behind them.

The VFS asks it for the files of a VM's or template's ``@rhv/`` (and
``disks/``), opens them, reads and releases them; the manager starts, joins
and ends ``BackupSession``s and keeps the sizes and times it announced stable
(``Announcement``): a file's size announced in a listing stays exactly true
when it is read later, and mtimes of down VMs and templates only change when
the owner does.

Invariants between awaits: at most one session per owner id in ``_sessions``
(a closing one stays there until it is closed, so a new open waits and then
starts a fresh one); a handle id maps to exactly one session, which counts it.

Must not: know about inodes or pyfuse3, talk to imageio directly.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import trio

from rhvfs.backupset import (
    CONFIG_NAMES,
    MANIFEST_NAME,
    NO_ID,
    OVF_NAME,
    XML_NAME,
    ConfigKey,
    DiskKey,
    OwnerData,
    announced_size,
    build_manifest,
    data_fingerprint,
    disks_dir_names,
    image_file_name,
    missing_ovf,
    pad_to,
    shape_fingerprint,
    stable_mtime_ns,
    xml_stop_time,
)
from rhvfs.config import Config
from rhvfs.engine.types import Disk, Template, Vm
from rhvfs.errors import (
    EngineError,
    NotFound,
    RhvfsError,
    SessionClosed,
    SessionError,
    is_transient,
)
from rhvfs.sessions.core import _gc as gc_mod
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._model import Owner, SetEntry, blocks_for
from rhvfs.sessions.core._ports import (
    EngineLike,
    ImageioOpener,
    ReaderFactory,
    default_data_plane,
)
from rhvfs.sessions.full._session import BackupSession, SessionDeps

log = logging.getLogger(__name__)

T = TypeVar("T")
NAMES_TTL_S = 60.0
MAX_ERRORS = 50


@dataclasses.dataclass
class Announcement:
    """What listings of one owner promised: kept for the life of the mount."""

    shape: str
    config_sizes: dict[str, int]
    blocks: dict[str, int]  # disk id -> st_blocks
    mtime_ns: int
    running: bool  # mtime is a session time (renewed after each session) vs. a stable one


def _disk_blocks(disk: Disk) -> int:
    if disk.provisioned_size <= 0:
        return 0
    return max(1, blocks_for(disk.actual_size or 0))


def _backup_disks(data: OwnerData) -> list[Disk]:
    """Disks a snapshot covers: image disks (a direct LUN has no volume), never shareable ones."""
    return [a.disk for a in data.attachments if not a.disk.shareable and a.disk.image_id]


class BackupManager:
    """Backup sets of VMs and templates, served from per-owner sessions."""

    def __init__(
        self,
        engine: EngineLike,
        config: Config,
        *,
        journal: Journal,
        imageio_opener: ImageioOpener | None = None,
        reader_factory: ReaderFactory | None = None,
        gc_on_start: bool = True,
    ) -> None:
        self.engine = engine
        self.config = config
        self.journal = journal
        self._process = procid.current()
        self._opener, self._reader_factory = default_data_plane(
            config, imageio_opener=imageio_opener, reader_factory=reader_factory
        )
        self._gc_on_start = gc_on_start
        self._nursery: trio.Nursery | None = None
        self._sessions: dict[str, BackupSession] = {}
        self._handles: dict[int, tuple[BackupSession, str]] = {}
        self._handle_ids = itertools.count(1)
        self._announced: dict[str, Announcement] = {}
        self._names: tuple[float, dict[str, str], dict[str, str]] | None = None
        self._errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_ERRORS)
        self._sessions_started = 0
        self._bytes_read_closed = 0

    # -- service --------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; on cancellation every session ends cleanly (shielded)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._gc_on_start:
                    nursery.start_soon(self._startup_gc)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _startup_gc(self) -> None:
        try:
            for line in await self.collect_garbage():
                log.info("gc: %s", line)
        except (RhvfsError, OSError) as e:
            self._note_error(None, f"cleanup of leftovers failed: {e}")
        except Exception as e:  # a bug in cleanup must not take the mount down
            log.exception("cleanup of leftovers failed")
            self._note_error(None, f"cleanup of leftovers failed: {e!r}")

    # -- listings ---------------------------------------------------------------

    async def list_set(self, owner: Owner) -> list[SetEntry]:
        """The files of ``owner``'s ``@rhv/``; does not start a session."""
        session = self._sessions.get(owner.id)
        if session is not None and session.entries and session.state in ("ready", "closing"):
            return list(session.entries)  # frozen: stable while the session lives
        data = await self._fetch_owner_data(owner, None)
        ann, disks = self._announce_listing(owner, data)
        return self._set_entries(ann, disks)

    async def list_disk_files(self, owner: Owner) -> list[SetEntry]:
        """The files of ``vms/<vm>/disks/``: ``<alias>.raw``, same data as the set's images."""
        session = self._sessions.get(owner.id)
        if session is not None and session.entries and session.state in ("ready", "closing"):
            return list(session.disk_entries)
        data = await self._fetch_owner_data(owner, None)
        ann, disks = self._announce_listing(owner, data)
        return self._disk_entries(ann, disks)

    def _announce_listing(self, owner: Owner, data: OwnerData) -> tuple[Announcement, list[Disk]]:
        disks = _backup_disks(data)
        names = {d.id: image_file_name(d.alias, d.id) for d in disks}
        manifest = build_manifest(
            data,
            disks=[dataclasses.replace(d, image_id=d.image_id or NO_ID) for d in disks],
            file_names=names,
            snapshot_id=NO_ID if owner.kind == "vm" else None,
            backup_time=datetime.now(UTC),
            session_id="0" * 12,
        ).to_json()
        contents = {OVF_NAME: data.ovf, XML_NAME: data.xml, MANIFEST_NAME: manifest}
        shape = shape_fingerprint(data)
        ann = self._announced.get(owner.id)
        if (
            ann is None
            or ann.shape != shape
            or any(len(c) > ann.config_sizes.get(n, -1) for n, c in contents.items())
        ):
            sizes = {n: announced_size(len(c)) for n, c in contents.items()}
            if ann is not None and ann.shape == shape:
                sizes = {n: max(s, ann.config_sizes.get(n, 0)) for n, s in sizes.items()}
            ann = Announcement(
                shape=shape,
                config_sizes=sizes,
                blocks=dict(ann.blocks) if ann is not None else {},
                mtime_ns=ann.mtime_ns if ann is not None else 0,
                running=ann.running if ann is not None else False,
            )
            self._announced[owner.id] = ann
        for d in disks:
            ann.blocks.setdefault(d.id, _disk_blocks(d))
        running = data.kind == "vm" and (data.entity.status or "down") != "down"
        if running:
            if not ann.running or not ann.mtime_ns:
                ann.mtime_ns = time.time_ns()
                ann.running = True
        else:
            base = xml_stop_time(data.xml) or data.entity.creation_time
            ann.mtime_ns = stable_mtime_ns(base, data_fingerprint(data))
            ann.running = False
        return ann, disks

    def _set_entries(self, ann: Announcement, disks: list[Disk]) -> list[SetEntry]:
        entries = [
            SetEntry(
                name=n,
                key=ConfigKey(n).encode(),
                size=ann.config_sizes[n],
                blocks=blocks_for(ann.config_sizes[n]),
                mtime_ns=ann.mtime_ns,
            )
            for n in CONFIG_NAMES
        ]
        entries += [
            SetEntry(
                name=image_file_name(d.alias, d.id),
                key=DiskKey(d.id).encode(),
                size=d.provisioned_size,
                blocks=ann.blocks.get(d.id) or _disk_blocks(d),
                mtime_ns=ann.mtime_ns,
                disk_id=d.id,
            )
            for d in disks
        ]
        return entries

    def _disk_entries(self, ann: Announcement, disks: list[Disk]) -> list[SetEntry]:
        names = disks_dir_names([(d.id, d.alias) for d in disks])
        return [
            SetEntry(
                name=names[d.id],
                key=DiskKey(d.id).encode(),
                size=d.provisioned_size,
                blocks=ann.blocks.get(d.id) or _disk_blocks(d),
                mtime_ns=ann.mtime_ns,
                disk_id=d.id,
            )
            for d in disks
        ]

    def _freeze(self, session: BackupSession) -> None:
        """Fix a starting session's entries and padded config contents (SessionDeps.freeze)."""
        assert session.data is not None
        owner, data = session.owner, session.data
        # The snapshot's disks carry the snapshot volumes; sizes and blocks come from the
        # announcement (a listing always precedes a session) or from the live disks.
        live = {a.disk.id: a.disk for a in data.attachments}
        ann = self._announced.get(owner.id)
        shape = shape_fingerprint(data)
        names = {d.id: image_file_name(d.alias or live[d.id].alias, d.id) for d in session.disks}
        manifest = build_manifest(
            data,
            disks=session.disks,
            file_names=names,
            snapshot_id=session.snapshot.id if session.snapshot else None,
            backup_time=datetime.fromtimestamp(session.started_wall, UTC),
            session_id=session.session_id,
        ).to_json()
        contents = {OVF_NAME: data.ovf, XML_NAME: data.xml, MANIFEST_NAME: manifest}
        if ann is None or ann.shape != shape:
            # The owner changed between listing and open: announce anew (stat changes, visibly).
            ann = Announcement(
                shape=shape,
                config_sizes={n: announced_size(len(c)) for n, c in contents.items()},
                blocks=dict(ann.blocks) if ann is not None else {},
                mtime_ns=ann.mtime_ns if ann is not None and ann.mtime_ns else session.started_ns,
                running=ann.running if ann is not None else True,
            )
            self._announced[owner.id] = ann
        if not ann.mtime_ns:
            ann.mtime_ns = session.started_ns
        for d in session.disks:
            ann.blocks.setdefault(d.id, _disk_blocks(live.get(d.id, d)))
        padded: dict[str, bytes | RhvfsError] = {}
        for n, c in contents.items():
            try:
                padded[ConfigKey(n).encode()] = pad_to(
                    c, ann.config_sizes[n], what=f"{n} of {owner.name}"
                )
            except RhvfsError as e:
                session.note_error(str(e))
                padded[ConfigKey(n).encode()] = e
        disks = [
            dataclasses.replace(d, alias=d.alias or live[d.id].alias) if d.id in live else d
            for d in session.disks
        ]
        session.contents = padded
        session.entries = self._set_entries(ann, disks)
        session.disk_entries = self._disk_entries(ann, disks)
        session.entries_by_key = {e.key: e for e in session.entries}

    async def _fetch_owner_data(self, owner: Owner, entity: Vm | Template | None) -> OwnerData:
        engine = self.engine
        if owner.kind == "vm":
            vm_id = owner.id
            ent, atts, nics, ovf, xml, names = await _gather(
                (lambda: _const(entity)) if entity is not None else (lambda: engine.get_vm(vm_id)),
                lambda: engine.disk_attachments(vm_id),
                lambda: engine.vm_nics(vm_id),
                lambda: self._ovf_or_none(engine.vm_ovf(vm_id), owner),
                lambda: engine.vm_xml(vm_id),
                self._names_maps,
            )
        else:
            tid = owner.id
            ent, atts, nics, ovf, xml, names = await _gather(
                (lambda: _const(entity))
                if entity is not None
                else (lambda: engine.get_template(tid)),
                lambda: engine.template_disk_attachments(tid),
                lambda: engine.template_nics(tid),
                lambda: self._ovf_or_none(engine.template_ovf(tid), owner),
                lambda: engine.template_xml(tid),
                self._names_maps,
            )
        return OwnerData(
            kind=owner.kind,
            entity=ent,
            attachments=tuple(atts),
            nics=tuple(nics),
            ovf=ovf.encode("utf-8") if ovf is not None else missing_ovf(owner.kind, owner.name),
            ovf_available=ovf is not None,
            xml=xml.encode("utf-8") if isinstance(xml, str) else bytes(xml),
            cluster_names=names[0],
            storage_domain_names=names[1],
        )

    async def _ovf_or_none(self, call: Awaitable[str], owner: Owner) -> str | None:
        """The OVF, or None when the engine has none (the set is still complete without it)."""
        try:
            return await call
        except NotFound:
            raise
        except EngineError as e:
            if is_transient(e):
                raise
            log.warning("no OVF for %s %s: %s", owner.kind, owner.name, e)
            return None

    async def _names_maps(self) -> tuple[dict[str, str], dict[str, str]]:
        now = trio.current_time()
        if self._names is not None and self._names[0] > now:
            return self._names[1], self._names[2]
        clusters, sds = await _gather(self.engine.list_clusters, self.engine.list_storage_domains)
        c = {x.id: x.name for x in clusters}
        s = {x.id: x.name for x in sds}
        self._names = (now + NAMES_TTL_S, c, s)
        return c, s

    # -- handles ----------------------------------------------------------------

    async def open(self, owner: Owner, key: str) -> int:
        """Start or join ``owner``'s session; return a handle for ``key``."""
        if self._nursery is None:
            raise SessionError("the backup manager is not running")
        if owner.id not in self._announced:
            await self.list_set(owner)  # sizes and times are fixed by a listing first
        while True:
            session = self._sessions.get(owner.id)
            if session is None:
                session = self._new_session(owner)
                await self._nursery.start(session.run)
            if session.state in ("closing", "closed"):
                await session.closed.wait()
                continue
            await session.ready.wait()
            if session.state == "broken":
                assert session.error is not None
                raise session.error
            if session.state != "ready":
                continue  # it started closing meanwhile: wait for it and start afresh
            if key not in session.entries_by_key:
                raise NotFound(f"{key} is not part of the backup set of {owner.name}")
            handle = next(self._handle_ids)
            session.add_handle(handle, key)
            self._handles[handle] = (session, key)
            return handle

    def _new_session(self, owner: Owner) -> BackupSession:
        deps = SessionDeps(
            engine=self.engine,
            config=self.config,
            journal=self.journal,
            process=self._process,
            imageio_opener=self._opener,
            reader_factory=self._reader_factory,
            fetch_owner_data=self._fetch_owner_data,
            freeze=self._freeze,
            on_closed=self._session_closed,
            on_error=self._note_error,
        )
        session = BackupSession(owner, deps)
        self._sessions[owner.id] = session
        self._sessions_started += 1
        log.info("session %s of %s %s starting", session.session_id, owner.kind, owner.name)
        return session

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        """Exactly the bytes at ``offset``; short only at EOF; raises on final failure."""
        try:
            session, key = self._handles[handle]
        except KeyError:
            raise SessionClosed(f"handle {handle} is not open") from None
        return await session.read(key, offset, size, handle_id=handle)

    async def release(self, handle: int) -> None:
        """Close a handle; the last one starts the session's grace timer."""
        item = self._handles.pop(handle, None)
        if item is None:
            return
        session = item[0]
        await session.remove_handle(handle)
        if not session.handles and session.state in ("ready", "broken"):
            session.schedule_close(self.config.grace_period)

    def _session_closed(self, session: BackupSession) -> None:
        if self._sessions.get(session.owner.id) is session:
            del self._sessions[session.owner.id]
        self._bytes_read_closed += session.bytes_read
        for h in [h for h, (s, _) in self._handles.items() if s is session]:
            del self._handles[h]
        ann = self._announced.get(session.owner.id)
        if ann is not None and ann.running:
            # A running guest's data moved on: later listings (and the next session) show
            # a new time, so tools that key on mtime read the images again.
            ann.mtime_ns = time.time_ns()
        log.info("session %s of %s closed", session.session_id, session.owner.name)

    # -- reporting and cleanup ------------------------------------------------

    def _note_error(self, owner: Owner | None, message: str) -> None:
        self._errors.append(
            {
                "time": datetime.now(UTC).isoformat(),
                "owner": owner.name if owner else None,
                "message": message,
            }
        )

    def status(self) -> dict[str, Any]:
        """For ``/.rhvfs/status.json``: sessions, totals, recent errors."""
        sessions = [s.status() for s in self._sessions.values()]
        return {
            "sessions": sessions,
            "totals": {
                "sessions_active": len(sessions),
                "sessions_started": self._sessions_started,
                "handles_open": len(self._handles),
                "bytes_read": self._bytes_read_closed
                + sum(s.bytes_read for s in self._sessions.values()),
            },
            "errors": list(self._errors),
        }

    async def collect_garbage(self, *, dry_run: bool = False) -> list[str]:
        """Remove leftovers of killed rhvfs processes; never anything else. Returns what it did."""
        live = {s.session_id for s in self._sessions.values()}
        return await gc_mod.collect_garbage(
            self.engine,
            self.journal,
            config=self.config,
            dry_run=dry_run,
            live_session_ids=live,
        )


async def _const(value: T) -> T:
    return value


async def _gather(*fns: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run the calls concurrently; results in order; the first error cancels the rest."""
    results: list[Any] = [None] * len(fns)

    async def one(i: int, fn: Callable[[], Awaitable[Any]]) -> None:
        results[i] = await fn()

    try:
        async with trio.open_nursery() as nursery:
            for i, fn in enumerate(fns):
                nursery.start_soon(one, i, fn)
    except BaseExceptionGroup as group:
        # Report the first real error as itself, not wrapped, so callers catch rhvfs errors.
        for exc in group.exceptions:
            if isinstance(exc, Exception):
                raise exc from None
        raise
    return results
