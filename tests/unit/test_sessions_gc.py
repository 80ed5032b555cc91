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
from rhvfs.sessions.core._gc import collect_garbage, parse_description
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


def test_parse_description() -> None:
    info = parse_description(f"{ARTIFACT_MARKER} abc123 host=h1 pid=42 2026-01-02T03:04:05Z")
    assert info is not None
    assert (info.session_id, info.host, info.pid) == ("abc123", "h1", 42)
    assert info.created == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
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


async def test_gc_removes_only_dead_rhvfs_snapshots(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    eng = FakeEngine(latency=ENGINE_LIKE)
    vm = eng.add_vm("v1")
    me = socket.gethostname()
    dead = add_snapshot(eng, vm.id, f"{ARTIFACT_MARKER} s1 host={me} pid={dead_pid()} {now_iso()}")
    live = add_snapshot(eng, vm.id, f"{ARTIFACT_MARKER} s2 host={me} pid={os.getpid()} {now_iso()}")
    foreign_host = add_snapshot(
        eng, vm.id, f"{ARTIFACT_MARKER} s3 host=elsewhere pid=1 {now_iso()}"
    )
    user = add_snapshot(eng, vm.id, "before upgrade")
    lookalike = add_snapshot(eng, vm.id, f"{ARTIFACT_MARKER} but typed by a human")
    journal = Journal(tmp_path / "j.json")
    cfg = make_config()

    planned = await collect_garbage(eng, journal, config=cfg, dry_run=True)
    assert planned == [
        f"would remove snapshot {dead.id} of VM {vm.id} ({dead.description})",
        f"left alone: snapshot {foreign_host.id} of VM {vm.id} (made on host elsewhere)",
        f"left alone: snapshot {lookalike.id} of VM {vm.id} ({lookalike.description!r} is not a session description)",
    ]
    assert len(eng.user_snapshots(vm.id)) == 5

    done = await collect_garbage(eng, journal, config=cfg)
    assert done[0] == f"removed snapshot {dead.id} of VM {vm.id} ({dead.description})"
    assert {s.id for s in eng.user_snapshots(vm.id)} == {
        live.id,
        foreign_host.id,
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
