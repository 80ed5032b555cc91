"""Crash cleanup: only leftovers of dead rhvfs processes are removed, never anything else."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
import trio.testing

from rhvfs import ARTIFACT_MARKER
from rhvfs.engine.types import Snapshot
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._gc import artifact_description, collect_garbage, parse_description
from rhvfs.sessions.core._installation import Installation, Ownership, new_id
from rhvfs.sessions.core._journal import Journal, JournalEntry
from tests.support.configs import make_config
from tests.support.fake_engine import ENGINE_LIKE, FakeEngine


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def now_iso(delta_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_snapshot(eng: FakeEngine, vm_id: str, description: str) -> Snapshot:
    snap = Snapshot(
        id=f"snap-{len(eng.snapshots[vm_id])}-{vm_id[:4]}",
        description=description,
        status="ok",
        type="regular",
    )
    eng.snapshots[vm_id].append(snap)
    return snap


def owned(
    session_id: str, owner: Ownership, *, pid: int, host: str | None = None, when: str = ""
) -> str:
    """A session description as a mount of ``owner`` with ``pid`` on ``host`` writes it."""
    me = procid.current()
    proc = procid.ProcessIdentity(host or me.host, me.boot_id, pid, 0)
    created = datetime.fromisoformat(when.replace("Z", "+00:00")) if when else datetime.now(UTC)
    return artifact_description(session_id, proc, created, owner=owner)


def test_parse_description() -> None:
    info = parse_description(f"{ARTIFACT_MARKER} abc123 host=h1 pid=42 2026-01-02T03:04:05Z")
    assert info is not None
    assert (info.session_id, info.host, info.pid) == ("abc123", "h1", 42)
    assert info.created == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (info.installation, info.instance) == (None, None)  # an older version's
    owner = Ownership(installation="0123456789abcdef", instance="fedcba9876543210")
    new = owned("abc123", owner, pid=42, host="h1", when="2026-01-02T03:04:05Z")
    assert new == (
        f"{ARTIFACT_MARKER} abc123 host=h1 pid=42 inst=0123456789abcdef "
        "mount=fedcba9876543210 2026-01-02T03:04:05Z"
    )
    info = parse_description(new)
    assert info is not None
    assert (info.session_id, info.host, info.pid) == ("abc123", "h1", 42)
    assert (info.installation, info.instance) == (owner.installation, owner.instance)
    assert info.created == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    backup = parse_description(new + " kind=incremental")
    assert backup is not None and backup.kind == "incremental"
    forged = parse_description(f"{ARTIFACT_MARKER} a host=h pid=1 inst=../../x mount=y t")
    assert forged is not None and (forged.installation, forged.instance) == (None, None)
    assert parse_description("nightly backup") is None
    assert parse_description(f"{ARTIFACT_MARKER}x abc host=h pid=1 t") is None
    assert parse_description(f"{ARTIFACT_MARKER} abc host=h pid=notanumber t") is None


def test_liveness_rules() -> None:
    me = socket.gethostname()
    assert procid.pid_alive_since(me, os.getpid(), datetime.now(UTC)) is True
    assert procid.pid_alive_since(me, dead_pid(), datetime.now(UTC)) is False
    assert procid.pid_alive_since("other-host.example", os.getpid(), None) is None
    # Our own pid, but the artifact predates this process: the pid was reused.
    assert procid.pid_alive_since(me, os.getpid(), datetime(2001, 1, 1, tzinfo=UTC)) is False
    ident = procid.current()
    assert procid.is_alive(ident) is True
    assert (
        procid.is_alive(
            ident.__class__(ident.host, ident.boot_id, ident.pid, ident.start_ticks + 1)
        )
        is False
    )
    assert (
        procid.is_alive(ident.__class__(ident.host, "another-boot", ident.pid, ident.start_ticks))
        is False
    )


async def test_gc_removes_only_dead_snapshots_of_its_own_installation(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    eng = FakeEngine(latency=ENGINE_LIKE)
    vm = eng.add_vm("v1")
    journal = Journal(tmp_path / "j.json")
    ours = journal.installation.id
    other = Installation(tmp_path / "other-state-dir").id
    assert other != ours
    dead_mount = Ownership(ours, new_id())
    live_mount = Installation(tmp_path)  # another mount of this installation, alive
    assert live_mount.hold() and live_mount.id == ours
    gone = dead_pid()
    dead = add_snapshot(eng, vm.id, owned("s1", dead_mount, pid=gone))
    live = add_snapshot(eng, vm.id, owned("s2", dead_mount, pid=os.getpid()))
    foreign_host = add_snapshot(eng, vm.id, owned("s3", dead_mount, pid=1, host="elsewhere"))
    # Same hostname, a pid that looks dead from here: another installation's all the same.
    theirs = add_snapshot(eng, vm.id, owned("s4", Ownership(other, new_id()), pid=gone))
    # Its process is not visible from here (another pid namespace), its mount holds its lock.
    locked = add_snapshot(eng, vm.id, owned("s5", live_mount.ownership(), pid=gone))
    older = add_snapshot(
        eng, vm.id, f"{ARTIFACT_MARKER} s6 host={procid.hostname()} pid={gone} {now_iso()}"
    )
    user = add_snapshot(eng, vm.id, "before upgrade")
    lookalike = add_snapshot(eng, vm.id, f"{ARTIFACT_MARKER} but typed by a human")
    cfg = make_config()

    planned = await collect_garbage(eng, journal, config=cfg, dry_run=True)
    assert planned == [
        f"would remove snapshot {dead.id} of VM {vm.id} ({dead.description})",
        f"left alone: snapshot {foreign_host.id} of VM {vm.id} (made on host elsewhere)",
        f"left alone: snapshot {theirs.id} of VM {vm.id} (made by installation {other}, not {ours})",
        f"left alone: snapshot {older.id} of VM {vm.id} (no installation id, and not in this installation's journal)",
        f"left alone: snapshot {lookalike.id} of VM {vm.id} ({lookalike.description!r} is not a session description)",
    ]
    assert len(eng.user_snapshots(vm.id)) == 8

    done = await collect_garbage(eng, journal, config=cfg)
    assert done[0] == f"removed snapshot {dead.id} of VM {vm.id} ({dead.description})"
    assert {s.id for s in eng.user_snapshots(vm.id)} == {
        live.id,
        foreign_host.id,
        theirs.id,
        locked.id,
        older.id,
        user.id,
        lookalike.id,
    }
    # Once that mount has ended, its snapshot is a dead mount's leftover.
    live_mount.release()
    done = await collect_garbage(eng, journal, config=cfg)
    assert f"removed snapshot {locked.id} of VM {vm.id} ({locked.description})" in done
    assert locked.id not in {s.id for s in eng.user_snapshots(vm.id)}
    # The other installation's own gc takes its leftover.
    other_journal = Journal(tmp_path / "other-state-dir" / "j.json")
    done = await collect_garbage(eng, other_journal, config=cfg)
    assert f"removed snapshot {theirs.id} of VM {vm.id} ({theirs.description})" in done
    assert {s.id for s in eng.user_snapshots(vm.id)} == {
        live.id,
        foreign_host.id,
        older.id,
        user.id,
        lookalike.id,
    }


async def test_gc_cleans_journal_entries_of_dead_processes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    eng = FakeEngine(latency=ENGINE_LIKE)
    vm = eng.add_vm("v1")
    disk_id = eng.disk_ids(vm.id)[0]
    journal = Journal(tmp_path / "j.json")
    me = procid.current()
    ghost = me.__class__(me.host, me.boot_id, dead_pid(), 12345)
    desc = f"{ARTIFACT_MARKER} g1 host={me.host} pid={ghost.pid} {now_iso()}"
    snap = await eng.create_snapshot(vm.id, description=desc)
    t = await eng.start_transfer(snapshot_image_id=eng.snapshot_volumes[snap.id][disk_id])
    journal.put(
        JournalEntry(
            session_id="g1",
            process=ghost,
            owner_kind="vm",
            owner_id=vm.id,
            owner_name="v1",
            started=now_iso(),
            snapshot_description=desc,
            snapshot_id=snap.id,
            transfer_ids=(t.id,),
        )
    )
    # A live session's entry (this process) is never touched.
    live_desc = f"{ARTIFACT_MARKER} l1 host={me.host} pid={me.pid} {now_iso()}"
    vm2 = eng.add_vm("v2", seed=2)
    live_snap = await eng.create_snapshot(vm2.id, description=live_desc)
    journal.put(
        JournalEntry(
            session_id="l1",
            process=me,
            owner_kind="vm",
            owner_id=vm2.id,
            owner_name="v2",
            started=now_iso(),
            snapshot_description=live_desc,
            snapshot_id=live_snap.id,
        )
    )
    lines = await collect_garbage(eng, journal, config=make_config())
    assert lines[0].startswith(f"cancelled transfer {t.id} of session g1")
    assert lines[1].startswith(f"removed snapshot {snap.id} of VM v1")
    assert eng.transfers[t.id].phase == "finished_failure"
    assert eng.user_snapshots(vm.id) == []
    assert [e.session_id for e in journal.entries()] == ["l1"]
    assert [s.id for s in eng.user_snapshots(vm2.id)] == [live_snap.id]


async def test_gc_finds_a_snapshot_whose_id_was_never_journaled(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    eng = FakeEngine(latency=ENGINE_LIKE)
    vm = eng.add_vm("v1")
    journal = Journal(tmp_path / "j.json")
    me = procid.current()
    ghost = me.__class__(me.host, "old-boot", me.pid, me.start_ticks)  # previous boot
    desc = f"{ARTIFACT_MARKER} g2 host={me.host} pid={me.pid} 2001-01-01T00:00:00Z"
    snap = await eng.create_snapshot(vm.id, description=desc)
    journal.put(
        JournalEntry(
            session_id="g2",
            process=ghost,
            owner_kind="vm",
            owner_id=vm.id,
            owner_name="v1",
            started=now_iso(),
            snapshot_description=desc,
        )
    )
    lines = await collect_garbage(eng, journal, config=make_config())
    assert lines == [f"removed snapshot {snap.id} of VM v1 (session g2 of pid {me.pid} (vm v1))"]
    assert eng.user_snapshots(vm.id) == [] and journal.entries() == []


async def test_gc_leaves_journal_entries_of_a_live_mount_or_another_installation(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A journal entry whose pid looks dead from here is still left alone while its mount
    instance holds its lock (another pid namespace on the same state directory), and one
    that names another installation is never taken."""
    eng = FakeEngine(latency=ENGINE_LIKE)
    vm = eng.add_vm("v1")
    journal = Journal(tmp_path / "j.json")
    mount = Installation(tmp_path)
    assert mount.hold()
    me = procid.current()
    ghost = me.__class__(me.host, me.boot_id, dead_pid(), 12345)
    desc = owned("c1", mount.ownership(), pid=ghost.pid)
    snap = await eng.create_snapshot(vm.id, description=desc)
    base = JournalEntry(
        session_id="c1",
        process=ghost,
        owner_kind="vm",
        owner_id=vm.id,
        owner_name="v1",
        started=now_iso(),
        snapshot_description=desc,
        snapshot_id=snap.id,
        installation=mount.id,
        instance=mount.instance,
    )
    journal.put(base)
    other = "0123456789abcdef"
    journal.put(
        JournalEntry(
            session_id="x1",
            process=ghost,
            owner_kind="vm",
            owner_id=vm.id,
            owner_name="v1",
            started=now_iso(),
            installation=other,
        )
    )
    lines = await collect_garbage(eng, journal, config=make_config())
    assert lines == [
        f"left alone: session x1 in the journal (installation {other}, not {journal.installation.id})"
    ]
    assert [s.id for s in eng.user_snapshots(vm.id)] == [snap.id]
    mount.release()  # that mount has ended
    lines = await collect_garbage(eng, journal, config=make_config())
    assert f"removed snapshot {snap.id} of VM v1 (session c1 of pid {ghost.pid} (vm v1))" in lines
    assert eng.user_snapshots(vm.id) == []
    assert [e.session_id for e in journal.entries()] == ["x1"]


async def test_gc_leaves_the_kept_snapshot_of_an_incremental_chain_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The snapshot a snapshot-chain set keeps as the next set's base was made by a session
    that is long gone (and may still be in a dead mount's journal entry): it is intentional
    state, recorded in the chain state, and neither the journal nor the scan removes it;
    the dead session's other leftovers still go."""
    eng = FakeEngine(latency=ENGINE_LIKE)
    vm = eng.add_vm("v1")
    journal = Journal(tmp_path / "j.json")
    dead_mount = Ownership(journal.installation.id, new_id())
    gone = dead_pid()
    kept = add_snapshot(eng, vm.id, owned("k1", dead_mount, pid=gone))
    stale = add_snapshot(eng, vm.id, owned("k0", dead_mount, pid=gone))
    me = procid.current()
    journal.put(
        JournalEntry(
            session_id="k1",
            process=me.__class__(me.host, me.boot_id, gone, 12345),
            owner_kind="vm",
            owner_id=vm.id,
            owner_name="v1",
            started=now_iso(),
            snapshot_description=kept.description,
            snapshot_id=kept.id,
        )
    )
    cfg = make_config()

    planned = await collect_garbage(
        eng, journal, config=cfg, dry_run=True, kept_snapshot_ids={kept.id}
    )
    assert planned == [
        f"left alone: snapshot {kept.id} of VM {vm.id} (kept as the base of the VM's next "
        "incremental set)",
        f"would remove snapshot {stale.id} of VM {vm.id} ({stale.description})",
    ]
    done = await collect_garbage(eng, journal, config=cfg, kept_snapshot_ids={kept.id})
    assert f"removed snapshot {stale.id} of VM {vm.id} ({stale.description})" in done
    assert [s.id for s in eng.user_snapshots(vm.id)] == [kept.id]
    assert journal.entries() == []  # the entry is done with: its snapshot is not its to remove
    # Without the chain's word, the same snapshot is a dead session's leftover.
    assert await collect_garbage(eng, journal, config=cfg) == [
        f"removed snapshot {kept.id} of VM {vm.id} ({kept.description})"
    ]
    assert eng.user_snapshots(vm.id) == []
