"""One restore's trouble stays in that restore, through ``rhvfs.fs.Operations``.

- An unexpected exception (not an rhvfs error) in a restore's background task
  or in a filesystem call into it fails that restore (EIO to the caller, one
  line in ``.status``), never the manager's nursery: another restore of the
  same mount is done meanwhile.
- Configuration files of every restore share one memory budget
  (``staging_memory``): a write past it is ENOSPC, its restore fails saying so,
  and the memory comes back (a new restore can use it).
- Big inputs are parsed in a worker thread, the event loop keeps running.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.lowlevel

from rhvfs.backupset import parse_ovf
from rhvfs.sessions.restore._memory import IN_FLIGHT_RESERVE, ConfigMemory
from rhvfs.sessions.restore._offload import OFFLOAD_BYTES, parse
from tests.support.fake_engine import FakeEngine
from tests.support.fs_ops import CTX, lookup, make_ops, read_status, wait_status
from tests.support.fuzz_inputs import put, tiny_set

MiB = 1024 * 1024


async def _restore_ok(ops: pyfuse3.Operations, manager: object, name: str) -> None:
    restore = await lookup(ops, "/restore")  # type: ignore[arg-type]
    d = await ops.mkdir(restore.st_ino, name.encode(), 0o755, CTX)
    for fname, data in tiny_set().items():
        assert await put(ops, d.st_ino, fname, data) == []  # type: ignore[arg-type]
    status = await wait_status(ops, manager, name, d.st_ino)  # type: ignore[arg-type]
    assert status["phase"] == "done", status["error"]


@pytest.mark.allow_log("rhvfs.sessions.restore._containment", "ERROR", match="failed unexpectedly")
async def test_a_crash_in_a_background_task_fails_its_restore_only(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ops, manager = await make_ops(nursery, tmp_path, FakeEngine())
    restore = await lookup(ops, "/restore")
    d = await ops.mkdir(restore.st_ino, b"bad", 0o755, CTX)
    session = manager.get("bad")

    async def boom() -> None:
        raise ZeroDivisionError("a bug")

    session.services.spawn(boom)
    with trio.fail_after(5):
        await session.wait_finished()
    status = await read_status(ops, d.st_ino)
    assert status["phase"] == "failed" and status["errno"] == "EIO"
    assert status["error"] == "internal error: ZeroDivisionError: a bug"
    await _restore_ok(ops, manager, "good")  # the nursery and the mount live on


@pytest.mark.allow_log("rhvfs.sessions.restore._containment", "ERROR", match="failed unexpectedly")
@pytest.mark.allow_log("rhvfs.fs", "WARNING", match="internal error")
async def test_a_crash_in_a_filesystem_call_fails_its_restore_with_eio(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, manager = await make_ops(nursery, tmp_path, FakeEngine())
    restore = await lookup(ops, "/restore")
    d = await ops.mkdir(restore.st_ino, b"bad", 0o755, CTX)
    session = manager.get("bad")

    async def broken_write(f: object, offset: int, data: bytes) -> int:
        raise KeyError("lost")

    monkeypatch.setattr(session, "write", broken_write)
    assert await put(ops, d.st_ino, "manifest.json", b"{}") == [errno.EIO]
    with trio.fail_after(5):
        await session.wait_finished()
    status = await read_status(ops, d.st_ino)
    assert status["phase"] == "failed" and status["error"] == "internal error: KeyError: 'lost'"
    await _restore_ok(ops, manager, "good")


@pytest.mark.allow_log("rhvfs.fs", "WARNING", match="restore memory full")
async def test_configuration_files_share_one_memory_budget(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ops, manager = await make_ops(nursery, tmp_path, FakeEngine())
    manager.config_memory = ConfigMemory(IN_FLIGHT_RESERVE + 8 * MiB)  # files may hold 8 MiB
    restore = await lookup(ops, "/restore")
    a = await ops.mkdir(restore.st_ino, b"a", 0o755, CTX)
    b = await ops.mkdir(restore.st_ino, b"b", 0o755, CTX)
    blob = b"x" * (3 * MiB)
    assert await put(ops, a.st_ino, "vm--s1.xml", blob) == []
    assert await put(ops, b.st_ino, "vm--s2.xml", blob) == []
    assert manager.config_memory.used_bytes > 6 * MiB
    assert await put(ops, b.st_ino, "vm--s3.xml", blob) == [errno.ENOSPC]  # 9 MiB > 8
    with trio.fail_after(5):
        await manager.get("b").wait_finished()
    status = await read_status(ops, b.st_ino)
    assert status["phase"] == "failed" and status["errno"] == "ENOSPC"
    assert "staging_memory" in status["error"] and status["error"].startswith("'vm--s3.xml'")
    # b failed: its memory is back; a keeps its file and can read it back
    assert manager.config_memory.used_bytes < 4 * MiB
    assert await put(ops, a.st_ino, "vm--s4.xml", blob) == []
    a_file = await ops.lookup(a.st_ino, b"vm--s1.xml", CTX)
    info = await ops.open(a_file.st_ino, 0, CTX)
    assert await ops.read(info.fh, 0, 16) == b"x" * 16
    await ops.release(info.fh)
    await ops.rmdir(restore.st_ino, b"a", CTX)
    assert manager.config_memory.used_bytes == 0


async def test_big_inputs_are_parsed_off_the_event_loop() -> None:
    ovf = tiny_set()["vm.ovf"]
    big = ovf.replace(b"</ovf:Envelope>", b"<!--" + b" " * OFFLOAD_BYTES + b"--></ovf:Envelope>")
    threads: list[str] = []
    ticks = 0

    def parse_and_note(data: bytes) -> object:
        threads.append(threading.current_thread().name)
        return parse_ovf(data)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        small = await parse(parse_and_note, ovf, size=len(ovf))
        large = await parse(parse_and_note, big, size=len(big))
        nursery.cancel_scope.cancel()
    assert small == large
    assert threads[0] == threading.current_thread().name  # small: inline
    assert threads[1] != threading.current_thread().name  # big: a worker thread
    assert ticks > 1
