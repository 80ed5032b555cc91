"""Restores under the mount's ``max_transfers`` (issue 12): each open upload transfer holds a
place; a set with more disks than places completes; backup reads and restores share the places.

The engine is ``FakeEngine``: ``peak_open_transfers`` is the most transfers (downloads and
uploads) in phase ``transferring`` at once. MockClock: the quiet period before an idle upload
gives its place away runs instantly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
import trio.testing

from rhvfs.backupset import DiskKey
from rhvfs.errors import RestoreError
from rhvfs.sessions import BackupManager, Journal, Owner
from rhvfs.sessions.core import EngineLimits
from tests.support import restore_rig
from tests.support.backup_sets import make_set
from tests.support.configs import make_config
from tests.support.data import MiB, sha
from tests.support.fake_dataplane import FakeDataPlane
from tests.support.fake_engine import FakeEngine
from tests.support.fs_ops import CTX, lookup, make_ops, put_file, wait_status


async def test_a_three_disk_set_restores_through_one_transfer_place(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    engine = FakeEngine()
    limits = EngineLimits.from_config(make_config(max_transfers=1))
    ops, manager = await make_ops(nursery, tmp_path, engine, limits=limits)
    restore = await lookup(ops, "/restore")
    d = await ops.mkdir(restore.st_ino, b"myvm", 0o755, CTX)
    s = make_set(sizes=(3 * MiB, 1 * MiB, 2 * MiB))
    for name, data in s.files.items():
        await put_file(ops, d.st_ino, name, data)
    status = await wait_status(ops, manager, "myvm", d.st_ino)
    assert status["phase"] == "done", status["error"]
    assert len(s.manifest["disks"]) == 3
    for disk in s.manifest["disks"]:
        assert sha(engine.disk_bytes(disk["id"])) == sha(s.files[disk["file"]])
    assert engine.peak_open_transfers == 1
    uploads = [t for t in engine.transfers.values() if t.direction == "upload"]
    assert {t.phase for t in uploads} == {"finished_success"}
    # each disk's image was complete before the next one's upload could start, so each gave
    # its place away (its transfer finalized); the raw disks (their storage does not read
    # zeros) took a place again for their final zeroing: a new upload transfer each
    assert len(uploads) > 3
    stats = limits.transfers.status()
    assert (stats["in_use"], stats["peak"], stats["queued"]) == (0, 1, 0)
    assert stats["waited"] >= 2


@pytest.mark.parametrize("max_transfers", [1, 2])
async def test_backup_reads_and_a_restore_share_max_transfers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, max_transfers: int
) -> None:
    engine = FakeEngine()
    config = make_config(max_transfers=max_transfers)
    limits = EngineLimits.from_config(config)
    plane = FakeDataPlane(engine)
    backups = BackupManager(
        engine,
        config,
        journal=Journal(tmp_path / "journal.json"),
        imageio_opener=plane.opener,
        reader_factory=plane.reader_factory,
        gc_on_start=False,
        limits=limits,
    )
    vm = engine.add_vm("web01", disks=[("a", 2 * MiB), ("b", 3 * MiB), ("c", 1 * MiB)])
    owner = Owner("vm", vm.id, vm.name)
    disk_ids = engine.disk_ids(vm.id)
    want_backup = {d: sha(bytes(engine.volumes[engine.active[d]])) for d in disk_ids}
    s = make_set(sizes=(2 * MiB, 1 * MiB, 3 * MiB))
    got_backup: dict[str, str] = {}
    waited_for: set[str] = set()

    async def read_vm() -> None:
        """tar: each disk to its end, one after the other."""
        for d in disk_ids:
            h = await backups.open(owner, DiskKey(d).encode())
            data = bytearray()
            while chunk := await backups.read(h, len(data), 256 * 1024):
                data += chunk
            got_backup[d] = sha(bytes(data))
            await backups.release(h)

    async def watch() -> None:
        while True:
            for q in backups.status()["queued"]:
                waited_for.add("restore" if "restore" in q else "backup")
            assert limits.transfers.in_use <= max_transfers
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(backups.run)
        h = await restore_rig.start(nursery, engine, tmp_path, config, limits=limits)
        nursery.start_soon(watch)
        session = h.manager.create("myvm")
        async with trio.open_nursery() as tools:
            tools.start_soon(read_vm)
            tools.start_soon(h.copy, session, s)
        doc = await h.settle(session)
        nursery.cancel_scope.cancel()

    assert doc["phase"] == "done", doc["error"]
    assert got_backup == want_backup
    assert restore_rig.restored(engine, "myvm") == {
        disk["alias"]: sha(s.files[disk["file"]]) for disk in s.manifest["disks"]
    }
    assert engine.peak_open_transfers == max_transfers
    assert not engine.open_transfers() and not engine.user_snapshots(vm.id)
    assert limits.transfers.in_use == 0
    if max_transfers == 1:
        assert waited_for == {"restore", "backup"}  # both showed in status.json's queue


async def test_a_paused_restore_gives_its_transfer_to_a_backup_read(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """max_transfers=1: a tool writes half an image and pauses with the file open; a backup
    read of another VM gets the place (the upload is finalized), and the restore goes on
    afterwards with a new transfer: both data sets are intact."""
    engine = FakeEngine()
    config = make_config(max_transfers=1)
    limits = EngineLimits.from_config(config)
    plane = FakeDataPlane(engine)
    backups = BackupManager(
        engine,
        config,
        journal=Journal(tmp_path / "journal.json"),
        imageio_opener=plane.opener,
        reader_factory=plane.reader_factory,
        gc_on_start=False,
        limits=limits,
    )
    vm = engine.add_vm("web01", disks=[("a", 2 * MiB)])
    (disk_id,) = engine.disk_ids(vm.id)
    want = sha(bytes(engine.volumes[engine.active[disk_id]]))
    s = make_set(sizes=(4 * MiB,))
    (image,) = s.image_names()
    data = s.files[image]
    async with trio.open_nursery() as nursery:
        await nursery.start(backups.run)
        h = await restore_rig.start(nursery, engine, tmp_path, config, limits=limits)
        session = h.manager.create("myvm")
        for name in ("vm.ovf", "manifest.json"):
            await h.write_file(session, name, s.files[name])
        f = session.new_file(image)
        session.open(f)
        half = len(data) // 2
        await session.write(f, 0, data[:half])
        assert limits.transfers.in_use == 1  # the restore's upload holds the place
        # the tool pauses; a backup of another VM reads meanwhile
        h_read = await backups.open(Owner("vm", vm.id, vm.name), DiskKey(disk_id).encode())
        got = bytearray()
        while chunk := await backups.read(h_read, len(got), 256 * 1024):
            got += chunk
        await backups.release(h_read)
        assert sha(bytes(got)) == want
        # the tool goes on: its upload waits for the place the read gives back
        await session.write(f, half, data[half:])
        await session.flush(f)
        await session.release(f)
        doc = await h.settle(session)
        nursery.cancel_scope.cancel()
    assert doc["phase"] == "done", doc["error"]
    assert restore_rig.restored(engine, "myvm") == {"disk0": sha(data)}
    uploads = [t for t in engine.transfers.values() if t.direction == "upload"]
    assert len(uploads) >= 2 and {t.phase for t in uploads} == {"finished_success"}
    assert engine.peak_open_transfers == 1


async def test_a_restore_cancelled_while_waiting_for_a_place_rolls_back_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """max_transfers=1 held by a busy reader: the restore's upload waits in line; rmdir of
    the restore fails it, the waiting write gives up, and the rollback does not wait for the
    place (the disk it created is removed, nothing is left queued)."""
    engine = FakeEngine()
    config = make_config(max_transfers=1)
    limits = EngineLimits.from_config(config)
    busy = limits.transfers.request({"session_id": "a backup read in progress"})
    assert busy.state == "held"
    s = make_set(sizes=(1 * MiB,))
    (image,) = s.image_names()
    failures: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        h = await restore_rig.start(nursery, engine, tmp_path, config, limits=limits)
        session = h.manager.create("myvm")
        for name in ("vm.ovf", "manifest.json"):
            await h.write_file(session, name, s.files[name])
        f = session.new_file(image)
        session.open(f)

        async def write() -> None:
            try:
                await session.write(f, 0, s.files[image][: 128 * 1024])
            except Exception as e:
                failures.append(e)

        nursery.start_soon(write)
        with trio.fail_after(30):
            while not limits.transfers.queued():  # noqa: ASYNC110 - no event to wait on
                await trio.sleep(0.01)
        assert limits.transfers.queued()[0]["restore"] == "restore/myvm"
        h.manager.remove("myvm")
        with trio.fail_after(30):
            await session.wait_finished()
        nursery.cancel_scope.cancel()
    assert session.phase == "failed"
    assert len(failures) == 1 and isinstance(failures[0], RestoreError)  # the write gave up
    assert session.error is not None and "cancelled" in session.error
    assert limits.transfers.queued() == [] and limits.transfers.in_use == 1  # the reader's
    assert engine.disks == {} and not engine.transfers


@pytest.mark.allow_log("rhvfs.sessions.restore", "WARNING", match="finaliz")
async def test_a_parked_upload_that_does_not_finalize_fails_the_restore_cleanly(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """max_transfers=1: the first disk's upload gives way to the second, but the engine
    refuses to finalize it: the restore fails and leaves no disk and no open transfer."""
    engine = FakeEngine()
    config = make_config(max_transfers=1)
    limits = EngineLimits.from_config(config)
    s = make_set(sizes=(1 * MiB, 1 * MiB))
    engine.fail_on.add("finalize_transfer")
    async with trio.open_nursery() as nursery:
        h = await restore_rig.start(nursery, engine, tmp_path, config, limits=limits)
        session = h.manager.create("myvm")
        with contextlib.suppress(RestoreError):  # the tool sees the failure, or is done first
            await h.copy(session, s)
        doc = await h.settle(session)
        nursery.cancel_scope.cancel()
    assert doc["phase"] == "failed"
    assert "finalizing the parked upload" in doc["error"]
    assert engine.disks == {} and not engine.open_transfers()
    assert limits.transfers.in_use == 0 and limits.transfers.queued() == []
