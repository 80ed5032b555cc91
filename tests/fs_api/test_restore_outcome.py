"""restore/ through rhvfs.fs.Operations: the tool sees the outcome; partial sets end.

The call that completes a set (cp's last close, tar's last utimes, rsync's
last rename, whichever file comes last) waits for the VM and fails with the
restore's errno; no other call blocks; past ``outcome_timeout_s`` it returns
and ``.status`` stays the authority. A set that lacks a disk ends after
``partial_set_timeout_s`` without activity: failed naming the disk, or
restored without it (``vm_missing_disks = skip``). Every test runs on
``MockClock(autojump_threshold=0)``: times are trio's, measured exactly.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from trio.testing import MockClock

from rhvfs.engine.types import Vm
from rhvfs.fs import Operations
from tests.support.backup_sets import DISK_IDS, SetFiles, make_set
from tests.support.data import sha
from tests.support.fake_engine import FakeEngine
from tests.support.fs_ops import CHUNK, CTX, fields, lookup, make_ops, put_file, wait_status

Put = Callable[[Operations, int, str, bytes], Awaitable[None]]


async def cp_put(ops: Operations, dir_ino: int, name: str, data: bytes) -> None:
    """cp -a: write, set mode and times through the descriptor, close."""
    await put_file(ops, dir_ino, name, data)


async def rsync_put(ops: Operations, dir_ino: int, name: str, data: bytes) -> None:
    """rsync -a: a temporary name, its times, then a rename."""
    await put_file(ops, dir_ino, name, data, temp=f".{name}.Xy12Ab")


async def tar_put(ops: Operations, dir_ino: int, name: str, data: bytes) -> None:
    """tar -x: write, close, then set the times by path (no descriptor)."""
    info, attr = await ops.create(
        dir_ino, name.encode(), 0o600, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CTX
    )
    for off in range(0, len(data), CHUNK):
        await ops.write(info.fh, off, data[off : off + CHUNK])
    await ops.flush(info.fh)
    await ops.release(info.fh)
    ea = pyfuse3.EntryAttributes()
    ea.st_mtime_ns = 1_600_000_000 * 10**9
    await ops.setattr(attr.st_ino, ea, fields(update_mtime=True), None, CTX)


TOOLS: dict[str, Put] = {"cp": cp_put, "tar": tar_put, "rsync": rsync_put}


def orders(s: SetFiles) -> dict[str, list[str]]:
    """Configuration last (the OVF completes the set) or images last (the last image does)."""
    return {
        "config-last": [*s.image_names(), "manifest.json", "vm.ovf", "vm.xml"],
        "images-last": ["vm.ovf", "vm.xml", "manifest.json", *s.image_names()],
    }


def completing_file(order: list[str]) -> str:
    return "vm.ovf" if order[-1] == "vm.xml" else order[-1]


class SlowVmEngine(FakeEngine):
    """VM creation takes ``vm_delay_s`` of trio's clock."""

    vm_delay_s = 0.0

    async def create_vm_from_ovf(
        self,
        *,
        ovf: str,
        cluster: str,
        name: str | None = None,
        regenerate_ids: bool = False,
        comment: str = "",
    ) -> Vm:
        await trio.sleep(self.vm_delay_s)
        return await super().create_vm_from_ovf(
            ovf=ovf, cluster=cluster, name=name, regenerate_ids=regenerate_ids, comment=comment
        )


async def start_dir(ops: Operations, name: str, options: str = "") -> int:
    restore = await lookup(ops, "/restore")
    ino = (await ops.mkdir(restore.st_ino, name.encode(), 0o755, CTX)).st_ino
    if options:
        await put_file(ops, ino, "rhvfs-restore.conf", options.encode())
    return ino


async def put_all(
    ops: Operations, ino: int, s: SetFiles, order: list[str], put: Put
) -> dict[str, tuple[float, int]]:
    """Put each file; per file the trio seconds it took and the errno it failed with (0)."""
    out: dict[str, tuple[float, int]] = {}
    for name in order:
        t0 = trio.current_time()
        try:
            await put(ops, ino, name, s.files[name])
            number = 0
        except pyfuse3.FUSEError as e:
            number = e.errno
        out[name] = (trio.current_time() - t0, number)
    return out


# -- the tool sees the outcome ------------------------------------------------------------


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("order_name", ["config-last", "images-last"])
@pytest.mark.allow_log("rhvfs.fs", "WARNING", match="injected failure of create_vm_from_ovf")
async def test_a_failure_at_vm_creation_fails_the_completing_call(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path, tool: str, order_name: str
) -> None:
    engine = FakeEngine()
    engine.fail_on.add("create_vm_from_ovf")
    ops, manager = await make_ops(nursery, tmp_path, engine)
    ino = await start_dir(ops, "myvm")
    s = make_set()
    order = orders(s)[order_name]
    results = await put_all(ops, ino, s, order, TOOLS[tool])
    last = completing_file(order)
    assert results[last][1] == errno.EIO, results
    before = order[: order.index(last)]
    assert [results[n][1] for n in before] == [0] * len(before), results  # nothing else failed
    session = manager.get("myvm")
    assert session.phase == "failed"  # decided when the call returned, not later
    status = await wait_status(ops, manager, "myvm", ino)
    assert status["errno"] == "EIO" and "create_vm_from_ovf" in status["error"]
    assert engine.vms == {} and engine.disks == {}  # rolled back


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("order_name", ["config-last", "images-last"])
async def test_the_vm_exists_when_the_completing_call_returns(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path, tool: str, order_name: str
) -> None:
    engine = SlowVmEngine()
    engine.vm_delay_s = 30.0  # longer than any timer of the restore
    ops, manager = await make_ops(nursery, tmp_path, engine)
    ino = await start_dir(ops, "myvm")
    s = make_set()
    order = orders(s)[order_name]
    last = completing_file(order)
    for name in order:
        t0 = trio.current_time()
        await TOOLS[tool](ops, ino, name, s.files[name])
        took = trio.current_time() - t0
        if name == last:
            session = manager.get("myvm")
            assert session.phase == "done", session.error  # no waiting in the test
            assert session.vm_id in engine.vms
            assert took >= 30.0
        else:
            assert took < 1.0, name  # calls that are not the last one never block
    for d in s.manifest["disks"]:
        assert sha(engine.disk_bytes(d["id"])) == sha(s.files[d["file"]])
    status = await wait_status(ops, manager, "myvm", ino)
    assert status["phase"] == "done"


async def test_past_the_outcome_timeout_the_call_succeeds_and_status_tells(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = SlowVmEngine()
    engine.vm_delay_s = 100.0
    ops, manager = await make_ops(nursery, tmp_path, engine, outcome_timeout_s=7.0)
    ino = await start_dir(ops, "myvm")
    s = make_set()
    results = await put_all(ops, ino, s, orders(s)["images-last"], tar_put)
    last = s.image_names()[-1]
    assert results[last] == (pytest.approx(7.0, abs=0.5), 0)
    session = manager.get("myvm")
    assert session.phase == "creating_vm"
    assert any("outcome_timeout" in line for line in session.notes.lines)
    with trio.fail_after(200):
        await session.wait_finished()
    assert session.phase == "done"


async def test_outcome_timeout_zero_never_waits(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = SlowVmEngine()
    engine.vm_delay_s = 100.0
    ops, manager = await make_ops(nursery, tmp_path, engine, outcome_timeout_s=0.0)
    ino = await start_dir(ops, "myvm")
    s = make_set()
    results = await put_all(ops, ino, s, orders(s)["images-last"], tar_put)
    assert all(took < 1.0 and number == 0 for took, number in results.values()), results
    assert manager.get("myvm").phase == "creating_vm"


@pytest.mark.allow_log("rhvfs.fs", "WARNING", match="create_template_from_ovf")
async def test_a_template_set_failure_reaches_the_tool(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine()
    engine.fail_on.add("create_template_from_ovf")
    ops, manager = await make_ops(nursery, tmp_path, engine)
    ino = await start_dir(ops, "tpl")
    s = make_set(kind="template", name="tpl")
    results = await put_all(ops, ino, s, orders(s)["images-last"], cp_put)
    assert results[s.image_names()[-1]][1] == errno.EIO, results
    status = await wait_status(ops, manager, "tpl", ino)
    assert status["phase"] == "failed" and engine.templates == {} and engine.disks == {}


# -- partial sets -------------------------------------------------------------------------

QUIET_S = 3.0


async def partial_restore(
    nursery: trio.Nursery, tmp_path: Path, options: str = "", *, skip_file: str | None = None
) -> tuple[FakeEngine, Any, int, SetFiles, float]:
    """A set copied (cp -a) without its second disk's image (or ``skip_file``): the engine,
    the manager, the directory, the set and the trio time the last file was written."""
    engine = FakeEngine()
    ops, manager = await make_ops(nursery, tmp_path, engine, partial_set_timeout_s=QUIET_S)
    ino = await start_dir(ops, "myvm", options)
    s = make_set()
    missing = skip_file or s.image_names()[1]
    order = [n for n in orders(s)["config-last"] if n != missing]
    results = await put_all(ops, ino, s, order, cp_put)
    assert all(number == 0 for _, number in results.values()), results  # nothing blocks
    return engine, (ops, manager), ino, s, trio.current_time()


async def test_a_missing_disk_fails_the_set_after_the_quiet_period(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine, (ops, manager), ino, s, t_last = await partial_restore(nursery, tmp_path)
    session = manager.get("myvm")
    await trio.sleep(QUIET_S * 0.8)
    assert session.phase == "uploading"  # not before the quiet period
    status = await wait_status(ops, manager, "myvm", ino)
    assert QUIET_S <= trio.current_time() - t_last <= QUIET_S + 1.0
    assert status["phase"] == "failed" and status["errno"] == "EINVAL"
    error = status["error"]
    assert "never delivered" in error and DISK_IDS[1] in error and DISK_IDS[0] not in error
    assert "vm_exclude_disks" in error and "vm_missing_disks = skip" in error
    assert "\n" not in error
    assert engine.vms == {} and engine.disks == {}  # the uploaded disk was rolled back
    waiting = [line for line in status["log"] if "waiting for" in line]
    assert len(waiting) == 1 and DISK_IDS[1] in waiting[0]  # said once, before the end


async def test_a_missing_disk_is_skipped_when_the_options_say_so(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine, (ops, manager), ino, s, t_last = await partial_restore(
        nursery, tmp_path, "vm_missing_disks = skip\n"
    )
    status = await wait_status(ops, manager, "myvm", ino)
    assert QUIET_S <= trio.current_time() - t_last <= QUIET_S + 1.0
    assert status["phase"] == "done", status["error"]
    vm_id = status["vm_id"]
    disks = [a.disk.id for a in engine.attachments[vm_id]]
    assert disks == [DISK_IDS[0]]
    assert sha(engine.disk_bytes(DISK_IDS[0])) == sha(s.files[s.image_names()[0]])
    by_id = {d["id"]: d for d in status["disks"]}
    assert by_id[DISK_IDS[1]]["state"] == "skipped" and not by_id[DISK_IDS[1]]["selected"]
    assert any("vm_missing_disks = skip" in line for line in status["log"])


async def test_activity_restarts_the_quiet_period(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine, (ops, manager), ino, s, _ = await partial_restore(nursery, tmp_path)
    await trio.sleep(QUIET_S * 0.8)
    await cp_put(ops, ino, "README.txt", b"not part of the set\n")  # the tool is still busy
    t_active = trio.current_time()
    status = await wait_status(ops, manager, "myvm", ino)
    assert QUIET_S <= trio.current_time() - t_active <= QUIET_S + 1.0
    assert status["phase"] == "failed" and DISK_IDS[1] in status["error"]


async def test_a_missing_ovf_fails_the_set(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine, (ops, manager), ino, s, _ = await partial_restore(nursery, tmp_path, skip_file="vm.ovf")
    status = await wait_status(ops, manager, "myvm", ino)
    assert status["phase"] == "failed" and "OVF was never delivered" in status["error"]
    assert "disk" not in status["error"].split(":", 1)[1]  # every image arrived
    assert engine.disks == {}


async def test_an_excluded_disk_needs_no_quiet_period(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """README's exclude recipe paired with vm_exclude_disks: done when the last file is in."""
    engine, (ops, manager), ino, s, t_last = await partial_restore(
        nursery, tmp_path, f"vm_exclude_disks = {DISK_IDS[1]}\n"
    )
    session = manager.get("myvm")
    assert session.phase == "done", session.error
    assert [a.disk.id for a in engine.attachments[session.vm_id or ""]] == [DISK_IDS[0]]


@pytest.mark.allow_log("rhvfs.fs", "WARNING", match="injected failure of create_vm_from_ovf")
async def test_a_failed_restore_refuses_every_later_change(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A tool that ignored the completing call's error (restic 0.14 drops utimes errors,
    bacula-fd close errors) still sees the failure on its next call."""
    engine = FakeEngine()
    engine.fail_on.add("create_vm_from_ovf")
    ops, manager = await make_ops(nursery, tmp_path, engine)
    ino = await start_dir(ops, "myvm")
    s = make_set()
    results = await put_all(ops, ino, s, orders(s)["images-last"], tar_put)
    assert results[s.image_names()[-1]][1] == errno.EIO
    ovf = await ops.lookup(ino, b"vm.ovf", CTX)
    ea = pyfuse3.EntryAttributes()
    ea.st_mode, ea.st_uid, ea.st_mtime_ns = 0o100444, 0, 1_600_000_000 * 10**9
    for f in (fields(update_mode=True), fields(update_uid=True), fields(update_mtime=True)):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.setattr(ovf.st_ino, ea, f, None, CTX)
        assert e.value.errno == errno.EIO
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.create(ino, b"more", 0o600, os.O_WRONLY | os.O_CREAT, CTX)
    assert e.value.errno == errno.EIO
    status = await wait_status(ops, manager, "myvm", ino)
    assert status["phase"] == "failed"
