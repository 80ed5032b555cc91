"""``SetRouter``: one ``BackupSets`` face over full sets and incremental sets, and the reads of them.

The VFS talks to one object (rhvfs/sessions/CONTRACT.md). This router passes
``@rhv/`` and ``disks/`` calls to the ``BackupManager`` (or, for a VM that is up
with an incremental-enabled disk, to the ``IncrementalManager``'s full engine
backup) and the calls of ``@rhv-incremental/``, ``@rhv-differential/`` and
``@rhv-since/<cp>/`` to the ``IncrementalManager``, and keeps one handle
namespace over both (by the file's key: ``rhvfs.backupset.FileKey``): a
``HandleTable`` of its own, as each manager keeps one in its
``SessionRegistry``.

It is also where a *read of a set* is decided (``core._setread``; README "One
point in time per backup"): per owner one ``SetReads`` book covers ``@rhv/`` and
``disks/``. An open that begins a read takes the set's configuration
(``BackupManager.config_view``) and nothing else: configuration files are
served from that view, so reading only them creates nothing on the engine.
The first image read in the read starts its one snapshot or engine backup
(id = the read id), checked against the view's volumes (an image opened and
closed without a read -- borg opens every file to fstat it -- starts nothing); a read that completes
ends its session at once, so the next tool run gets a new point in time; an
open that would mix two points in time fails with ``PointInTimeLost``
(ESTALE). A read that begins with a ``disks/`` file is snapshot-based (browsing
a disk never creates a checkpoint). For incremental set directories the set id
in every file name already binds a read to one engine backup; a file opened
again after it was read completely ends that set (the next listing starts a
new one) and is refused.

With mount-wide limits (``core._limits``) the place among ``max_sessions`` that
an image's session will hold is reserved at the image's open, not at its first
read: a read waiting for a place inside a FUSE read would fill the kernel's
background requests (read-ahead, capped) and starve the read-ahead of the
sessions that hold the places. One reservation per read (``_Place``, shared by
the images of the read opened before its session started, and shown in
status.json as a queued session): the first image read hands the granted place
to the session it starts (``slot=``); a read whose session already runs
reserves nothing; the reservation is released when the last image handle
counting on it closes without a read. A reserved place is busy while such a
handle is open (an open handle means the tool is about to read).

Invariants between awaits: every router handle of a full-view file belongs to
exactly one ``SetRead`` and counts in it; a read's binding (view and target)
exists from its beginning until it has ended and its session was told.

Each read that started a session posts its start, its end and its failure to the
engine's events (``core._events.EngineEvents``, when given): severity normal for a
start and a complete read, warning for a read that ended before every file was
read, error for a failure.

Must not: hold sessions (the managers do) or talk to the engine itself.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import trio

from rhvfs.backupset import (
    ConfigKey,
    DiskKey,
    DisksDirKey,
    SetFileKey,
    SetKind,
    disk_id_of_key,
    parse_key,
)
from rhvfs.config import Config
from rhvfs.errors import NotFound, PointInTimeLost, RhvfsError, SetBusy, VmStateError
from rhvfs.sessions.core._events import EngineEvents
from rhvfs.sessions.core._limits import Limiter, Slot
from rhvfs.sessions.core._model import Owner, SetEntry
from rhvfs.sessions.core._procid import reader_identity
from rhvfs.sessions.core._progress import sum_progress
from rhvfs.sessions.core._registry import HandleTable, Notes
from rhvfs.sessions.core._setread import ReaderId, ReadState, SetRead, SetReads, Verdict
from rhvfs.sessions.full._manager import SetView
from rhvfs.sessions.incremental._manager import IncrementalManager

log = logging.getLogger(__name__)


class FullSets(Protocol):
    async def list_set(self, owner: Any) -> list[Any]: ...
    async def list_disk_files(self, owner: Any) -> list[Any]: ...
    async def config_view(self, owner: Any, *, read_id: str, via_backup: bool) -> SetView: ...
    async def open(
        self,
        owner: Any,
        key: str,
        *,
        read_id: str | None = None,
        expect_images: Mapping[str, str] | None = None,
        slot: Slot | None = None,
    ) -> int: ...
    def end_read(self, owner: Any, read_id: str, *, reason: str) -> None: ...
    def read_lost(self, read_id: str) -> str | None: ...
    def read_ended(self, owner: Any) -> None: ...
    async def settled(self, owner: Any) -> None: ...
    async def read(self, handle: int, offset: int, size: int) -> bytes | memoryview: ...
    async def release(self, handle: int) -> None: ...
    def status(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class _Binding:
    """What a read of a full view is bound to."""

    owner: Owner
    view: SetView
    via_backup: bool
    names: dict[str, str]  # key -> file name, for status
    session_started: bool = False
    #: an image read is starting the session now (an open meanwhile reserves nothing)
    session_starting: bool = False
    failure_posted: bool = False
    #: the place reserved for the session this read will start (``_reserve``)
    place: _Place | None = None


@dataclasses.dataclass
class _Place:
    """A place among the mount's sessions reserved for a read's session, at an image's
    open; counted by the image handles (and opens waiting) that would start it."""

    slot: Slot
    users: int = 0
    #: given to the session the read started (or to the manager that tried): not ours
    handed: bool = False


@dataclasses.dataclass
class _Open:
    """One router handle."""

    owner: Owner
    key: str
    target: Any | None  # the manager serving it; None for configuration from a view
    inner: int  # the manager's handle (or 0)
    book: SetReads
    read: SetRead
    book_handle: int
    content: bytes | RhvfsError | None = None
    #: An image whose session is asked for at its first read, not at its open
    #: (``_start``): tools that open every file to fstat it and then skip it (borg)
    #: create nothing on the engine. None once started (or for configuration).
    pending: _Pending | None = None


@dataclasses.dataclass
class _Pending:
    """What an image handle's first read asks its manager for."""

    disk_key: str
    binding: _Binding
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    #: the reservation this handle counts on (None: none was needed)
    place: _Place | None = None


class SetRouter:
    """Full sets from ``full``, incremental/differential/since sets from ``incremental``."""

    def __init__(
        self,
        full: FullSets,
        incremental: IncrementalManager,
        *,
        config: Config,
        full_sets_via_backup: bool = False,
        events: EngineEvents | None = None,
    ) -> None:
        self.full = full
        self.events = events
        self.incremental = incremental
        self.config = config
        #: serve the data of @rhv/ of VMs with incremental-enabled disks from a full engine
        #: backup, so that reading @rhv/ establishes the chain's checkpoint (issue 5 item 2).
        self.full_sets_via_backup = full_sets_via_backup
        self._handles: HandleTable[_Open] = HandleTable()
        self._books: dict[str, SetReads] = {}  # owner id -> reads of @rhv/ + disks/
        self._set_books: dict[str, SetReads] = {}  # owner id -> reads of incremental sets
        self._bindings: dict[str, _Binding] = {}  # read id -> binding
        self._generations: dict[str, int] = {}  # owner id -> reads of its set that ended
        self._notes = Notes()
        self._sets_started: set[str] = set()  # incremental set ids whose start was posted

    # -- listings ---------------------------------------------------------------

    async def list_set(self, owner: Any) -> list[Any]:
        """``@rhv/``: while a read that has started its session lives, its frozen entries;
        else the manager's listing (a read of configuration alone, or whose images were
        only opened, holds nothing on the engine, and its times must not hide a change
        from the next run for the rest of ``read_idle_limit``)."""
        binding = self._live_binding(owner)
        if binding is not None:
            return list(binding.view.entries)
        return await self.full.list_set(owner)

    async def list_disk_files(self, owner: Any) -> list[Any]:
        """``disks/``: the same data as the set's images, keys marked ``disks/``."""
        binding = self._live_binding(owner)
        entries = (
            binding.view.disk_entries
            if binding is not None
            else await self.full.list_disk_files(owner)
        )
        return [dataclasses.replace(e, key=DisksDirKey(_disk_id(e.key)).encode()) for e in entries]

    async def list_incremental(
        self, owner: Owner, kind: SetKind, since: str | None = None
    ) -> list[SetEntry]:
        """Files of ``@rhv-<kind>/`` (or ``@rhv-since/<since>/``); starts the set's backup."""
        before = self.incremental.live_set(owner)
        try:
            entries = await self.incremental.list_set(owner, kind, since)
        except RhvfsError as e:
            if not isinstance(e, NotFound):  # a since-checkpoint rhvfs never recorded: no backup
                self._post(owner, f"{kind} backup", f"failed: {e}", "error")
            raise
        after = self.incremental.live_set(owner)
        if after is not None and after is not before:
            self._sets_started.add(after.set_id)
            self._post(owner, f"{kind} backup", f"started (set {after.set_id})", "normal")
        return entries

    async def since_checkpoints(self, owner: Owner) -> list[str]:
        """Names under ``@rhv-since/``: checkpoints of completed sets rhvfs recorded."""
        return self.incremental.since_checkpoints(owner)

    def is_being_read(self, owner: Any) -> bool:
        """A read of ``owner``'s ``@rhv/``/``disks/`` lives now (its attributes are stable)."""
        book = self._books.get(owner.id)
        return book is not None and book.live is not None

    def set_generation(self, owner: Any) -> int:
        """Moves whenever a read of ``owner``'s set ended: its listing (times) may differ."""
        return self._generations.get(owner.id, 0)

    def _live_binding(self, owner: Any) -> _Binding | None:
        """The binding of the owner's live read, if that read started its session."""
        book = self._books.get(owner.id)
        if book is None:
            return None
        self._expire(owner, book)
        live = book.live
        binding = self._bindings.get(live.read_id) if live is not None else None
        return binding if binding is not None and binding.session_started else None

    # -- handles ------------------------------------------------------------------

    async def open(self, owner: Any, key: str, *, reader_pid: int = 0) -> int:
        """Open a file of a set for the process ``reader_pid`` (0: unknown)."""
        reader = reader_identity(reader_pid) if reader_pid > 0 else None
        parsed = parse_key(key)
        if isinstance(parsed, SetFileKey):
            return await self._open_set_file(owner, key, parsed, reader)
        return await self._open_full_view(owner, key, reader)

    async def _open_full_view(self, owner: Owner, key: str, reader: ReaderId | None) -> int:
        book = self._books.get(owner.id)
        if book is None:
            book = self._books[owner.id] = SetReads(idle_limit_s=self.config.read_idle_limit)
        self._expire(owner, book)
        verdict, read, why = book.verdict(key, reader)
        if verdict is Verdict.STALE:
            self._notes.add(owner, why, level="error")
            log.warning("refused %s of %s %s: %s", key, owner.kind, owner.name, why)
            raise PointInTimeLost(why)
        if verdict is Verdict.BEGIN:
            read = await self._begin(owner, book, key)
        assert read is not None
        binding = self._bindings[read.read_id]
        parsed = parse_key(key)
        if isinstance(parsed, ConfigKey):
            content = binding.view.contents.get(key)
            if content is None:
                raise PointInTimeLost(f"{key} is not part of the set of {owner.name}")
            h = book.opened(read, key, reader)
            return self._handles.add(_Open(owner, key, None, 0, book, read, h, content))
        if binding.view.refused is not None:
            # A state no backup starts from (suspended): the open fails, not a later read.
            self._notes.add(owner, binding.view.refused, level="error")
            raise VmStateError(binding.view.refused)
        # Counted in the read at once: the read cannot complete (and end its session)
        # while this handle is open. Its session is asked for at its first read.
        h = book.opened(read, key, reader)
        target = self.incremental if binding.via_backup else self.full
        pending = _Pending(DiskKey(_disk_id(key)).encode(), binding)
        try:
            pending.place = await self._reserve(binding, read)
        except BaseException:  # the wait was interrupted (the tool gave up): not opened
            if book.released(read, h):
                self._ended(owner, read)
            raise
        return self._handles.add(_Open(owner, key, target, 0, book, read, h, pending=pending))

    def _session_limiter(self, binding: _Binding) -> Limiter | None:
        """The limiter of the manager that will serve ``binding``'s images (None: none)."""
        limits = (
            self.incremental.limits if binding.via_backup else getattr(self.full, "limits", None)
        )
        return limits.sessions if limits is not None else None

    async def _reserve(self, binding: _Binding, read: SetRead) -> _Place | None:
        """Wait for the place of the session ``read`` will start (shared by its images);
        None when its session runs already or nothing limits sessions."""
        limiter = self._session_limiter(binding)
        if limiter is None or binding.session_started or binding.session_starting:
            return None
        place = binding.place
        if place is None or place.handed:
            owner = binding.owner
            label: dict[str, Any] = {
                "owner": {"kind": owner.kind, "id": owner.id, "name": owner.name},
                "session_id": read.read_id,
                "read_id": read.read_id,
            }
            if binding.via_backup:
                label["set_kind"] = str(SetKind.FULL)
            place = binding.place = _Place(limiter.request(label))
            if place.slot.state == "queued":
                log.info(
                    "read %s of %s %s waits for a place (max_sessions %d), position %s",
                    read.read_id,
                    owner.kind,
                    owner.name,
                    limiter.limit,
                    place.slot.position,
                )
        place.users += 1
        try:
            await place.slot.wait()
        except BaseException:
            self._unreserve(binding, place)
            raise
        return place

    def _unreserve(self, binding: _Binding, place: _Place | None) -> None:
        """A handle (or an open) that counted on ``place`` no longer does: the last one
        releases it unless it went to a session."""
        if place is None:
            return
        place.users -= 1
        if place.users > 0 or place.handed:
            return
        place.slot.release()
        if binding.place is place:
            binding.place = None

    def _hand_over(self, binding: _Binding) -> Slot | None:
        """The read's granted reservation, for the session its first image read starts."""
        place = binding.place
        if place is None or place.handed or place.slot.state != "held":
            return None
        place.handed = True
        binding.place = None
        return place.slot

    async def _start(self, item: _Open) -> None:
        """An image handle's first read: start or join its read's session (one snapshot or
        engine backup), checked against the read's view. A failure leaves the handle
        open and not started (the tool gets the error on this read); a lost point in
        time ends the read."""
        pending = item.pending
        assert pending is not None
        async with pending.lock:
            if item.pending is None:
                return  # a concurrent read started it
            owner, read, binding = item.owner, item.read, pending.binding
            if read.state is not ReadState.LIVE:
                # A newer read began (or this one ended) before this file was read: its
                # session would retire the newer read's; refuse instead of mixing.
                raise PointInTimeLost(
                    f"read {read.read_id} of {owner.kind} {owner.name} is no longer live "
                    f"({read.state.value}) and had not read {item.key} yet; run the backup again"
                )
            # A place reserved at the open goes to the manager (a session started there
            # takes it; one joined means it is released): the read never waits for one.
            slot = None if binding.session_started else self._hand_over(binding)
            extra: dict[str, Any] = {"slot": slot} if slot is not None else {}
            starting = not binding.session_starting
            binding.session_starting = True
            try:
                if binding.via_backup:
                    announced = list(binding.view.entries)
                    inner = await self.incremental.open_full(
                        owner, pending.disk_key, announced, read_id=read.read_id, **extra
                    )
                else:
                    inner = await self.full.open(
                        owner,
                        pending.disk_key,
                        read_id=read.read_id,
                        expect_images=binding.view.image_ids,
                        **extra,
                    )
            except BaseException as e:
                if starting:
                    binding.session_starting = False
                if isinstance(e, Exception) and not binding.failure_posted:
                    binding.failure_posted = True
                    self._event(binding, read, f"failed: {e}", "error")
                if isinstance(e, PointInTimeLost):
                    self._lose(owner, item.book, read, str(e))
                raise
            if not binding.session_started:
                self._event(binding, read, f"started ({binding.view.method})", "normal")
            item.inner, item.pending = inner, None
            binding.session_started = True
            self._unreserve(binding, pending.place)

    async def _begin(self, owner: Owner, book: SetReads, key: str) -> SetRead:
        """A new read of ``owner``'s set: take its configuration now, create nothing."""
        old = book.live
        via_backup = False
        if not isinstance(parse_key(key), DisksDirKey) and self.full_sets_via_backup:
            via_backup = await self.incremental.backs_up_with_checkpoints(owner)
        read_id = str(uuid.uuid4())
        # The previous read's cleanup (a snapshot merged, a backup finalized) changes the
        # owner's volumes: the configuration of this read is taken after it.
        with trio.move_on_after(max(self.config.system_timeout, 1.0)) as waiting:
            await self.full.settled(owner)
            await self.incremental.settled(owner)
        if waiting.cancelled_caught:
            raise SetBusy(
                f"an earlier read of {owner.name}'s set is still open (another backup run "
                "reading it); try again when it has finished"
            )
        view = await self.full.config_view(owner, read_id=read_id, via_backup=via_backup)
        sizes = {e.key: e.size for e in view.entries}
        sizes.update({DisksDirKey(_disk_id(e.key)).encode(): e.size for e in view.disk_entries})
        names = {e.key: e.name for e in view.entries}
        names.update({DisksDirKey(_disk_id(e.key)).encode(): e.name for e in view.disk_entries})
        if book.live is not old:  # another task began a read meanwhile: join it
            assert book.live is not None
            return book.live
        read = book.begin(sizes, required=[e.key for e in view.entries], read_id=read_id)
        self._bindings[read_id] = _Binding(owner, view, via_backup, names)
        log.info(
            "read %s of %s %s begins (%s)%s",
            read_id,
            owner.kind,
            owner.name,
            view.method,
            f"; read {old.read_id} retires" if old is not None else "",
        )
        if old is not None and old.state.ended:
            self._ended(owner, old)
        return read

    async def _open_set_file(
        self, owner: Owner, key: str, parsed: SetFileKey, reader: ReaderId | None
    ) -> int:
        book = self._set_books.get(owner.id)
        if book is None:
            book = self._set_books[owner.id] = SetReads(idle_limit_s=self.config.read_idle_limit)
        live = book.live
        if live is None or live.read_id != parsed.set_id:
            session = self.incremental.live_set(owner)
            sizes = (
                {e.key: e.size for e in session.entries}
                if session is not None and session.set_id == parsed.set_id
                else {}
            )
            live = book.begin(sizes, read_id=parsed.set_id)
        if key in live.done:
            # Read completely once already: this is the next run. The set ends now, and
            # the tool must list the directory again to get a new set.
            self.incremental.retire(owner)
            raise PointInTimeLost(
                f"{key} of set {parsed.set_id} of {owner.name} was already read completely; "
                "list the set directory again for the next set"
            )
        inner = await self.incremental.open(owner, key)
        h = book.opened(live, key, reader)
        return self._handles.add(_Open(owner, key, self.incremental, inner, book, live, h))

    async def read(self, handle: int, offset: int, size: int) -> bytes | memoryview:
        item = self._handles.get(handle)
        if item.target is None:
            content = item.content
            if isinstance(content, RhvfsError):
                raise content
            assert content is not None
            data = content[offset : offset + size] if size > 0 else b""
        else:
            if item.pending is not None:
                await self._start(item)
            data = await item.target.read(item.inner, offset, size)
        item.book.served(item.read, item.key, offset, offset + len(data))
        return data

    async def release(self, handle: int) -> None:
        item = self._handles.pop(handle)
        if item is None:
            return
        try:
            if item.target is not None and item.pending is None:
                await item.target.release(item.inner)
            elif item.pending is not None:
                self._unreserve(item.pending.binding, item.pending.place)
        finally:
            if item.book.released(item.read, item.book_handle):
                self._ended(item.owner, item.read)

    # -- ends of reads ----------------------------------------------------------------

    def _expire(self, owner: Owner, book: SetReads) -> None:
        for read in book.expire_idle():
            self._ended(owner, read)
        # The live read's session may have ended without the router (it gave its place to
        # a queued session, or broke): the read is lost. Its readers get STALE; anyone
        # else begins a new read instead of joining one that can serve no data.
        live = book.live
        binding = self._bindings.get(live.read_id) if live is not None else None
        if live is not None and binding is not None:
            target = self.incremental if binding.via_backup else self.full
            reason = target.read_lost(live.read_id)
            if reason is not None:
                self._lose(owner, book, live, reason)

    def _lose(self, owner: Owner, book: SetReads, read: SetRead, reason: str) -> None:
        book.lose(read, reason)
        self._notes.add(owner, f"read {read.read_id}: {reason}", level="error")
        self._ended(owner, read)

    def _ended(self, owner: Owner, read: SetRead) -> None:
        """``read`` has ended: its session (if it started one) closes, now or with its
        last handle, and never serves again."""
        binding = self._bindings.pop(read.read_id, None)
        if binding is None:  # an incremental set: its session ends on its own
            if read.read_id in self._sets_started and read.state.ended:
                self._sets_started.discard(read.read_id)
                what, severity = (
                    ("finished: every file was read", "normal")
                    if read.state is ReadState.COMPLETE
                    else (f"ended incomplete: {read.reason}", "warning")
                )
                self._post(owner, "backup", f"{what} (set {read.read_id})", severity)
            return
        self._generations[owner.id] = self._generations.get(owner.id, 0) + 1
        self.full.read_ended(owner)
        complete = read.state is ReadState.COMPLETE
        log.info("read %s of %s %s ended: %s", read.read_id, owner.kind, owner.name, read.reason)
        if binding.session_started and not binding.failure_posted:
            if complete:
                self._event(binding, read, "finished: every file was read", "normal")
            elif read.state is ReadState.LOST:
                self._event(binding, read, f"failed: {read.reason}", "error")
            else:
                self._event(binding, read, f"ended incomplete: {read.reason}", "warning")
        if binding.via_backup:
            self.incremental.end_read(owner, read.read_id, reason=read.reason, complete=complete)
        else:
            self.full.end_read(owner, read.read_id, reason=read.reason)

    def _event(self, binding: _Binding, read: SetRead, what: str, severity: str) -> None:
        """Post ``what`` happened to the backup ``read`` to the engine's events."""
        self._post(binding.owner, "backup", f"{what} (read {read.read_id})", severity)

    def _post(self, owner: Owner, backup: str, what: str, severity: str) -> None:
        if self.events is None:
            return
        self.events.post(
            f"rhvfs: {backup} of {'VM' if owner.kind == 'vm' else owner.kind} {owner.name} {what}",
            severity=severity,
            vm_id=owner.id if owner.kind == "vm" else None,
        )

    # -- reporting --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        status = dict(self.full.status())
        status["incremental"] = incremental = dict(self.incremental.status())
        # One list of the mount's cleanups retried in the background, whoever left them.
        status["pending_cleanups"] = list(status.get("pending_cleanups", [])) + list(
            incremental.pop("pending_cleanups", [])
        )
        reads = []
        for book in self._books.values():
            for read in book.reads():
                binding = self._bindings.get(read.read_id)
                doc = read.status()
                if binding is not None:
                    doc["owner"] = {
                        "kind": binding.owner.kind,
                        "id": binding.owner.id,
                        "name": binding.owner.name,
                    }
                    doc["method"] = binding.view.method
                    doc["configuration_time"] = binding.view.configuration_time or None
                    doc["files_complete"] = sorted(binding.names.get(k, k) for k in read.done)
                reads.append(doc)
        status["reads"] = reads
        if self.events is not None:
            status["engine_events"] = self.events.status()
        status["errors"] = list(status.get("errors", [])) + self._notes.list()
        for doc in [*status.get("sessions", []), *incremental.get("sessions", [])]:
            pit = doc.get("point_in_time")
            binding = self._bindings.get(pit.get("read_id") or "") if pit else None
            if pit is not None and binding is not None:
                pit["configuration_time"] = binding.view.configuration_time or None
        status["totals"] = _totals(status, incremental)
        # Reads waiting at an image's open for their session's place: queued sessions.
        status["sessions"] = list(status.get("sessions", [])) + self._reserving()
        return status

    def _reserving(self) -> list[dict[str, Any]]:
        """status.json entries for the reads whose session's place is still queued."""
        docs = []
        for read_id, binding in self._bindings.items():
            place = binding.place
            if place is None or place.handed or place.slot.state != "queued":
                continue
            owner = binding.owner
            docs.append(
                {
                    "owner": {"kind": owner.kind, "id": owner.id, "name": owner.name},
                    "session_id": read_id,
                    "read_id": read_id,
                    "state": "queued",
                    "phase": "queued",
                    "queue_position": place.slot.position,
                    "handles": place.users,
                    "bytes_read": 0,
                    "point_in_time": {"read_id": read_id, "method": binding.view.method},
                }
            )
        return docs

    async def collect_garbage(self, *, dry_run: bool = False) -> list[str]:
        collect = getattr(self.full, "collect_garbage", None)
        lines: list[str] = list(await collect(dry_run=dry_run)) if collect is not None else []
        if not dry_run:
            lines += await self.incremental.finalize_leftovers()
        return lines


def _totals(full: Mapping[str, Any], incremental: Mapping[str, Any]) -> dict[str, Any]:
    """The mount's backup totals: both managers' sessions (a VM that is up with an
    incremental-enabled disk reads its ``@rhv/`` through an engine backup, so through the
    incremental manager), with the progress of the live ones summed."""
    ft, it = full.get("totals", {}), incremental.get("totals", {})
    live = list(full.get("sessions", [])) + list(incremental.get("sessions", []))
    return {
        "sessions_active": len(live),
        "sessions_started": int(ft.get("sessions_started", 0)) + int(it.get("sets_started", 0)),
        "handles_open": int(ft.get("handles_open", 0)) + int(it.get("handles_open", 0)),
        # every byte served since the mount began, by sessions live or closed
        "bytes_read": int(ft.get("bytes_read", 0)) + int(it.get("bytes_read", 0)),
        # the live sessions' bytes (the sum of ``bytes_read`` over the sessions listed)
        "bytes_read_active": sum(int(s.get("bytes_read", 0)) for s in live),
        "progress": sum_progress(s["progress"] for s in live if "progress" in s),
    }


def _disk_id(key: str) -> str:
    """The disk of a ``disk:<id>`` or ``disks/disk:<id>`` key."""
    parsed = parse_key(key)
    disk_id = parsed.disk_id if isinstance(parsed, DisksDirKey) else disk_id_of_key(key)
    if disk_id is None:
        raise ValueError(f"{key!r} is not the key of a disk")
    return disk_id
