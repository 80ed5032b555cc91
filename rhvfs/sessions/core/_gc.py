"""Crash cleanup: remove what killed rhvfs processes left on the engine, and nothing else.

Two sources of leftovers:

1. Journal entries whose process is dead (pid gone, reused, or another boot):
   their transfers are cancelled and their snapshot removed, then the entry is
   dropped.
2. Snapshots whose description starts with ``ARTIFACT_MARKER`` and parses as
   ``<marker> <session> host=<host> pid=<pid> <time>``, created on THIS host by a
   process that is no longer alive. A snapshot of a live process, of another
   host, or with an unparsable description is left alone (and reported).

Removing and cancelling (and their retry rule) are ``_cleanup``'s.

Must not: touch a snapshot without the marker, or any artifact of a live
process (when in doubt, leave it).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

from rhvfs import ARTIFACT_MARKER
from rhvfs.config import Config
from rhvfs.errors import EngineError, NotFound
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._cleanup import cancel_transfer, find_snapshot, remove_snapshot
from rhvfs.sessions.core._journal import Journal, JournalEntry
from rhvfs.sessions.core._ports import EngineLike

log = logging.getLogger(__name__)

FINISHED_PHASES = frozenset({"finished_success", "finished_failure", "finished_cleanup"})


@dataclasses.dataclass(frozen=True)
class MarkerInfo:
    """What a session's snapshot description says about its creator."""

    session_id: str
    host: str
    pid: int
    created: datetime | None


def snapshot_description(session_id: str, proc: procid.ProcessIdentity, when: datetime) -> str:
    """``rhvfs-session <id> host=<host> pid=<pid> <iso time>``: what ``parse_description`` reads."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{ARTIFACT_MARKER} {session_id} host={proc.host} pid={proc.pid} {stamp}"


def parse_description(description: str) -> MarkerInfo | None:
    """Parse ``<marker> <session> host=<h> pid=<p> <iso time>``; None if it is not ours."""
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
    return MarkerInfo(session_id=parts[1], host=host, pid=pid, created=created)


def snapshot_owner_alive(info: MarkerInfo) -> bool | None:
    """True/None (unknown: another host) means: leave it alone."""
    return procid.pid_alive_since(info.host, info.pid, info.created)


async def collect_garbage(
    engine: EngineLike,
    journal: Journal,
    *,
    config: Config,
    dry_run: bool = False,
    live_session_ids: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """Remove leftovers of dead rhvfs processes; returns one line per action (or planned action)."""
    lines: list[str] = []
    verb = "would remove" if dry_run else "removed"
    handled_snapshots: set[str] = set()

    for entry in journal.entries():
        if entry.session_id in live_session_ids:
            continue
        alive = procid.is_alive(entry.process)
        if alive is None or alive:
            continue
        ok = await _clean_entry(
            engine, entry, config=config, dry_run=dry_run, lines=lines, verb=verb
        )
        if entry.snapshot_id:
            handled_snapshots.add(entry.snapshot_id)
        if ok and not dry_run:
            journal.remove(entry.session_id)

    try:
        found = await engine.list_all_snapshots_with_description_prefix(ARTIFACT_MARKER)
    except EngineError as e:
        lines.append(f"cannot list snapshots: {e}")
        return lines
    for vm_id, snap in found:
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
        alive = snapshot_owner_alive(info)
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
) -> bool:
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
    if snap is None:
        return ok
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
