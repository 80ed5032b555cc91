"""Crash safety of one restore: what it creates is in the mount's journal until the restore ends.

``RestoreJournal`` gives its session a ``RestoreServices`` whose engine writes
ahead into the mount's ``Journal`` (one entry per restore, ``owner_kind``
"restore", stamped with this installation and mount instance):

- a disk's id and a transfer's id are chosen here and recorded *before* the
  engine call that creates them (the engine takes a disk's; a transfer's own
  id, when the engine chose another, replaces it once known: until then gc
  finds the transfer by its disk);
- every object the restore creates carries the entry's ``marker`` (an
  ``artifact_description`` with ``kind=restore``: marker, restore id, host,
  pid, installation, mount instance, time; about 150 characters, the
  engine takes 500 in a disk's description): a disk as its description
  (the set's description is given back at the end), a VM or template as its
  comment (the OVF's is given back). gc removes an object the entry names
  only while it carries that marker;
- a VM or template create call is recorded as ``pending`` before it is made,
  so one whose id never came back is still found by its marker; its id is
  recorded when the call answers;
- a transfer that was finalized or cancelled leaves the entry.

The rest follows the session's ``Created`` ledger (the one record of what
rollback removes), synced before every engine call and at the end. The
session puts what a create call returned into ``Created`` before its next
await, so at a sync an object whose create answered and that ``Created``
does not name (any more) was handed over (the restored VM and its disks on
success, a template's disks, a removed base VM): it leaves the entry; one
whose create never answered stays (it may exist); anything ``Created``
names that the entry lacks is added. Once ``Created.replaces`` is set (an
overwrite asks for the removal of the VM it replaces: the point of no
return) or ``committed``, everything is handed over, before that removal is
sent: a crash then leaves the new VM, never neither VM (an overwrite that
turns back, ``replaces`` cleared, gets its objects journaled again). So the
entry never names the VM an overwrite replaces (the restore never created
it), nor anything the restore handed over.

The entry is removed when the restore is done (its objects are the user's);
then ``unmark`` gives each object it made its own description or comment
back (the set's, the OVF's), in that order: a crash in between leaves a
marker on a user's object but no entry naming it, so no gc ever touches it
(the other order could leave an entry naming unmarked objects: gc would
leave those alone as well, but report them). The entry is also removed when
the restore is rolled back; after a rollback ``_restore_leftovers`` checks the entry once
more (removing what is still there) and keeps it when something could not
be removed. A killed mount leaves the entry: the next mount's gc and
``rhvfs gc`` remove exactly what it names (``core._gc``).

A mount without a journal (tests) journals nothing.

Must not: decide what a restore creates or when it is done or failed (the
session and its parts do); remove anything but what the entry names; let a
journal error pass silently before a create (the create is refused instead:
an object the journal cannot name must not be made).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from rhvfs.backupset import parse_ovf
from rhvfs.config import Config
from rhvfs.errors import EngineError, NotFound, RestoreFailed, SetFormatError
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._gc import artifact_description
from rhvfs.sessions.core._journal import Journal, JournalEntry
from rhvfs.sessions.core._restore_leftovers import RESTORE_KIND, remove_restore_leftovers
from rhvfs.sessions.restore._ports import RestoreEngine, RestoreServices
from rhvfs.sessions.restore._rollback import Created

log = logging.getLogger(__name__)

#: The kinds of objects ``Created`` names, and the entry's field for each.
_FIELDS = {"disk": "disk_ids", "vm": "vm_ids", "template": "template_ids"}


class RestoreJournal:
    """The journal entry of one restore (see the module docstring)."""

    def __init__(
        self,
        services: RestoreServices,
        name: str,
        created: Created,
        *,
        note: Callable[[str], None],
    ) -> None:
        self._inner = services
        self.name = name
        self._created = created
        self._note = note
        self._journal: Journal | None = services.journal
        self._config: Config = services.config
        self.session_id = f"restore-{uuid.uuid4().hex[:12]}"
        #: per kind: object id -> whether its create call answered (then ``Created`` names it
        #: before the next engine call: the session's invariant)
        self._tracked: dict[str, dict[str, bool]] = {k: {} for k in _FIELDS}
        self._entry: JournalEntry | None = None  # as last written
        self._closed = False
        self.marker: str | None = None
        #: what the marker replaced, given back by ``unmark``: disk id -> (alias, description)
        self._descriptions: dict[str, tuple[str, str]] = {}
        #: (kind, id) of a VM or template -> the comment it asked for (or its OVF's)
        self._comments: dict[tuple[str, str], str] = {}
        self.services: RestoreServices = services
        if self._journal is not None:
            owner = self._journal.installation.ownership()
            self.marker = artifact_description(
                self.session_id, procid.current(), datetime.now(UTC), owner=owner, kind="restore"
            )
            engine = _JournalingEngine(services.engine, self)
            self.services = cast(RestoreServices, _Services(services, engine))

    @property
    def entry(self) -> JournalEntry | None:
        """The entry as written last (None before the first create, and once removed)."""
        return self._entry

    # -- writing ---------------------------------------------------------------

    def _write(self, change: Callable[[JournalEntry], JournalEntry]) -> None:
        """Apply ``change`` to the entry (created on first use); raises ``OSError``."""
        journal = self._journal
        assert journal is not None
        if self._entry is None:
            ownership = journal.installation.ownership()
            first = change(
                JournalEntry(
                    session_id=self.session_id,
                    process=procid.current(),
                    owner_kind=RESTORE_KIND,
                    owner_id="",
                    owner_name=self.name,
                    started=datetime.now(UTC).isoformat(),
                    installation=ownership.installation,
                    instance=ownership.instance,
                    marker=self.marker,
                )
            )
            journal.put(first)
            self._entry = first
            return
        new = change(self._entry)
        if new != self._entry:
            journal.put(new)
            self._entry = new

    def _intend(self, change: Callable[[JournalEntry], JournalEntry], what: str) -> None:
        """Record an intent before its create call: no record, no call."""
        if self._closed:
            raise RestoreFailed(f"restore {self.name}: nothing more may be created ({what})")
        try:
            self._write(change)
        except OSError as e:
            raise RestoreFailed(f"cannot record {what} in the journal: {e}") from e

    def intend_disk(self, disk_id: str) -> None:
        self._tracked["disk"].setdefault(disk_id, False)
        self._intend(lambda e: _add(e, "disk_ids", disk_id), f"disk {disk_id}")

    def intend_transfer(self, transfer_id: str) -> None:
        self._intend(lambda e: _add(e, "transfer_ids", transfer_id), f"transfer {transfer_id}")

    def intend(self, kind: str) -> None:
        """A ``kind`` ("vm" or "template") create call is about to be made."""
        self._intend(lambda e: _add(e, "pending", kind), f"a new {kind}")

    def made(self, kind: str, object_id: str) -> None:
        """The ``kind`` create call answered with ``object_id``."""
        self._tracked[kind][object_id] = True
        if kind == "disk":
            return  # recorded before the call
        field = _FIELDS[kind]
        self._best_effort(
            lambda e: _drop(_add(e, field, object_id), "pending", kind), f"{kind} {object_id}"
        )

    def transfer_started(self, transfer_id: str, *, instead_of: str) -> None:
        """The engine gave the transfer its own id (until then, gc finds it by its disk)."""
        self._best_effort(
            lambda e: _drop(_add(e, "transfer_ids", transfer_id), "transfer_ids", instead_of),
            f"transfer {transfer_id}",
        )

    def transfer_ended(self, transfer_id: str) -> None:
        self._best_effort(lambda e: _drop(e, "transfer_ids", transfer_id), "a transfer's end")

    def _best_effort(self, change: Callable[[JournalEntry], JournalEntry], what: str) -> None:
        if self._entry is None or self._closed:
            return
        try:
            self._write(change)
        except OSError as e:
            log.warning("restore %s: cannot record %s in the journal: %s", self.name, what, e)

    def sync(self) -> None:
        """Follow ``Created``: release what it handed over, add what it names that is missing."""
        if self._journal is None or self._closed:
            return
        c = self._created
        named = {
            "disk": set(c.disks),
            "vm": {c.vm} if c.vm else set(),
            "template": {c.template} if c.template else set(),
        }
        if c.replaces is not None or c.committed:
            # An overwrite is removing the VM it replaces (or did): from now on what the
            # restore built may be all that is left of that VM; it is the user's.
            named = {k: set() for k in _FIELDS}
        add: dict[str, list[str]] = {k: [] for k in _FIELDS}
        release: dict[str, list[str]] = {k: [] for k in _FIELDS}
        for kind, tracked in self._tracked.items():
            for object_id in named[kind]:
                if object_id not in tracked:
                    add[kind].append(object_id)
                tracked[object_id] = True
            for object_id, answered in list(tracked.items()):
                # answered and not named (any more): handed over. Not answered: the call
                # failed or never returned; the object may exist, so it stays.
                if answered and object_id not in named[kind]:
                    release[kind].append(object_id)
                    del tracked[object_id]
        if not any(add.values()) and not any(release.values()):
            return

        def change(e: JournalEntry) -> JournalEntry:
            for kind, field in _FIELDS.items():
                for object_id in add[kind]:
                    e = _add(e, field, object_id)
                for object_id in release[kind]:
                    e = _drop(e, field, object_id)
            return e

        if self._entry is None and not any(add.values()):
            return
        try:
            self._write(change)
        except OSError as e:
            log.warning("restore %s: cannot update the journal: %s", self.name, e)

    # -- the end -----------------------------------------------------------------

    def done(self) -> None:
        """The restore is done: what it made is the user's; the entry goes."""
        if self._journal is None or self._closed:
            return
        self._closed = True
        if self._entry is None:
            return
        try:
            self._journal.remove(self.session_id)
        except OSError as e:
            log.error(
                "restore %s is done but its journal entry %s could not be removed (%s): "
                "remove it from %s before running `rhvfs gc` or the next mount, or they "
                "remove the restored objects",
                self.name,
                self.session_id,
                e,
                self._journal.path,
            )
        self._entry = None

    def marked_disk(self, disk_id: str, *, alias: str, description: str) -> None:
        """Disk ``disk_id`` was made with the marker instead of ``description``."""
        self._descriptions[disk_id] = (alias, description)

    def marked(self, kind: str, object_id: str, comment: str) -> None:
        """The ``kind`` object was made with the marker instead of ``comment``."""
        self._comments[(kind, object_id)] = comment

    async def unmark(self) -> None:
        """After ``done`` (never before: see the module docstring): give what the restore
        made its own description or comment back, where it still carries the marker.

        Disks of a template made from the restored VM are copies of its disks (the
        engine copies the marker with the description): they get the description of the
        disk of the same alias. Best effort: what fails is noted, and keeps the marker
        (harmless: no journal entry names it)."""
        marker = self.marker
        if marker is None:
            return
        engine = self._inner.engine
        by_alias = dict(self._descriptions.values())
        disks = {disk_id: desc for disk_id, (_, desc) in self._descriptions.items()}
        for (kind, object_id), comment in self._comments.items():
            try:
                if kind == "vm":
                    if (await engine.get_vm(object_id)).comment == marker:
                        await engine.update_vm_comment(object_id, comment)
                    continue
                if (await engine.get_template(object_id)).comment == marker:
                    await engine.update_template_comment(object_id, comment)
                for att in await engine.template_disk_attachments(object_id):
                    disks.setdefault(att.disk.id, by_alias.get(att.disk.alias, ""))
            except NotFound:
                continue  # removed (a template's base vm)
            except EngineError as e:
                self._note(f"cannot give {kind} {object_id} its comment back: {e}")
        for disk_id, description in disks.items():
            try:
                if (await engine.get_disk(disk_id)).description == marker:
                    await engine.update_disk_description(disk_id, description)
            except NotFound:
                continue  # removed with the base vm, or a template's disk the engine replaced
            except EngineError as e:
                self._note(f"cannot give disk {disk_id} its description back: {e}")

    async def rolled_back(self) -> None:
        """After the session's rollback: remove what the entry still names, then the entry
        (kept when something is left: the next mount's gc or ``rhvfs gc`` retries)."""
        if self._journal is None or self._closed:
            return
        self.sync()
        self._closed = True
        entry = self._entry
        if entry is None:
            return
        report = await remove_restore_leftovers(
            self._inner.engine, entry, config=self._config, wait_busy=False
        )
        for line in report.lines:
            self._note(f"rollback (journal): {line}")
        if not report.ok:
            self._note(
                f"rollback left objects on the engine; journal entry {self.session_id} stays "
                "for the next mount or `rhvfs gc`"
            )
            return
        try:
            self._journal.remove(self.session_id)
        except OSError as e:
            log.warning("restore %s: cannot remove its journal entry: %s", self.name, e)
        self._entry = None


def _add(entry: JournalEntry, field: str, value: str) -> JournalEntry:
    values: tuple[str, ...] = getattr(entry, field)
    if value in values:
        return entry
    changes: dict[str, Any] = {field: (*values, value)}
    return dataclasses.replace(entry, **changes)


def _drop(entry: JournalEntry, field: str, value: str) -> JournalEntry:
    values: tuple[str, ...] = getattr(entry, field)
    if value not in values:
        return entry
    changes: dict[str, Any] = {field: tuple(v for v in values if v != value)}
    return dataclasses.replace(entry, **changes)


def _ovf_comment(ovf: str | None) -> str:
    """The comment an import without one would take from ``ovf`` (the engine's rule)."""
    if not ovf:
        return ""
    try:
        return parse_ovf(ovf.encode()).comment
    except SetFormatError:
        return ""


class _Services:
    """The manager's services with this restore's journaling engine."""

    def __init__(self, inner: RestoreServices, engine: _JournalingEngine) -> None:
        self._inner = inner
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _JournalingEngine:
    """The engine as one restore sees it: creates are journaled ahead, every call syncs."""

    def __init__(self, inner: RestoreEngine, journal: RestoreJournal) -> None:
        self._inner = inner
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)  # AttributeError: the engine has no such call
        if not inspect.iscoroutinefunction(attr):
            return attr
        if name == "create_template":  # optional (``RestoreEngine``): only when the engine has it

            async def create(**kwargs: Any) -> Any:
                return await self._create("template", attr, kwargs)

            return create
        journal = self._journal

        async def call(*args: Any, **kwargs: Any) -> Any:
            journal.sync()
            return await attr(*args, **kwargs)

        return call

    async def create_disk(self, **kwargs: Any) -> Any:
        self._journal.sync()
        disk_id = kwargs.get("disk_id") or str(uuid.uuid4())
        kwargs["disk_id"] = disk_id
        description = kwargs.get("description") or ""
        kwargs["description"] = self._journal.marker
        self._journal.intend_disk(disk_id)
        disk = await self._inner.create_disk(**kwargs)
        self._journal.made("disk", disk.id)
        self._journal.marked_disk(disk.id, alias=disk.alias, description=description)
        return disk

    async def start_transfer(self, **kwargs: Any) -> Any:
        self._journal.sync()
        transfer_id = kwargs.get("transfer_id") or str(uuid.uuid4())
        kwargs["transfer_id"] = transfer_id
        self._journal.intend_transfer(transfer_id)
        transfer = await self._inner.start_transfer(**kwargs)
        if transfer.id != transfer_id:  # the engine chose its own id
            self._journal.transfer_started(transfer.id, instead_of=transfer_id)
        return transfer

    async def finalize_transfer(self, transfer_id: str) -> None:
        self._journal.sync()
        await self._inner.finalize_transfer(transfer_id)
        self._journal.transfer_ended(transfer_id)

    async def cancel_transfer(self, transfer_id: str) -> None:
        self._journal.sync()
        await self._inner.cancel_transfer(transfer_id)
        self._journal.transfer_ended(transfer_id)

    async def _create(self, kind: str, call: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        self._journal.sync()
        self._journal.intend(kind)
        comment = kwargs.get("comment") or _ovf_comment(kwargs.get("ovf"))
        kwargs["comment"] = self._journal.marker
        made = await call(**kwargs)
        self._journal.made(kind, made.id)
        self._journal.marked(kind, made.id, comment)
        return made

    async def create_vm_from_ovf(self, **kwargs: Any) -> Any:
        return await self._create("vm", self._inner.create_vm_from_ovf, kwargs)

    async def create_template_from_ovf(self, **kwargs: Any) -> Any:
        return await self._create("template", self._inner.create_template_from_ovf, kwargs)
