"""Untrusted input cannot hurt the mount: damaged files fed into ``restore/`` through
``rhvfs.fs.Operations`` (no kernel), as a copy tool writes them.

Each hypothesis example runs a fresh restore manager on the fake engine, writes
one set with one damaged file -- the OVF or the manifest of a full set, the
options file, or the qcow2 delta of a chain -- and asserts: every call either
worked or answered an errno (never an exception of another kind); the bad
restore ends cleanly (done, or failed with one line in ``.status``, an errno
named there, and nothing left on the engine), or, when the damage left it
waiting for files that will never come, is cancelled cleanly by ``rmdir``;
and the mount keeps serving: the browsing tree answers and a second, valid
restore in the same mount is done with the right bytes. Any exception the
restore did not expect would also be logged as an error, which fails the test.
Examples are derandomized and the database is off (``tests/conftest.py``). Each
example runs on trio's ``MockClock``: how long the case waits for a restore is virtual
time, so a loaded machine cannot make a restore look stuck (or half rolled back).
"""

from __future__ import annotations

import errno
import functools
import tempfile
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhvfs.sessions.restore import Phase
from tests.support.data import sha
from tests.support.fake_engine import FakeEngine
from tests.support.fs_ops import CTX, lookup, make_ops, read_status
from tests.support.fuzz_inputs import (
    manifest_inputs,
    options_inputs,
    ovf_inputs,
    put,
    qcow2_inputs,
    tiny_chain,
    tiny_set,
)

#: What a refused call may answer.
ALLOWED = {
    errno.EINVAL,
    errno.EIO,
    errno.EFBIG,
    errno.ENOSPC,
    errno.EEXIST,
    errno.EBUSY,
    errno.ENOTSUP,
    errno.ECANCELED,
    errno.EACCES,
    errno.EROFS,
}
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


async def _serves(ops: object, manager: object, engine: FakeEngine) -> None:
    """The mount still answers: the browsing tree lists, and a valid restore is done."""
    from rhvfs.fs import Operations
    from rhvfs.sessions.restore import RestoreManager

    assert isinstance(ops, Operations) and isinstance(manager, RestoreManager)
    vms = await lookup(ops, "/vms")
    listing = await ops.opendir(vms.st_ino, CTX)
    assert ops.vfs.readdir(listing)
    ops.vfs.releasedir(listing)
    restore = await lookup(ops, "/restore")
    good = await ops.mkdir(restore.st_ino, b"good", 0o755, CTX)
    files = tiny_set()
    for name, data in sorted(files.items(), key=lambda x: not x[0].endswith(".json")):
        assert await put(ops, good.st_ino, name, data) == []  # manifest first: no staging
    with trio.fail_after(10):
        await manager.get("good").wait_finished()
    status = await read_status(ops, good.st_ino)
    assert status["phase"] == "done", status["error"]
    disk = status["disks"][0]
    assert sha(engine.disk_bytes(disk["new_disk_id"])) == sha(files[disk["file"]])


async def _case(files: list[tuple[str, bytes]], tmp: Path, *, grace: float = 0.01) -> None:
    engine = FakeEngine()
    async with trio.open_nursery() as nursery:
        ops, manager = await make_ops(nursery, tmp, engine)
        manager.close_grace_s = grace
        restore = await lookup(ops, "/restore")
        bad = await ops.mkdir(restore.st_ino, b"bad", 0o755, CTX)
        for name, data in files:
            for number in await put(ops, bad.st_ino, name, data):
                assert number in ALLOWED, (name, errno.errorcode.get(number, number))
        session = manager.get("bad")
        # Trio's clock is a MockClock (``_run``): it moves only when every task waits, so a
        # restore that can finish has done so long before this (virtual) half second, and
        # one still receiving waits for files the damage made it expect -- however slow
        # the machine is.
        with trio.move_on_after(0.5):
            await session.wait_finished()
        if session.phase.final:  # failed: its rollback ends too
            with trio.fail_after(5):
                await session.wait_finished()
        status = await read_status(ops, bad.st_ino)
        if not session.phase.final:  # waiting for files the damage made it expect
            await ops.rmdir(restore.st_ino, b"bad", CTX)
            with trio.fail_after(5):
                await session.wait_finished()
            assert session.phase is Phase.FAILED
        elif status["phase"] == "failed":
            assert getattr(errno, status["errno"]) in ALLOWED, status
            assert status["error"] and "\n" not in status["error"]
            assert len(status["error"]) < 2000
            assert status["settled"]
            assert engine.disks == {} and engine.vms == {}, "the failed restore left objects"
        else:
            assert status["phase"] == "done"
            await ops.rmdir(restore.st_ino, b"bad", CTX)  # its VM would clash with the next
            for vm_id in list(engine.vms):
                await engine.remove_vm(vm_id)
        await _serves(ops, manager, engine)
        nursery.cancel_scope.cancel()


def _run(files: list[tuple[str, bytes]], grace: float = 0.01) -> None:
    with tempfile.TemporaryDirectory(prefix="rhvfs-fuzz-") as tmp:
        # Virtual time: the case's waits and the restore's timers never race the machine's
        # load (nothing here runs in a thread: every input is parsed inline).
        trio.run(
            functools.partial(_case, files, Path(tmp), grace=grace),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )


def _full_set_with(
    name: str, data: bytes, order: list[str] | None = None
) -> list[tuple[str, bytes]]:
    files = dict(tiny_set())
    files[name] = data
    return [(n, files[n]) for n in (order or list(files))]


@settings(FUZZ, max_examples=250)
@given(ovf_inputs(), st.booleans())
@pytest.mark.allow_log("rhvfs.fs", "WARNING")
def test_damaged_ovf_fails_its_restore_only(ovf: bytes, ovf_first: bool) -> None:
    order = ["vm.ovf", "manifest.json"] if ovf_first else ["manifest.json", "vm.ovf"]
    rest = [n for n in tiny_set() if n not in order]
    _run(_full_set_with("vm.ovf", ovf, order + rest))


@settings(FUZZ, max_examples=250)
@given(manifest_inputs())
@pytest.mark.allow_log("rhvfs.fs", "WARNING")
def test_damaged_manifest_fails_its_restore_only(manifest: bytes) -> None:
    _run(_full_set_with("manifest.json", manifest))


@settings(FUZZ, max_examples=120)
@given(options_inputs())
@pytest.mark.allow_log("rhvfs.fs", "WARNING")
def test_random_options_file_fails_its_restore_only(options: bytes) -> None:
    files = [("rhvfs-restore.conf", options), *tiny_set().items()]
    _run(files)


@settings(FUZZ, max_examples=250)
@given(qcow2_inputs())
@pytest.mark.allow_log("rhvfs.fs", "WARNING")
def test_damaged_qcow2_delta_fails_its_chain_restore_only(delta: bytes) -> None:
    c0, c1, _ = tiny_chain()
    files = [*c0.items(), *((n, delta if n.endswith(".qcow2") else d) for n, d in c1.items())]
    _run(files)


@settings(FUZZ, max_examples=40)
@given(ovf_inputs())
@pytest.mark.allow_log("rhvfs.fs", "WARNING")
def test_damaged_ovf_of_a_chain_fails_its_restore_only(ovf: bytes) -> None:
    c0, c1, _ = tiny_chain()
    files = [*c0.items(), *((n, ovf if n.endswith(".ovf") else d) for n, d in c1.items())]
    _run(files)


def test_the_valid_inputs_restore() -> None:
    """The undamaged files of each kind restore (the fuzzing starts from working sets)."""
    _run(list(tiny_set().items()))
    c0, c1, image = tiny_chain()

    async def chain(tmp: Path) -> None:
        engine = FakeEngine()
        async with trio.open_nursery() as nursery:
            ops, manager = await make_ops(nursery, tmp, engine)
            manager.close_grace_s = 0.01
            restore = await lookup(ops, "/restore")
            d = await ops.mkdir(restore.st_ino, b"chain", 0o755, CTX)
            for name, data in [*c0.items(), *c1.items()]:
                assert await put(ops, d.st_ino, name, data) == []
            with trio.fail_after(10):
                await manager.get("chain").wait_finished()
            status = await read_status(ops, d.st_ino)
            assert status["phase"] == "done", status["error"]
            assert engine.disk_bytes(status["disks"][0]["new_disk_id"]) == image
            nursery.cancel_scope.cancel()

    with tempfile.TemporaryDirectory(prefix="rhvfs-fuzz-") as tmp:
        trio.run(chain, Path(tmp), clock=trio.testing.MockClock(autojump_threshold=0))
