"""Ownership of leftovers against the simulator (issue 11, item 4).

Two installations (two state directories) on this one host share the
simulator: gc of one never touches the other's snapshots, live or not, even
though hostname and a dead-looking pid would have fooled the old rule. A
cleanup that fails in a live manager (an engine error injected with the
simulator's faults) is listed in ``status()["pending_cleanups"]`` and retried
in the background until it succeeds, without a remount.

Every test leaves the shared simulator as it found it.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from rhvfs import ARTIFACT_MARKER
from rhvfs.backupset import ConfigKey, DiskKey
from rhvfs.config import Config, load_config
from rhvfs.engine import Engine, open_engine
from rhvfs.retry import RetryPolicy, poll
from rhvfs.sessions import BackupManager, Journal, JournalEntry, Owner
from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._gc import artifact_description
from rhvfs.sessions.core._installation import Ownership, new_id

FAST_POLL = RetryPolicy.for_polling(interval_s=0.05, max_interval_s=0.25, timeout_s=120.0)
WAIT = RetryPolicy.for_polling(interval_s=0.1, max_interval_s=0.5, timeout_s=120.0)
GRACE_S = 0.5
SNAPSHOT_PATH = "/ovirt-engine/api/vms/*/snapshots/*"


def sim_config(sim: Any, **overrides: Any) -> Config:
    values: dict[str, Any] = {"grace_period": GRACE_S, "system_interval": 0.2}
    values.update(overrides)
    return load_config(section=sim.section, config_file=sim.conf_file, overrides=values)


@asynccontextmanager
async def running_manager(
    engine: Engine, config: Config, state_dir: Path
) -> AsyncIterator[BackupManager]:
    """A BackupManager of the installation in ``state_dir``, running (as in a mount)."""
    journal = Journal.for_engine(config.engine_url, state_dir=state_dir)
    manager = BackupManager(engine, config, journal=journal, gc_on_start=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield manager
        nursery.cancel_scope.cancel()


async def owner_of(engine: Engine, name: str) -> Owner:
    vm = await engine.find_vm(name)
    assert vm is not None
    return Owner(kind="vm", id=vm.id, name=vm.name)


async def snapshot_ids(engine: Engine, owner: Owner) -> set[str]:
    return {s.id for s in await engine.list_snapshots(owner.id)}


async def dead_pid() -> int:
    proc = await trio.lowlevel.open_process(["true"])
    await proc.wait()
    return proc.pid


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` (the engine, the status report) until it holds, at most 120 s."""

    async def probe() -> bool | None:
        return True if await condition() else None

    await poll(probe, policy=WAIT, what=what, timeout_error=AssertionError)


def open_transfers(sim: Any) -> list[dict[str, Any]]:
    return [t for t in sim.admin.transfers() if not str(t["phase"]).startswith("finished")]


async def test_gc_of_one_installation_never_touches_anothers_snapshots(
    sim: Any, tmp_path: Path
) -> None:
    config = sim_config(sim, system_timeout=60.0)
    state_a, state_b = tmp_path / "a", tmp_path / "b"
    async with (
        open_engine(config, poll=FAST_POLL) as engine,
        running_manager(engine, config, state_a) as a,
        running_manager(engine, config, state_b) as b,
    ):
        inst_a, inst_b = a.journal.installation, b.journal.installation
        assert inst_a.id != inst_b.id and procid.hostname() == socket.gethostname()
        owner = await owner_of(engine, "myvm0")
        before = await snapshot_ids(engine, owner)

        # B's live session: a snapshot held while a file of the set is open.
        handle = await b.open(owner, ConfigKey("vm.ovf").encode())
        (live,) = (await snapshot_ids(engine, owner)) - before
        # What a killed mount of B left: a journal entry of a dead pid, and its snapshot.
        pid = await dead_pid()
        ghost = procid.ProcessIdentity(procid.hostname(), procid.boot_id(), pid, 1)
        b_dead = Ownership(inst_b.id, new_id())
        desc = artifact_description("bkilled00001", ghost, datetime.now(UTC), owner=b_dead)
        b_leftover = await engine.create_snapshot(owner.id, description=desc)
        b.journal.put(
            JournalEntry(
                session_id="bkilled00001",
                process=ghost,
                owner_kind="vm",
                owner_id=owner.id,
                owner_name=owner.name,
                started=datetime.now(UTC).isoformat(),
                snapshot_description=desc,
                snapshot_id=b_leftover.id,
                installation=inst_b.id,
                instance=b_dead.instance,
            )
        )
        # An older version's snapshot (no installation id) with the same host and a dead pid.
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        older = await engine.create_snapshot(
            owner.id,
            description=f"{ARTIFACT_MARKER} oldv00000001 host={procid.hostname()} pid={pid} {stamp}",
        )
        try:
            # A dead mount of A left a snapshot too (no journal entry: only its description).
            a_dead = Ownership(inst_a.id, new_id())
            a_leftover = await engine.create_snapshot(
                owner.id,
                description=artifact_description(
                    "akilled00001", ghost, datetime.now(UTC), owner=a_dead
                ),
            )
            lines = await a.collect_garbage()
            assert (
                f"left alone: snapshot {live} of VM {owner.id} (made by installation {inst_b.id}, not {inst_a.id})"
                in lines
            )
            assert (
                f"left alone: snapshot {b_leftover.id} of VM {owner.id} (made by installation {inst_b.id}, not {inst_a.id})"
                in lines
            )
            assert (
                f"left alone: snapshot {older.id} of VM {owner.id} (no installation id, and not in this installation's journal)"
                in lines
            )
            assert any(
                line.startswith(f"removed snapshot {a_leftover.id} of VM {owner.id}")
                for line in lines
            )
            assert await snapshot_ids(engine, owner) == before | {live, b_leftover.id, older.id}

            # B's own gc takes its dead mount's leftover, never its live session's snapshot.
            lines = await b.collect_garbage()
            assert (
                f"removed snapshot {b_leftover.id} of VM myvm0 (session bkilled00001 of pid {pid} (vm myvm0))"
                in lines
            )
            assert not any(live in line for line in lines)
            assert await snapshot_ids(engine, owner) == before | {live, older.id}
            assert "bkilled00001" not in {e.session_id for e in b.journal.entries()}
            assert a.journal.entries() == []
        finally:
            await engine.remove_snapshot(owner.id, older.id)
            await b.release(handle)
        await wait_for(lambda: is_now(engine, owner, before), "B's session to end")
        assert open_transfers(sim) == []


async def is_now(engine: Engine, owner: Owner, expected: set[str]) -> bool:
    """The owner's snapshots are ``expected``."""
    return await snapshot_ids(engine, owner) == expected


@pytest.mark.allow_log(
    "rhvfs.sessions.full", "WARNING", match="removing snapshot .* failed|retrying in the background"
)
async def test_a_snapshot_removal_that_failed_is_retried_by_the_live_manager(
    sim: Any, tmp_path: Path
) -> None:
    config = sim_config(sim, system_timeout=60.0)
    async with (
        open_engine(config, poll=FAST_POLL) as engine,
        running_manager(engine, config, tmp_path) as manager,
    ):
        owner = await owner_of(engine, "myvm0")
        before = await snapshot_ids(engine, owner)
        entries = await manager.list_set(owner)
        disk = next(e for e in entries if e.disk_id)
        h = await manager.open(owner, disk.key)
        assert len(await manager.read(h, 0, 65536)) == 65536
        (snap,) = (await snapshot_ids(engine, owner)) - before
        # The engine refuses the removal (a final error, not retried by the session) until
        # the test has seen it handed over: no timing window.
        sim.admin.add_fault(
            "engine-error", method="DELETE", path=SNAPSHOT_PATH, status=400, times=1000
        )
        await manager.release(h)

        async def pending() -> bool:
            return bool(manager.status()["pending_cleanups"])

        async def no_pending() -> bool:
            return not manager.status()["pending_cleanups"]

        await wait_for(pending, "the failed cleanup to be handed over")
        (item,) = manager.status()["pending_cleanups"]
        assert (item["kind"], item["id"], item["vm_id"]) == ("snapshot", snap, owner.id)
        assert manager.status()["sessions"] == []  # the session has ended
        assert snap in await snapshot_ids(engine, owner)
        assert [e.snapshot_id for e in manager.journal.entries()] == [snap]
        sim.admin.clear_faults()
        # No remount: the manager retries on its own, and the snapshot goes.
        await wait_for(lambda: is_now(engine, owner, before), "the retried removal")
        await wait_for(no_pending, "the pending list to clear")
        assert manager.journal.entries() == []
        assert open_transfers(sim) == []


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
@pytest.mark.allow_log("rhvfs.sessions.core._cleanup", "WARNING", match="cancelling it")
@pytest.mark.allow_log(
    "rhvfs.sessions.full",
    "WARNING",
    match="ending transfer|removing snapshot .* failed|retrying in the background",
)
async def test_a_transfer_that_would_not_end_is_retried_then_the_snapshot(
    sim: Any, tmp_path: Path
) -> None:
    """Finalize and cancel both refused: the transfer stays, so the snapshot stays locked
    (409 until system_timeout); the manager ends the transfer, then removes the snapshot."""
    config = sim_config(sim, system_timeout=3.0)
    async with (
        open_engine(config, poll=FAST_POLL) as engine,
        running_manager(engine, config, tmp_path) as manager,
    ):
        owner = await owner_of(engine, "myvm0")
        before = await snapshot_ids(engine, owner)
        entries = await manager.list_set(owner)
        disk = next(e for e in entries if e.disk_id)
        assert disk.disk_id is not None
        expected = sim.admin.disk_sha256(disk.disk_id)
        h = await manager.open(owner, DiskKey(disk.disk_id).encode())
        data = bytearray()
        while part := await manager.read(h, len(data), 4 * 1024 * 1024):
            data += part
        assert hashlib.sha256(data).hexdigest() == expected
        (transfer,) = [t["id"] for t in open_transfers(sim)]
        # finalize and cancel refused until the test has seen the hand-over (no timing window:
        # the faults last until they are cleared)
        for verb in ("finalize", "cancel"):
            sim.admin.add_fault(
                "engine-error",
                method="POST",
                path=f"/ovirt-engine/api/imagetransfers/{transfer}/{verb}",
                status=400,
                times=1000,
            )
        await manager.release(h)

        async def handed_over() -> bool:
            return len(manager.status()["pending_cleanups"]) == 2

        await wait_for(handed_over, "the failed cleanup to be handed over")
        kinds = [(p["kind"], p["id"]) for p in manager.status()["pending_cleanups"]]
        (snap,) = (await snapshot_ids(engine, owner)) - before
        assert kinds == [("transfer", transfer), ("snapshot", snap)]  # in the order to end them
        sim.admin.clear_faults()
        await wait_for(lambda: is_now(engine, owner, before), "the retried cleanup")

        async def no_pending() -> bool:  # the engine may answer before the list is updated
            return not manager.status()["pending_cleanups"]

        await wait_for(no_pending, "the pending list to clear")
        assert open_transfers(sim) == []
        assert manager.journal.entries() == []
