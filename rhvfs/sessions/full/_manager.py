"""``BackupManager``: backup-set listings, handles and the sessions behind them.

The VFS asks it for the files of a VM's or template's ``@rhv/`` (and
``disks/``), opens them, reads and releases them; the manager starts, joins
and ends ``BackupSession``s and keeps the sizes and times it announced stable
(``Announcement``): a file's size announced in a listing stays exactly true
when it is read later, and mtimes of down VMs and templates only change when
the owner does.

Reads of a set (``rhvfs.sessions.core._setread``; the ``SetRouter`` keeps the
book): ``config_view`` takes a set's configuration and listing for one read
without creating anything on the engine; ``open(..., read_id=R)`` serves only
read R's session -- it starts it (one snapshot) on the first image, makes an
older read's session close first (``retiring``), and refuses a read whose
session has ended (``PointInTimeLost``) instead of starting another point in
time under it. A read-bound session releases its transfers ``grace_period``
after its last close and lives ``read_idle_limit`` without one; ``end_read``
ends it at once (the read completed). Sessions opened without a read id keep
the plain grace period.

Cleanups a session could not finish (the engine kept a snapshot locked, a
transfer would not end) are retried in the background (``PendingCleanups``)
while the manager runs and listed in ``status()["pending_cleanups"]``; while
it runs the mount's instance of the installation is held live, so no gc takes
its artifacts for a dead process's.

Invariants between awaits: at most one session per owner id in ``_sessions``
(a ``SessionRegistry``: a closing one stays there until it is closed, so a new
open waits and then starts a fresh one); a handle id maps to exactly one
session, which counts it; a read id in ``_ended_reads`` never gets a session.

Must not: know about inodes or pyfuse3, talk to imageio directly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

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
    PointInTime,
    SetLineage,
    announced_size,
    build_manifest,
    config_fingerprint,
    config_size_bounds,
    data_fingerprint,
    disks_dir_names,
    entity_stop_time,
    image_file_name,
    pad_to,
    set_second,
    set_times_ns,
    shape_fingerprint,
)
from rhvfs.config import Config
from rhvfs.engine.types import Disk
from rhvfs.errors import (
    NotFound,
    PointInTimeLost,
    RhvfsError,
    internal_error,
)
from rhvfs.sessions.core import _gc as gc_mod
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._limits import EngineLimits, Slot
from rhvfs.sessions.core._model import Owner, SetEntry, blocks_for
from rhvfs.sessions.core._owner_data import OwnerDataSource, image_disks
from rhvfs.sessions.core._pending import PendingCleanups, serve
from rhvfs.sessions.core._ports import (
    EngineLike,
    ImageioOpener,
    ReaderFactory,
    default_data_plane,
)
from rhvfs.sessions.core._registry import SessionRegistry
from rhvfs.sessions.full._dates import SetDate, SetDates
from rhvfs.sessions.full._session import (
    BACKUP_REFUSED_STATES,
    BackupSession,
    BackupSessionDeps,
)

log = logging.getLogger(__name__)

#: A running owner's configuration files are this much newer than its images (see
#: ``set_times_ns``: borg caches only files older than the newest of a run).
_CONFIG_AFTER_IMAGES_NS = 1000

#: A placeholder read id as long as a real one (a uuid): listings announce sizes with it.
_PLACEHOLDER_READ_ID = "0" * 8 + "-0000-0000-0000-" + "0" * 12


@dataclasses.dataclass(frozen=True)
class SetView:
    """One read's configuration of a set, taken without touching the engine.

    ``contents`` maps each configuration key to its padded bytes (or the error a
    read of it raises); ``image_ids`` is the volume each disk's data must come
    from; ``entries``/``disk_entries`` the frozen listings of ``@rhv/`` and ``disks/``.
    """

    read_id: str
    method: str  # "snapshot", "backup" or "template"
    entries: tuple[SetEntry, ...]
    disk_entries: tuple[SetEntry, ...]
    contents: Mapping[str, bytes | RhvfsError]
    image_ids: Mapping[str, str]
    shape: str
    #: when the configuration files were taken (ISO 8601, as the manifest's point_in_time)
    configuration_time: str = ""
    #: Why the images cannot be read (a VM state no backup starts from, e.g. suspended),
    #: so that opening one fails at once; None: they can.
    refused: str | None = None


@dataclasses.dataclass
class Announcement:
    """What listings of one owner promised: kept for the life of the mount."""

    shape: str
    config_sizes: dict[str, int]
    blocks: dict[str, int]  # disk id -> st_blocks
    mtime_ns: int  # the images'; the configuration files' is ``config_time_ns``
    running: bool  # mtime is a session time (renewed after each session) vs. a stable one
    #: A down owner's: the configuration files' mtime (newer than the images', same second).
    config_mtime_ns: int = 0
    #: A down owner's: the second its times rest on, the engine's date for its data
    #: (stop or creation time) and the data fingerprint they were announced for.
    second_s: int = 0
    base_s: int = 0
    data_fp: str = ""
    #: what the data the date rests on looked like (``_data_summary``), for the log
    data_seen: str = ""

    @property
    def config_time_ns(self) -> int:
        """The configuration files' mtime: always newer than the images' (``set_times_ns``)."""
        if not self.running and self.config_mtime_ns:
            return self.config_mtime_ns
        return self.mtime_ns + _CONFIG_AFTER_IMAGES_NS

    def date_down(
        self, data: OwnerData, now_ns: int, *, settled: bool, last: SetDate | None = None
    ) -> None:
        """Set a down VM's or template's times from ``data`` (see ``set_times_ns``).

        They rest on the engine's date for its data: the stop time (a down VM's
        disks change when it runs, and it gets a new stop time when it stops
        again) or the creation time. A change that date does not show (the data
        fingerprint moved, e.g. an upload into a disk, a snapshot operation) is
        dated when this mount noticed it, a second before ``now_ns``, so it is
        never in the future and always newer than what was announced before.
        Data that is not ``settled`` (a snapshot of this mount's own read is being
        taken or removed, a disk is locked) keeps the times announced before: its
        volumes and sizes are in flux and return to what they were. ``last``: what
        the last mount showed (``SetDates``), where a mount that has not dated the
        owner yet goes on from.
        """
        if not self.running and not self.data_fp and last is not None:
            self.data_fp, self.second_s, self.base_s = last.data_fp, last.second_s, last.base_s
            if not settled:  # in flux: the last mount's date until it settles
                self.mtime_ns, self.config_mtime_ns = set_times_ns(
                    self.second_s, self.data_fp, config_fingerprint(data)
                )
                return
        if not settled and self.data_fp:
            return
        base_s = set_second(entity_stop_time(data) or data.entity.creation_time)
        data_fp = data_fingerprint(data)
        if self.running or not self.data_fp:
            second = base_s
        elif data_fp == self.data_fp and base_s == self.base_s:
            second = self.second_s
        elif base_s > self.base_s:
            second = base_s
        else:
            second = max(self.second_s + 1, base_s, now_ns // 1_000_000_000 - 1)
        self.second_s, self.base_s, self.data_fp = second, base_s, data_fp
        self.mtime_ns, self.config_mtime_ns = set_times_ns(
            second, data_fp, config_fingerprint(data)
        )
        self.running = False


def _data_summary(data: OwnerData) -> str:
    """What a down owner's date rests on, for the log: status, stop time, each disk's volume,
    allocation and state."""
    disks = ", ".join(
        f"{a.disk.alias}: volume {a.disk.image_id} {a.disk.actual_size} bytes {a.disk.status}"
        for a in data.attachments
    )
    return f"{data.entity.status}, stopped {entity_stop_time(data)}; {disks}"


def _disk_blocks(disk: Disk) -> int:
    if disk.provisioned_size <= 0:
        return 0
    return max(1, blocks_for(disk.actual_size or 0))


def _needed_sizes(data: OwnerData, contents: Mapping[str, bytes], *, full: bool) -> dict[str, int]:
    """The length each configuration file must be announced for: the manifest's own; the
    OVF's and XML's bound from the listing (``config_size_bounds``), or their real length
    when ``full`` data (with OVF and XML) was fetched and it is longer."""
    needed = {n: len(c) for n, c in contents.items()}
    for n, bound in config_size_bounds(data).items():
        needed[n] = max(bound, needed[n]) if full else bound
    return needed


def _padded(
    contents: Mapping[str, bytes],
    ann: Announcement,
    owner: Owner,
    note: Callable[[str], None],
) -> dict[str, bytes | RhvfsError]:
    """Each configuration file padded to its announced size, keyed by its file key; one that
    outgrew its size becomes the error its reads raise (and is noted)."""
    padded: dict[str, bytes | RhvfsError] = {}
    for n, c in contents.items():
        try:
            padded[ConfigKey(n).encode()] = pad_to(
                c, ann.config_sizes[n], what=f"{n} of {owner.name}"
            )
        except RhvfsError as e:
            note(str(e))
            padded[ConfigKey(n).encode()] = e
    return padded


def _image_entries(
    ann: Announcement, disks: list[Disk], names: Mapping[str, str]
) -> list[SetEntry]:
    """One entry per disk image, named by ``names`` (disk id -> file name)."""
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
        limits: EngineLimits | None = None,
        kept_snapshots: Callable[[], Collection[str]] | None = None,
        dates: SetDates | None = None,
    ) -> None:
        self.engine = engine
        #: the snapshots kept on purpose (the incremental chain's), which gc must not remove
        self._kept_snapshots = kept_snapshots
        self._owner_data = OwnerDataSource(engine)
        self.config = config
        #: the mount's limits on sessions and transfers, shared with the other manager
        self.limits = limits if limits is not None else EngineLimits.from_config(config)
        self.journal = journal
        self._process = procid.current()
        self._opener, self._reader_factory = default_data_plane(
            config, imageio_opener=imageio_opener, reader_factory=reader_factory
        )
        self._gc_on_start = gc_on_start
        self._sessions: SessionRegistry[BackupSession] = SessionRegistry(what="the backup manager")
        self.cleanups = PendingCleanups(config, journal=journal)
        self._announced: dict[str, Announcement] = {}
        # owner id -> (the listing data it was announced from, that announcement, its disks):
        # listing @rhv/ and disks/ again from unchanged data announces nothing new.
        self._listed: dict[str, tuple[Any, Announcement, list[Disk]]] = {}
        self._bytes_read_closed = 0
        #: down owners' dates, kept for the next mount (next to the journal)
        self._dates = dates if dates is not None else SetDates.beside(journal.path)

    # -- service --------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; on cancellation every session ends cleanly (shielded), and
        what their cleanups left gets one last try."""
        try:
            await serve(
                self._sessions,
                journal=self.journal,
                cleanups=self.cleanups,
                on_start=self._startup_gc if self._gc_on_start else None,
                task_status=task_status,
            )
        finally:
            self._dates.flush()

    async def _startup_gc(self) -> None:
        try:
            for line in await self.collect_garbage():
                log.info("gc: %s", line)
        except (RhvfsError, OSError) as e:
            self._note_error(None, f"cleanup of leftovers failed: {e}")
        except Exception as e:  # a bug in cleanup must not take the mount down
            log.exception("cleanup of leftovers failed")
            self._note_error(None, f"cleanup of leftovers failed: {internal_error(e)}")

    # -- listings ---------------------------------------------------------------

    async def list_set(self, owner: Owner) -> list[SetEntry]:
        """The files of ``owner``'s ``@rhv/``; does not start a session."""
        session = self._sessions.get(owner.id)
        if session is not None and session.entries and session.state in ("ready", "closing"):
            return list(session.entries)  # frozen: stable while the session lives
        ann, disks = await self._listing_summary(owner)
        return self._set_entries(ann, disks)

    async def list_disk_files(self, owner: Owner) -> list[SetEntry]:
        """The files of ``vms/<vm>/disks/``: ``<alias>.raw``, same data as the set's images."""
        session = self._sessions.get(owner.id)
        if session is not None and session.entries and session.state in ("ready", "closing"):
            return list(session.disk_entries)
        ann, disks = await self._listing_summary(owner)
        return self._disk_entries(ann, disks)

    def _quiet(self, owner_id: str) -> int | None:
        """None while this mount acts on the owner (a session of it lives, or a cleanup of one
        is pending: its snapshot or backup is still on the engine); otherwise how many sessions
        it has had. Equal answers before and after an await: nothing of this mount's touched
        the owner's volumes in between."""
        if self.cleanups.involves(owner_id):
            return None
        return self._sessions.activity(owner_id)

    async def _listing_summary(self, owner: Owner) -> tuple[Announcement, list[Disk]]:
        """``_announce_summary`` of the owner's listing summary. The summary is settled data
        only when this mount left the owner alone while it was taken: one taken while a read's
        snapshot existed (or was merged away) shows the disks in the middle of it."""
        before = self._quiet(owner.id)
        data = await self._owner_data.summary(owner)
        quiet = before is not None and before == self._quiet(owner.id)
        return self._announce_summary(owner, data, quiet=quiet)

    def _announce_summary(
        self, owner: Owner, data: OwnerData, *, quiet: bool
    ) -> tuple[Announcement, list[Disk]]:
        """``_announce_listing`` of a listing's summary, skipped when the summary equals the
        one the current announcement came from (a running VM's time is kept either way).
        Only a summary taken while the mount left the owner alone (``quiet``) is remembered
        as that one: the same data seen settled later must still date the set."""
        key = (
            data.entity,
            data.attachments,
            data.nics,
            tuple(sorted(data.cluster_names.items())),
            tuple(sorted(data.storage_domain_names.items())),
        )
        memo = self._listed.get(owner.id)
        if memo is not None and memo[0] == key and self._announced.get(owner.id) is memo[1]:
            return memo[1], memo[2]
        ann, disks = self._announce_listing(owner, data, full=False, quiet=quiet)
        if quiet:
            self._listed[owner.id] = (key, ann, disks)
        else:
            self._listed.pop(owner.id, None)
        return ann, disks

    def _announce_listing(
        self, owner: Owner, data: OwnerData, *, full: bool, quiet: bool
    ) -> tuple[Announcement, list[Disk]]:
        """Announce (or keep) the sizes and time of ``owner``'s set from ``data``: a listing's
        summary (``full`` False: no OVF or XML; their bounds size them) or a read's data.
        ``quiet``: the mount left the owner alone while ``data`` was taken (``_quiet``)."""
        disks = image_disks(data)
        names = {d.id: image_file_name(d.alias, d.id) for d in disks}
        # As long as any read's manifest can be: the longest method, with a lineage.
        manifest = self._view_manifest(
            data,
            [dataclasses.replace(d, image_id=d.image_id or NO_ID) for d in disks],
            names,
            read_id=_PLACEHOLDER_READ_ID,
            method="snapshot",
            lineage=True,
            now=datetime.now(UTC),
        )
        contents = {OVF_NAME: data.ovf, XML_NAME: data.xml, MANIFEST_NAME: manifest}
        needed = _needed_sizes(data, contents, full=full)
        shape = shape_fingerprint(data)
        ann = self._announced.get(owner.id)
        if (
            ann is None
            or ann.shape != shape
            or any(n > ann.config_sizes.get(name, -1) for name, n in needed.items())
        ):
            sizes = {name: announced_size(n) for name, n in needed.items()}
            if ann is not None and ann.shape == shape:
                sizes = {n: max(s, ann.config_sizes.get(n, 0)) for n, s in sizes.items()}
            if ann is None:
                ann = Announcement(
                    shape=shape, config_sizes=sizes, blocks={}, mtime_ns=0, running=False
                )
            else:  # its times go on from the old ones
                ann = dataclasses.replace(
                    ann, shape=shape, config_sizes=sizes, blocks=dict(ann.blocks)
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
            settled = quiet and all((a.disk.status or "ok") == "ok" for a in data.attachments)
            before = (ann.data_fp, ann.second_s)
            ann.date_down(data, time.time_ns(), settled=settled, last=self._dates.get(owner.id))
            if ann.data_fp != before[0] or not ann.data_seen:
                seen = _data_summary(data)
                if before[0] and ann.data_fp != before[0]:
                    log.info(
                        "%s %s: its data changed (now %s; was %s), its set is dated %s now "
                        "(was %s)",
                        owner.kind,
                        owner.name,
                        seen,
                        ann.data_seen or "from the last mount",
                        ann.second_s,
                        before[1],
                    )
                ann.data_seen = seen
            if ann.data_fp:
                self._dates.put(owner.id, SetDate(ann.data_fp, ann.second_s, ann.base_s))
        return ann, disks

    async def config_view(self, owner: Owner, *, read_id: str, via_backup: bool) -> SetView:
        """The configuration and listings of one read of ``owner``'s set, taken now.

        Creates nothing on the engine (no snapshot, no backup): a set read only for its
        configuration costs the engine a few GETs, and works for suspended VMs too.
        ``via_backup``: the data will come from an engine backup with id ``read_id``
        (the manifest then carries the set's lineage: ``set_id`` = ``read_id``).
        """
        data = await self._owner_data.fetch(owner)
        ann, disks = self._announce_listing(owner, data, full=True, quiet=False)
        method = "template" if owner.kind == "template" else "backup" if via_backup else "snapshot"
        names = {d.id: image_file_name(d.alias, d.id) for d in disks}
        now = datetime.now(UTC)
        manifest = self._view_manifest(
            data, disks, names, read_id=read_id, method=method, lineage=via_backup, now=now
        )
        contents = {OVF_NAME: data.ovf, XML_NAME: data.xml, MANIFEST_NAME: manifest}
        padded = _padded(contents, ann, owner, lambda m: self._note_error(owner, m))
        return SetView(
            read_id=read_id,
            method=method,
            entries=tuple(self._set_entries(ann, disks)),
            disk_entries=tuple(self._disk_entries(ann, disks)),
            contents=padded,
            image_ids={d.id: d.image_id for d in disks if d.image_id},
            shape=shape_fingerprint(data),
            configuration_time=now.isoformat(),
            refused=(
                BACKUP_REFUSED_STATES[status].format(name=owner.name)
                if owner.kind == "vm"
                and (status := data.entity.status or "") in BACKUP_REFUSED_STATES
                else None
            ),
        )

    def _view_manifest(
        self,
        data: OwnerData,
        disks: list[Disk],
        names: dict[str, str],
        *,
        read_id: str,
        method: str,
        lineage: bool,
        now: datetime,
    ) -> bytes:
        manifest = build_manifest(
            data,
            disks=disks,
            file_names=names,
            snapshot_id=None,
            backup_time=now,
            session_id=read_id,
        )
        return dataclasses.replace(
            manifest,
            point_in_time=PointInTime(
                read_id=read_id, method=method, configuration_time=now.isoformat()
            ),
            lineage=(
                SetLineage(set_id=read_id, backup_id=read_id, full_set_id=read_id)
                if lineage
                else None
            ),
        ).to_json()

    def _set_entries(self, ann: Announcement, disks: list[Disk]) -> list[SetEntry]:
        entries = [
            SetEntry(
                name=n,
                key=ConfigKey(n).encode(),
                size=ann.config_sizes[n],
                blocks=blocks_for(ann.config_sizes[n]),
                mtime_ns=ann.config_time_ns,
            )
            for n in CONFIG_NAMES
        ]
        names = {d.id: image_file_name(d.alias, d.id) for d in disks}
        return entries + _image_entries(ann, disks, names)

    def _disk_entries(self, ann: Announcement, disks: list[Disk]) -> list[SetEntry]:
        names = disks_dir_names([(d.id, d.alias) for d in disks])
        return _image_entries(ann, disks, names)

    def _freeze(self, session: BackupSession) -> None:
        """Fix a starting session's entries and padded config contents (BackupSessionDeps.freeze)."""
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
            sizes = {
                n: announced_size(x) for n, x in _needed_sizes(data, contents, full=True).items()
            }
            if ann is None:
                ann = Announcement(
                    shape=shape,
                    config_sizes=sizes,
                    blocks={},
                    mtime_ns=session.started_ns,
                    running=True,
                )
            else:
                ann = dataclasses.replace(
                    ann,
                    shape=shape,
                    config_sizes=sizes,
                    blocks=dict(ann.blocks),
                    mtime_ns=ann.mtime_ns or session.started_ns,
                )
            self._announced[owner.id] = ann
        if not ann.mtime_ns:
            ann.mtime_ns = session.started_ns
        for d in session.disks:
            ann.blocks.setdefault(d.id, _disk_blocks(live.get(d.id, d)))
        padded = _padded(contents, ann, owner, session.note_error)
        disks = [
            dataclasses.replace(d, alias=d.alias or live[d.id].alias) if d.id in live else d
            for d in session.disks
        ]
        session.contents = padded
        session.entries = self._set_entries(ann, disks)
        session.disk_entries = self._disk_entries(ann, disks)
        session.entries_by_key = {e.key: e for e in session.entries}

    # -- handles ----------------------------------------------------------------

    async def open(
        self,
        owner: Owner,
        key: str,
        *,
        read_id: str | None = None,
        expect_images: Mapping[str, str] | None = None,
        slot: Slot | None = None,
    ) -> int:
        """Start or join ``owner``'s session; return a handle for ``key``.

        With ``read_id``, only that read's session serves (see the module docstring);
        ``expect_images`` (disk id -> volume id, from the read's ``SetView``) is checked
        against the session's snapshot once: another volume means the VM changed between
        the read's configuration and its data, and the read is lost. ``slot``: a place
        among the mount's sessions the caller reserved (granted); it is this call's now: a
        session started here takes it, else (joined, or failed first) it is released.
        """
        taken = False

        def new() -> BackupSession:
            nonlocal taken
            session = self._new_session(owner, read_id, slot=slot)  # may refuse (ended read)
            taken = True
            return session

        try:
            self._sessions.check_running()
            self._sessions.check_read(read_id, owner)
            if owner.id not in self._announced:
                await self.list_set(owner)  # sizes and times are fixed by a listing first
            # a closing session is waited for, then a fresh one starts
            session = await self._sessions.acquire(
                owner.id,
                new=new,
                usable=lambda s: read_id is None or (s.read_id == read_id and not s.retiring),
                make_way=self._sessions.retire,
            )
        finally:
            if slot is not None and not taken:
                slot.release()
        if read_id is not None and expect_images is not None and not session.verified:
            changed = [
                f"disk {d.id}: volume {expect_images.get(d.id)} then {d.image_id}"
                for d in session.disks
                if expect_images.get(d.id) != d.image_id
            ]
            if changed:
                reason = (
                    f"{owner.kind} {owner.name} changed between reading its configuration "
                    f"and its disks ({'; '.join(changed)})"
                )
                self._note_error(owner, reason)
                self._sessions.end_read(read_id, reason)
                self._sessions.retire(session)
                raise PointInTimeLost(f"{reason}; run the backup again")
            session.verified = True
        if key not in session.entries_by_key:
            raise NotFound(f"{key} is not part of the backup set of {owner.name}")
        handle = self._sessions.handles.add((session, key))
        session.add_handle(handle, key)
        return handle

    def end_read(self, owner: Owner, read_id: str, *, reason: str) -> None:
        """Read ``read_id`` is over (complete, or a newer read began): its session closes
        as soon as no handle is open, and the read never gets a session again."""
        self._sessions.end_read(read_id, reason)
        session = self._sessions.get(owner.id)
        if session is not None and session.read_id == read_id:
            self._sessions.retire(session)

    def read_lost(self, read_id: str) -> str | None:
        """Why read ``read_id`` can get no data any more (its session ended: it gave its
        place to a queued session, broke, or the read was ended), or None."""
        return self._sessions.ended_read(read_id)

    async def settled(self, owner: Owner) -> None:
        """Until the owner's ending session (if any) has cleaned up (see the registry)."""
        await self._sessions.settled(owner.id)

    def read_ended(self, owner: Owner) -> None:
        """A read of ``owner``'s set ended (whoever served its data): a running guest's data
        moved on, so later listings show a new time and tools that key on mtime read again."""
        ann = self._announced.get(owner.id)
        if ann is not None and ann.running:
            ann.mtime_ns = time.time_ns()

    def _new_session(
        self, owner: Owner, read_id: str | None = None, *, slot: Slot | None = None
    ) -> BackupSession:
        # A read whose session ended while this open waited for it to close (it gave its
        # place to a queued session, or broke) never gets a second one: that would be
        # another point in time under the same read, mixed silently.
        self._sessions.check_read(read_id, owner)
        deps = BackupSessionDeps(
            engine=self.engine,
            config=self.config,
            journal=self.journal,
            process=self._process,
            imageio_opener=self._opener,
            reader_factory=self._reader_factory,
            cleanups=self.cleanups,
            limits=self.limits,
            fetch_owner_data=self._owner_data,
            freeze=self._freeze,
            on_closed=self._session_closed,
            on_error=self._note_error,
        )
        session = BackupSession(owner, deps, read_id=read_id, slot=slot)
        log.info("session %s of %s %s starting", session.session_id, owner.kind, owner.name)
        return session

    async def read(self, handle: int, offset: int, size: int) -> bytes | memoryview:
        """Exactly the bytes at ``offset``; short only at EOF; raises on final failure."""
        return await self._sessions.read(handle, offset, size)

    async def release(self, handle: int) -> None:
        """Close a handle; the last one starts the session's idle timer (read-bound sessions:
        transfers released after the grace period, the session after ``read_idle_limit``)."""
        item = self._sessions.handles.pop(handle)
        if item is None:
            return
        session = item[0]
        await session.remove_handle(handle)
        if session.handles:
            return
        if session.retiring:
            session.request_close()
        elif session.state in ("ready", "broken"):
            if session.read_id is None:
                session.schedule_close(self.config.grace_period)
            else:
                session.schedule_close(
                    self.config.read_idle_limit, park_after_s=self.config.grace_period
                )

    def _session_closed(self, session: BackupSession) -> None:
        self._sessions.forget(session)
        self._bytes_read_closed += session.bytes_read
        ann = self._announced.get(session.owner.id)
        if ann is not None and ann.running:
            # A running guest's data moved on: later listings (and the next session) show
            # a new time, so tools that key on mtime read the images again.
            ann.mtime_ns = time.time_ns()
        log.info("session %s of %s closed", session.session_id, session.owner.name)

    # -- reporting and cleanup ------------------------------------------------

    def _note_error(self, owner: Owner | None, message: str) -> None:
        self._sessions.notes.add(owner, message)

    def status(self) -> dict[str, Any]:
        """For ``/.rhvfs/status.json``: sessions, totals, cleanups retried, recent errors."""
        live = self._sessions.sessions()
        return {
            "sessions": [s.status() for s in live],
            "pending_cleanups": self.cleanups.status(),
            "totals": {
                "sessions_active": len(live),
                "sessions_started": self._sessions.started,
                "handles_open": len(self._sessions.handles),
                "bytes_read": self._bytes_read_closed + sum(s.bytes_read for s in live),
            },
            "errors": self._sessions.notes.list(),
            **self.limits.status(),
        }

    async def collect_garbage(self, *, dry_run: bool = False) -> list[str]:
        """Remove leftovers of dead mounts of this installation (the journal's state
        directory); never anything else. Returns what it did and what it left alone."""
        live = {s.session_id for s in self._sessions.sessions()}
        return await gc_mod.collect_garbage(
            self.engine,
            self.journal,
            config=self.config,
            dry_run=dry_run,
            live_session_ids=live,
            installation=self.journal.installation,
            kept_snapshot_ids=frozenset(self._kept_snapshots()) if self._kept_snapshots else (),
        )
