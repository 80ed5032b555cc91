"""What an unfinished restore left on the engine, and removing it (gc and the restore's own rollback).

A restore's journal entry (``owner_kind`` ``RESTORE_KIND``; written by
``rhvfs.sessions.restore._journal``) names what the restore created, each
recorded before the engine call that creates it: disks and transfers by the
ids rhvfs chose for them, VMs and templates by id once the engine answered,
and -- while a create call has not answered (``pending``) -- by ``marker``,
the ``artifact_description`` (``kind=restore``) the restore puts into the
comment of every VM and template and the description of every disk it
creates. A finished restore's entry is gone: its VM, template and disks are
the user's (and get their own comment and description back).

``remove_restore_leftovers`` ends them in dependency order: transfers
cancelled (unless finished; the entry's, and any transfer of one of its
disks: the engine may choose a transfer's id itself), VMs removed (with their
disks; one that runs is stopped first), templates removed (with theirs),
then the disks left. A VM or template is removed only when its comment is
still the entry's marker, a disk only when its description is: anything else
is left alone (and reported). Gone already counts as done; locked or busy (409)
and transient errors are retried per ``_cleanup.busy_policy``.

Must not: decide whose entry it is or whether its owner is dead (``_gc`` does:
only entries of this installation whose mount is gone), touch anything the
entry does not name (or, for a pending create, that does not carry its
marker), or edit the journal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol

from rhvfs.config import Config
from rhvfs.engine.types import Disk, ImageTransfer, Template, Vm
from rhvfs.errors import EngineError, NotFound
from rhvfs.retry import retry
from rhvfs.sessions.core._cleanup import FINISHED_PHASES, busy_policy, cancel_transfer, retryable
from rhvfs.sessions.core._journal import JournalEntry

#: ``JournalEntry.owner_kind`` of a restore's entry.
RESTORE_KIND = "restore"


class LeftoverEngine(Protocol):
    """The engine calls that find and remove a restore's leftovers."""

    async def get_transfer(self, transfer_id: str) -> ImageTransfer: ...
    async def list_transfers(self) -> list[ImageTransfer]: ...
    async def finalize_transfer(self, transfer_id: str) -> None: ...
    async def cancel_transfer(self, transfer_id: str) -> None: ...
    async def list_vms(self) -> list[Vm]: ...
    async def get_vm(self, vm_id: str) -> Vm: ...
    async def remove_vm(self, vm_id: str) -> None: ...
    async def stop_vm(self, vm_id: str) -> Vm: ...
    async def list_templates(self) -> list[Template]: ...
    async def get_template(self, template_id: str) -> Template: ...
    async def remove_template(self, template_id: str) -> None: ...
    async def get_disk(self, disk_id: str) -> Disk: ...
    async def remove_disk(self, disk_id: str) -> None: ...


@dataclasses.dataclass
class LeftoverReport:
    """What a cleanup did (``lines``) and whether anything is left (``ok`` False)."""

    lines: list[str] = dataclasses.field(default_factory=list)
    ok: bool = True


def describe(entry: JournalEntry) -> str:
    """``restore <dir> (<session id>) of pid <pid>``, for report lines."""
    return f"restore {entry.owner_name} ({entry.session_id}) of pid {entry.process.pid}"


async def remove_restore_leftovers(
    engine: LeftoverEngine,
    entry: JournalEntry,
    *,
    config: Config,
    dry_run: bool = False,
    wait_busy: bool = True,
) -> LeftoverReport:
    """End what ``entry`` names (see the module docstring); never raises ``EngineError``.

    ``wait_busy`` False: one try per object, no waiting for a busy engine (a live
    restore's check after its rollback; what is left stays for gc)."""
    report = LeftoverReport()
    who = describe(entry)
    verb = "would remove" if dry_run else "removed"

    transfers: dict[str, ImageTransfer | None] = dict.fromkeys(entry.transfer_ids)
    if entry.disk_ids:
        # Any transfer of a disk the restore made is the restore's, also one whose id the
        # engine chose and never told (the mount died before the answer).
        try:
            for t in await engine.list_transfers():
                if t.disk_id in entry.disk_ids:
                    transfers[t.id] = t
        except EngineError as e:
            report.lines.append(f"cannot list the transfers of {who}: {e}")
            report.ok = False
    for tid, known in transfers.items():
        try:
            transfer = known or await engine.get_transfer(tid)
        except NotFound:
            continue
        except EngineError as e:
            report.lines.append(f"cannot check transfer {tid} of {who}: {e}")
            report.ok = False
            continue
        if transfer.phase in FINISHED_PHASES:
            continue
        if dry_run:
            report.lines.append(f"would cancel transfer {tid} of {who}")
            continue
        try:
            if await cancel_transfer(engine, tid):
                report.lines.append(f"cancelled transfer {tid} of {who}")
        except EngineError as e:
            report.lines.append(f"failed to cancel transfer {tid} of {who}: {e}")
            report.ok = False

    vm_ids = list(entry.vm_ids)
    template_ids = list(entry.template_ids)
    if entry.pending and entry.marker:
        try:
            if "vm" in entry.pending:
                vm_ids += [v.id for v in await engine.list_vms() if v.comment == entry.marker]
            if "template" in entry.pending:
                template_ids += [
                    t.id for t in await engine.list_templates() if t.comment == entry.marker
                ]
        except EngineError as e:
            report.lines.append(f"cannot look for objects of {who} still being created: {e}")
            report.ok = False

    async def one(
        kind: str,
        object_id: str,
        get: Callable[[str], Awaitable[Vm | Template | Disk]],
        remove: Callable[[str], Awaitable[None]],
    ) -> None:
        try:
            found = await get(object_id)
        except NotFound:
            return
        except EngineError as e:
            report.lines.append(f"cannot check {kind} {object_id} of {who}: {e}")
            report.ok = False
            return
        field = "description" if isinstance(found, Disk) else "comment"
        mark = getattr(found, field, None)
        if entry.marker and mark is not None and mark != entry.marker:
            # not the object the restore made (or a person took it over, or the restore
            # handed it over and gave it its own description back): never ours to remove
            report.lines.append(
                f"left alone: {kind} {object_id} named by {who} (its {field} is not the "
                "restore's marker)"
            )
            return
        name = getattr(found, "name", None) or getattr(found, "alias", "")
        running = isinstance(found, Vm) and found.status not in ("down", None)
        line = f"{verb} {kind} {object_id} ({name}) of {who}"
        if running:  # started (vm_switchon) before the mount died: powered off first
            line += f", stopped first ({found.status})"
        if dry_run:
            report.lines.append(line)
            return
        try:
            if running:
                await engine.stop_vm(object_id)
            if wait_busy:
                await retry(
                    lambda _: remove(object_id),
                    policy=busy_policy(config),
                    what=f"removing {kind} {object_id} of {who}",
                    retry_on=retryable,
                )
            else:
                await remove(object_id)
        except NotFound:
            return
        except EngineError as e:
            report.lines.append(f"failed to remove {kind} {object_id} of {who}: {e}")
            report.ok = False
            return
        report.lines.append(line)

    for vm_id in dict.fromkeys(vm_ids):
        await one("vm", vm_id, engine.get_vm, engine.remove_vm)
    for template_id in dict.fromkeys(template_ids):
        await one("template", template_id, engine.get_template, engine.remove_template)
    for disk_id in dict.fromkeys(entry.disk_ids):
        await one("disk", disk_id, engine.get_disk, engine.remove_disk)
    return report
