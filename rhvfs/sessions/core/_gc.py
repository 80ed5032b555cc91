"""Crash cleanup: remove what dead mounts of THIS installation left on the engine, nothing else.

Every artifact a session creates carries its creator in its description
(``artifact_description``): ``<marker> <session> host=<host> pid=<pid>
inst=<installation> mount=<instance> <time>`` (engine backups add
``kind=<set kind>``). Two sources of leftovers:

1. Journal entries (the journal lives in this installation's state directory,
   so its entries are ours; one naming another installation is left alone)
   whose owner is dead: its process is gone (pid gone, reused, or another boot)
   and its mount instance holds no lock (``Installation.instance_alive``).
   Their transfers are cancelled and their snapshot removed, then the entry is
   dropped. An entry of a restore that never finished (``_restore_leftovers``)
   has its transfers cancelled and its VMs, templates and disks removed; a
   finished restore has no entry, so its VM is never touched.
2. Snapshots whose description parses as above with OUR installation id,
   created on THIS host by a process that is no longer alive, from a mount
   instance that holds no lock. A snapshot of another installation (even with
   our hostname and a pid that looks dead from here), of a live owner, of
   another host, without an installation id (older versions: only the journal
   can say it is ours) or with an unparsable description is left alone (and
   reported).

Snapshots kept on purpose (``kept_snapshot_ids``: the base of each VM's next
snapshot-chain incremental set, recorded in the chain state) are left alone by
both, whoever created them.

Removing and cancelling (and their retry rule) are ``_cleanup``'s.

Must not: touch a snapshot without the marker and our installation id unless
our journal names it, or any artifact of a live owner (when in doubt, leave it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from datetime import UTC, datetime

from rhvfs import ARTIFACT_MARKER
from rhvfs.config import Config
from rhvfs.errors import EngineError, NotFound
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._cleanup import (
    FINISHED_PHASES,
    cancel_transfer,
    find_snapshot,
    remove_snapshot,
)
from rhvfs.sessions.core._installation import ID_PATTERN, Installation, Ownership
from rhvfs.sessions.core._journal import Journal, JournalEntry
from rhvfs.sessions.core._ports import EngineLike
from rhvfs.sessions.core._restore_leftovers import RESTORE_KIND, remove_restore_leftovers

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MarkerInfo:
    """What an artifact's description says about its creator (``installation`` and
    ``instance`` are None in descriptions of older versions)."""

    session_id: str
    host: str
    pid: int
    created: datetime | None
    installation: str | None = None
    instance: str | None = None
    kind: str | None = None


def artifact_description(
    session_id: str,
    proc: procid.ProcessIdentity,
    when: datetime,
    *,
    owner: Ownership,
    kind: str | None = None,
) -> str:
    """``<marker> <id> host=<h> pid=<p> inst=<installation> mount=<instance> <time>[ kind=<k>]``:
    what ``parse_description`` reads."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = (
        f"{ARTIFACT_MARKER} {session_id} host={proc.host} pid={proc.pid} "
        f"inst={owner.installation} mount={owner.instance} {stamp}"
    )
    return f"{text} kind={kind}" if kind else text


def snapshot_description(
    session_id: str, proc: procid.ProcessIdentity, when: datetime, *, owner: Ownership
) -> str:
    """A session's snapshot description (see ``artifact_description``)."""
    return artifact_description(session_id, proc, when, owner=owner)


def parse_description(description: str) -> MarkerInfo | None:
    """Parse ``<marker> <session> host=<h> pid=<p> [inst=<i> mount=<m>] <iso time>``; None if it
    is not a session description."""
    parts = (description or "").split()
    if len(parts) < 4 or parts[0] != ARTIFACT_MARKER:
        return None
    fields = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    try:
        pid = int(fields["pid"])
        host = fields["host"]
    except (KeyError, ValueError):
        return None
    created = None
    for p in parts[2:]:
        if "=" not in p:
            try:
                created = datetime.fromisoformat(p.replace("Z", "+00:00"))
            except ValueError:
                pass
    inst = fields.get("inst")
    mount = fields.get("mount")
    return MarkerInfo(
        session_id=parts[1],
        host=host,
        pid=pid,
        created=created,
        installation=inst if inst and ID_PATTERN.fullmatch(inst) else None,
        instance=mount if mount and ID_PATTERN.fullmatch(mount) else None,
        kind=fields.get("kind"),
    )


def snapshot_owner_alive(info: MarkerInfo, installation: Installation | None = None) -> bool | None:
    """True/None (unknown: another host) means: leave it alone. With ``installation``, a
    mount instance that still holds its lock counts as alive whatever its pid looks like."""
    if installation is not None and installation.instance_alive(info.instance):
        return True
    return procid.pid_alive_since(info.host, info.pid, info.created)


def entry_owner_alive(entry: JournalEntry, installation: Installation) -> bool | None:
    """Whether the session of a journal entry may still live (None: another host)."""
    if installation.instance_alive(entry.instance):
        return True
    return procid.is_alive(entry.process)


async def collect_garbage(
    engine: EngineLike,
    journal: Journal,
    *,
    config: Config,
    dry_run: bool = False,
    live_session_ids: set[str] | frozenset[str] = frozenset(),
    installation: Installation | None = None,
    kept_snapshot_ids: Collection[str] = frozenset(),
) -> list[str]:
    """Remove leftovers of dead mounts of ``installation`` (default: the journal's);
    returns one line per action (or planned action) and per rhvfs artifact left alone.
    Snapshots in ``kept_snapshot_ids`` are never removed."""
    lines: list[str] = []
    verb = "would remove" if dry_run else "removed"
    handled_snapshots: set[str] = set(kept_snapshot_ids)
    installation = installation or journal.installation
    ours = installation.id

    for entry in journal.entries():
        if entry.session_id in live_session_ids:
            continue
        if entry.installation is not None and entry.installation != ours:
            lines.append(
                f"left alone: session {entry.session_id} in the journal "
                f"(installation {entry.installation}, not {ours})"
            )
            continue
        alive = entry_owner_alive(entry, installation)
        if alive is None or alive:
            continue
        if entry.owner_kind == RESTORE_KIND:
            report = await remove_restore_leftovers(engine, entry, config=config, dry_run=dry_run)
            lines.extend(report.lines)
            if report.ok and not dry_run:
                journal.remove(entry.session_id)
            continue
        ok = await _clean_entry(
            engine,
            entry,
            config=config,
            dry_run=dry_run,
            lines=lines,
            verb=verb,
            handled=handled_snapshots,
        )
        if ok and not dry_run:
            journal.remove(entry.session_id)
    if not dry_run:
        for instance in installation.forget_dead_instances():
            log.debug("forgot the lock file of dead mount instance %s", instance)

    try:
        found = await engine.list_all_snapshots_with_description_prefix(ARTIFACT_MARKER)
    except EngineError as e:
        lines.append(f"cannot list snapshots: {e}")
        return lines
    for vm_id, snap in found:
        if snap.id in kept_snapshot_ids:
            lines.append(
                f"left alone: snapshot {snap.id} of VM {vm_id} (kept as the base of the "
                "VM's next incremental set)"
            )
            continue
        if snap.id in handled_snapshots:
            continue
        info = parse_description(snap.description)
        if info is None:
            if (snap.description or "").startswith(ARTIFACT_MARKER):
                lines.append(
                    f"left alone: snapshot {snap.id} of VM {vm_id} ({snap.description!r} is not a session description)"
                )
            continue
        if info.session_id in live_session_ids:
            continue
        if info.installation is None:
            lines.append(
                f"left alone: snapshot {snap.id} of VM {vm_id} (no installation id, "
                "and not in this installation's journal)"
            )
            continue
        if info.installation != ours:
            lines.append(
                f"left alone: snapshot {snap.id} of VM {vm_id} "
                f"(made by installation {info.installation}, not {ours})"
            )
            continue
        alive = snapshot_owner_alive(info, installation)
        if alive is None:
            lines.append(f"left alone: snapshot {snap.id} of VM {vm_id} (made on host {info.host})")
            continue
        if alive:
            continue
        line = f"{verb} snapshot {snap.id} of VM {vm_id} ({snap.description})"
        if dry_run:
            lines.append(line)
            continue
        try:
            await remove_snapshot(engine, vm_id, snap.id, config=config)
            lines.append(line)
        except EngineError as e:
            lines.append(f"failed to remove snapshot {snap.id} of VM {vm_id}: {e}")
    return lines


async def _clean_entry(
    engine: EngineLike,
    entry: JournalEntry,
    *,
    config: Config,
    dry_run: bool,
    lines: list[str],
    verb: str,
    handled: set[str],
) -> bool:
    """Cancel an entry's transfers and remove its snapshot; True when nothing is left.
    Snapshot ids it looked at go into ``handled`` (the description scan skips them)."""
    ok = True
    who = f"session {entry.session_id} of pid {entry.process.pid} ({entry.owner_kind} {entry.owner_name})"
    for tid in entry.transfer_ids:
        try:
            transfer = await engine.get_transfer(tid)
        except NotFound:
            continue
        except EngineError as e:
            lines.append(f"cannot check transfer {tid} of {who}: {e}")
            ok = False
            continue
        if transfer.phase in FINISHED_PHASES:
            continue
        if dry_run:
            lines.append(f"would cancel transfer {tid} of {who}")
            continue
        try:
            if await cancel_transfer(engine, tid):
                lines.append(f"cancelled transfer {tid} of {who}")
        except EngineError as e:
            lines.append(f"failed to cancel transfer {tid} of {who}: {e}")
            ok = False
    if entry.owner_kind != "vm" or not entry.snapshot_description:
        return ok
    try:
        snap = await find_snapshot(
            engine,
            entry.owner_id,
            snapshot_id=entry.snapshot_id,
            description=entry.snapshot_description,
        )
    except NotFound:
        return ok  # the VM is gone, and its snapshots with it
    except EngineError as e:
        lines.append(f"cannot list snapshots of VM {entry.owner_name}: {e}")
        return False
    if snap is None or snap.id in handled:
        return ok  # gone, removed already, or kept on purpose
    handled.add(snap.id)
    if dry_run:
        lines.append(f"would remove snapshot {snap.id} of VM {entry.owner_name} ({who})")
        return ok
    try:
        await remove_snapshot(engine, entry.owner_id, snap.id, config=config)
    except EngineError as e:
        lines.append(f"failed to remove snapshot {snap.id} of VM {entry.owner_name}: {e}")
        return False
    lines.append(f"removed snapshot {snap.id} of VM {entry.owner_name} ({who})")
    return ok
