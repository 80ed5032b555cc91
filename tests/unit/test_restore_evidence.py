"""Restores complete images by evidence, apply or refuse late writes, and zero holes when the
new disk does not read zeros (the fake engine; time on trio's mock clock)."""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from rhvfs.engine.types import Disk, Vm
from rhvfs.errors import RestoreError
from rhvfs.fs import errno_for
from tests.support.backup_sets import SetFiles, make_set
from tests.support.configs import restore_config
from tests.support.data import sha
from tests.support.fake_engine import FakeEngine
from tests.support.restore_rig import start

STALE = b"\xa5"


class BlockEngine(FakeEngine):
    """Its storage domain ``mydata`` is iSCSI: a new raw preallocated disk holds stale bytes."""

    def __init__(self, *, storage_type: str = "iscsi", vm_gate: trio.Event | None = None) -> None:
        super().__init__()
        self.sds = [dataclasses.replace(sd, storage_type=storage_type) for sd in self.sds]
        self.vm_gate = vm_gate

    async def create_disk(self, **kw: Any) -> Disk:
        disk = await super().create_disk(**kw)
        if kw["format"] == "raw" and not kw["sparse"] and self.sds[0].storage_type == "iscsi":
            vol = self.volumes[self.active[disk.id]]
            vol[:] = STALE * len(vol)
        return disk

    async def create_vm_from_ovf(self, **kw: Any) -> Vm:
        if self.vm_gate is not None:
            await self.vm_gate.wait()
        return await super().create_vm_from_ovf(**kw)


def preallocated_set() -> SetFiles:
    """make_set with its raw disk preallocated (a quarter data, the rest zeros)."""
    s = make_set()
    s.manifest["disks"][1]["sparse"] = False
    s.files["manifest.json"] = json.dumps(s.manifest).encode()
    return s


def restored_sha(engine: FakeEngine, vm_name: str) -> dict[str, str]:
    vm = next(v for v in engine.vms.values() if v.name == vm_name)
    return {a.disk.alias: sha(engine.disk_bytes(a.disk.id)) for a in engine.attachments[vm.id]}


def expected_sha(s: SetFiles) -> dict[str, str]:
    return {d["alias"]: sha(s.files[d["file"]]) for d in s.manifest["disks"]}


def upload_notes(status: dict[str, Any]) -> list[str]:
    return [line for line in status["log"] if " uploaded disk" in line]


async def test_presized_image_waits_for_its_owed_half(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """ftruncate to the full size, write half, close; come back much later for the rest."""
    h = await start(nursery, FakeEngine(), tmp_path, restore_config())
    s = make_set()
    session = h.manager.create("presize")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    first, second = s.image_names()
    await h.write_file(session, second, s.files[second])
    data = s.files[first]
    half = len(data) // 2
    f = session.new_file(first)
    session.open(f)
    await session.truncate(f, len(data))
    await session.write(f, 0, data[:half])
    await session.flush(f)
    await session.release(f)
    await trio.sleep(240)  # no timer decides (48x the close grace; under partial_set_timeout)
    assert session.phase == "uploading"
    assert f.disk is not None and not f.disk.finish.is_set() and f.disk.state == "uploading"
    doc = json.loads(session.status_json())
    owed = {d["alias"]: (d["image_complete"], d["bytes_owed"]) for d in doc["disks"]}
    assert owed == {"disk0": (False, len(data) - half), "disk1": (True, 0)}
    session.open(f)
    await session.write(f, half, data[half:])
    await session.flush(f)
    await session.release(f)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    assert restored_sha(h.engine, "presize") == expected_sha(s)


async def test_late_write_is_applied_while_the_set_is_incomplete(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    h = await start(nursery, FakeEngine(), tmp_path, restore_config())
    s = make_set()
    session = h.manager.create("late")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    first, second = s.image_names()
    wrong = bytes([0x11]) * len(s.files[first])
    f = await h.write_file(session, first, wrong)
    await session.set_times(f)  # complete: the tool said so
    assert f.disk is not None and f.disk.finish.is_set()
    g = session.new_file(second)  # the set's other image is still being written
    session.open(g)
    await session.write(g, 0, s.files[second][:4096])
    session.open(f)
    await session.write(f, 0, s.files[first])  # after completion: applied
    assert not f.disk.finish.is_set()
    await session.flush(f)
    await session.release(f)
    await session.set_times(f)
    await session.write(g, 4096, s.files[second][4096:])
    await session.flush(g)
    await session.release(g)
    await session.set_times(g)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    assert restored_sha(h.engine, "late") == expected_sha(s)
    assert any("written again after it was complete" in line for line in status["log"])


async def test_late_write_after_finalize_is_refused_and_fails_the_restore(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    gate = trio.Event()
    engine = BlockEngine(storage_type="nfs", vm_gate=gate)
    h = await start(nursery, engine, tmp_path, restore_config())
    s = make_set()
    session = h.manager.create("sealed")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    files = [await h.write_file(session, n, s.files[n]) for n in s.image_names()]
    for f in files:
        await session.set_times(f)
    assert session.phase == "creating_vm"  # every disk finalized, the VM build waits
    f = files[0]
    session.open(f)
    with pytest.raises(RestoreError, match="cannot be applied") as e:
        await session.write(f, 0, b"late")
    assert errno_for(e.value) == errno.EROFS
    gate.set()
    status = await h.settle(session)
    assert status["phase"] == "failed" and "cannot be applied" in status["error"]
    assert status["errno"] == "EROFS"
    assert engine.disks == {} and engine.vms == {}


@pytest.mark.parametrize("storage_type", ["iscsi", "nfs"])
async def test_holes_are_zeroed_only_where_the_new_disk_does_not_read_zeros(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path, storage_type: str
) -> None:
    """tar -S: the zero tail of each image is never written. On iSCSI the preallocated raw
    disk would show stale bytes there: zeroed. On NFS nothing is sent for holes."""
    engine = BlockEngine(storage_type=storage_type)
    h = await start(nursery, engine, tmp_path, restore_config())
    s = preallocated_set()
    session = h.manager.create("holes")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    for name in s.image_names():
        f = await h.write_file(session, name, s.files[name], sparse=True)
        await session.set_times(f)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    assert restored_sha(engine, "holes") == expected_sha(s)
    raw = s.manifest["disks"][1]
    data = raw["size"] // 4
    disks = {d["alias"]: d for d in status["disks"]}
    notes = {line.split()[2].rstrip(":"): line for line in upload_notes(status)}
    if storage_type == "iscsi":
        assert disks["disk1"]["holes_zeroed"] == raw["size"] - data
        assert "zeroed on the target" in notes["disk1"]
    else:
        assert disks["disk1"]["holes_zeroed"] == 0
        assert "holes read as zero" in notes["disk1"]
    assert disks["disk0"]["holes_zeroed"] == 0  # the qcow2 disk reads zeros anywhere
    assert disks["disk1"]["bytes_uploaded"] == data  # only the data went out as PUT
