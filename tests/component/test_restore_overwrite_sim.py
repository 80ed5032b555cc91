"""``vm_force_overwrite`` against the simulator: the original VM is never lost.

Each test restores a small set once (the *original*: down, two disks, a NIC
with a known MAC), then restores a second set (new contents) over it with a
fault injected at one step of the build. After a failure the original must be
exactly as it was (record, disk attachments and volumes, NICs, the sha256 of
every disk, down) and nothing of the second restore may be left (VM, template,
disk, live transfer). On success the original is gone, the new VM has its name,
the MACs the options ask, and the second set's disks.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from rhvfs.engine import Engine
from rhvfs.errors import Conflict, RestoreError
from rhvfs.sessions.restore import RestoreManager, RestoreSession
from tests.support.restore_rig import sim_restore_manager
from tests.support.sim import live_transfers

MiB = 1024 * 1024
API = "/ovirt-engine/api"


def random_mac(rnd: random.Random) -> str:
    return "56:6f:7e:" + ":".join(f"{rnd.randrange(256):02x}" for _ in range(3))


def vm_set(name: str, vm_id: str, mac: str, seed: int) -> dict[str, bytes]:
    """A VM set of two disks (raw 2 MiB, cow 1 MiB, holes between data) and one NIC."""
    rnd = random.Random(seed)
    files: dict[str, bytes] = {}
    disks = []
    for i, size in enumerate((2 * MiB, 1 * MiB)):
        disk_id = str(uuid.uuid4())
        image = bytearray(size)
        image[: 256 * 1024] = rnd.randbytes(256 * 1024)
        image[size - 4096 :] = rnd.randbytes(4096)
        file_name = f"{name}-d{i}--{disk_id}.raw"
        files[file_name] = bytes(image)
        disks.append(
            {
                "id": disk_id,
                "alias": f"{name}-d{i}",
                "file": file_name,
                "size": size,
                "format": "cow" if i else "raw",
                "sparse": True,
                "interface": "virtio_scsi",
                "bootable": i == 0,
                "active": True,
                "storage_domain": {"id": None, "name": "mydata"},
            }
        )
    manifest = {
        "format": "rhvfs-backup-set",
        "format_version": 1,
        "kind": "vm",
        "vm": {"id": vm_id, "name": name, "cluster": {"id": None, "name": "Default"}},
        "disks": disks,
        "nics": [{"name": "nic1", "interface": "virtio", "mac": mac}],
    }
    files["manifest.json"] = json.dumps(manifest).encode()
    files["vm.ovf"] = (
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>{name}</Name>'
        f'<Section ovf:id="{vm_id}" xsi:type="ovf:OperatingSystemSection_Type">'
        "<Description>other_linux</Description></Section></Content></ovf:Envelope>\n"
    ).encode()
    return files


@pytest.fixture
async def rig(sim: Any, tmp_path: Path) -> AsyncIterator[tuple[Engine, RestoreManager]]:
    async with sim_restore_manager(sim, tmp_path) as (engine, manager):
        try:
            yield engine, manager
        finally:
            await trio.to_thread.run_sync(sim.admin.clear_faults)


async def put(session: RestoreSession, name: str, data: bytes) -> None:
    f = session.new_file(name)
    session.open(f)
    block = 256 * 1024
    for offset in range(0, len(data), block):
        piece = data[offset : offset + block]
        if piece.strip(b"\0"):
            await session.write(f, offset, piece)
    await session.truncate(f, len(data))
    await session.set_times(f)  # as tar does through the descriptor before closing
    await session.flush(f)
    await session.release(f)


async def restore(
    manager: RestoreManager, directory: str, files: dict[str, bytes], options: str = ""
) -> dict[str, Any]:
    session = manager.create(directory)
    if options:
        await put(session, "rhvfs-restore.conf", options.encode())
    for name in ("vm.ovf", "manifest.json"):
        await put(session, name, files[name])
    told: RestoreError | None = None
    for name, data in files.items():
        if name not in ("vm.ovf", "manifest.json"):
            try:
                await put(session, name, data)
            except RestoreError as e:  # the completing call tells the tool the outcome
                told = e
                break
    with trio.fail_after(120):
        await session.wait_finished()
    status = session.status()
    assert (told is not None) == (status["phase"] == "failed"), (told, status["phase"])
    return status


async def picture(sim: Any, engine: Engine, vm_id: str) -> dict[str, Any]:
    """Everything an overwrite must not change on the original: record, power state,
    attachments with volumes, NICs, and the bytes of every disk."""
    vm = await engine.get_vm(vm_id)
    atts = await engine.disk_attachments(vm_id)
    nics = await engine.vm_nics(vm_id)
    sums = {
        a.disk.id: await trio.to_thread.run_sync(sim.admin.disk_sha256, a.disk.id) for a in atts
    }
    return {
        "vm": vm,
        "status": vm.status,
        "attachments": sorted(atts, key=lambda a: a.disk.id),
        "nics": sorted(nics, key=lambda n: n.id),
        "sha256": sums,
    }


async def inventory(engine: Engine) -> tuple[set[str], set[str], set[str]]:
    """(vm ids, template ids, disk ids) of the whole engine."""
    vms = {v.id for v in await engine.list_vms()}
    templates = {t.id for t in await engine.list_templates()}
    disks = {d.id for d in await engine.list_disks()}
    return vms, templates, disks


class Original:
    def __init__(self, name: str, vm_id: str, mac: str, files: dict[str, bytes]) -> None:
        self.name, self.vm_id, self.mac, self.files = name, vm_id, mac, files


async def make_original(
    sim: Any, engine: Engine, manager: RestoreManager, tag: str
) -> tuple[Original, dict[str, bytes]]:
    """The original VM (restored from a first set) and a second set of the same VM."""
    rnd = random.Random()
    name = f"ow-{tag}-{uuid.uuid4().hex[:6]}"
    vm_id = str(uuid.uuid4())
    mac = random_mac(rnd)
    first = vm_set(name, vm_id, mac, seed=rnd.randrange(1 << 30))
    status = await restore(manager, name, first)
    assert status["phase"] == "done", status["error"]
    assert status["vm_id"] == vm_id
    second = vm_set(name, vm_id, mac, seed=rnd.randrange(1 << 30))
    return Original(name, vm_id, mac, first), second


async def cleanup(engine: Engine, names: list[str]) -> None:
    for vm in await engine.list_vms():
        if vm.name in names or any(vm.name.startswith(f"{n}-rhvfs-restore-") for n in names):
            if vm.status != "down":
                await engine.stop_vm(vm.id)
            await engine.remove_vm(vm.id)
    for tpl in await engine.list_templates():
        if tpl.name in names:
            await engine.remove_template(tpl.id)


FAILURES = [
    # (what, fault method, fault path, extra options)
    ("after-upload", "POST", f"{API}/vms/*/diskattachments", ""),
    ("vm-create", "POST", f"{API}/vms", ""),
    ("template", "POST", f"{API}/templates", "template_name = {name}-tpl\n"),
    ("power-on", "POST", f"{API}/vms/*/start", "vm_switchon = yes\n"),
    # the new VM runs by then: the rollback stops it before removing it
    ("original-removal", "DELETE", f"{API}/vms/{{vm_id}}", "vm_switchon = yes\n"),
]


@pytest.mark.parametrize(
    ("what", "method", "path", "extra"), FAILURES, ids=[f[0] for f in FAILURES]
)
async def test_a_failed_overwrite_leaves_the_original_as_it_was(
    sim: Any, rig: tuple[Engine, RestoreManager], what: str, method: str, path: str, extra: str
) -> None:
    engine, manager = rig
    original, second = await make_original(sim, engine, manager, what[:3])
    try:
        before = await picture(sim, engine, original.vm_id)
        assert before["status"] == "down" and len(before["sha256"]) == 2
        assert [n.mac for n in before["nics"]] == [original.mac]
        everything = await inventory(engine)
        await trio.to_thread.run_sync(
            lambda: sim.admin.add_fault(
                "engine-error",
                method=method,
                path=path.format(vm_id=original.vm_id),
                status=409,
                times=-1,
            )
        )
        options = (
            f"vm_name = {original.name}\nvm_force_overwrite = yes\nnics = original\n"
            + extra.format(name=original.name)
        )
        status = await restore(manager, f"{original.name}-over", second, options)
        await trio.to_thread.run_sync(sim.admin.clear_faults)
        assert status["phase"] == "failed" and status["settled"], status
        assert "injected fault" in status["error"]
        if what == "original-removal":
            assert "it is unchanged" in status["error"]
            assert any("rolled back: stopped vm" in line for line in status["log"])
        assert await picture(sim, engine, original.vm_id) == before
        assert await inventory(engine) == everything  # no VM, template or disk left
        assert await trio.to_thread.run_sync(live_transfers, sim) == []
    finally:
        await cleanup(engine, [original.name, f"{original.name}-tpl"])


async def test_a_changed_original_is_kept_and_the_started_new_vm_removed(
    sim: Any, rig: tuple[Engine, RestoreManager]
) -> None:
    """The original is checked right before its removal: a NIC added to it meanwhile
    refuses the replacement; the new VM, already running, is stopped and removed."""
    engine, manager = rig
    original, second = await make_original(sim, engine, manager, "chg")
    try:
        everything = await inventory(engine)
        real_start = engine.start_vm

        async def start_then_edit(vm_id: str, *, wait_up: bool = True) -> Any:
            vm = await real_start(vm_id, wait_up=wait_up)
            # someone edits the original while the new VM boots (between begin and replace)
            await engine.add_nic(
                original.vm_id, name="late", interface="virtio", mac=None, vnic_profile_id=None
            )
            return vm

        engine.start_vm = start_then_edit  # type: ignore[method-assign]
        status = await restore(
            manager,
            f"{original.name}-over",
            second,
            f"vm_name = {original.name}\nvm_force_overwrite = yes\nvm_switchon = yes\n",
        )
        assert status["phase"] == "failed", status
        assert "changed while the restore ran" in status["error"]
        assert "its NICs changed" in status["error"]
        assert any("rolled back: stopped vm" in line for line in status["log"])
        vms, templates, disks = await inventory(engine)
        assert (vms, templates, disks) == everything
        after = await picture(sim, engine, original.vm_id)
        assert after["status"] == "down"
        assert sorted(n.name for n in after["nics"]) == ["late", "nic1"]
        assert sorted(after["sha256"].values()) == sorted(
            hashlib.sha256(data).hexdigest()
            for f, data in original.files.items()
            if f.endswith(".raw")
        )
    finally:
        await cleanup(engine, [original.name])


@pytest.mark.parametrize("switchon", [False, True], ids=["down", "running"])
async def test_overwrite_replaces_the_original_with_its_name_macs_and_the_new_disks(
    sim: Any, rig: tuple[Engine, RestoreManager], switchon: bool
) -> None:
    engine, manager = rig
    original, second = await make_original(sim, engine, manager, "ok")
    try:
        vms_before, templates_before, _ = await inventory(engine)
        options = f"vm_name = {original.name}\nvm_force_overwrite = yes\nnics = original\n"
        if switchon:
            options += "vm_switchon = yes\n"
        status = await restore(manager, f"{original.name}-over", second, options)
        assert status["phase"] == "done", status["error"]
        new_id = status["vm_id"]
        assert new_id != original.vm_id
        vms, templates, _ = await inventory(engine)
        assert vms == (vms_before - {original.vm_id}) | {new_id}
        assert templates == templates_before
        vm = await engine.get_vm(new_id)
        assert vm.name == original.name
        assert vm.status == ("up" if switchon else "down")
        nics = await engine.vm_nics(new_id)
        assert [(n.name, n.mac, n.plugged) for n in nics] == [("nic1", original.mac, True)]
        atts = {a.disk.alias: a for a in await engine.disk_attachments(new_id)}
        manifest = json.loads(second["manifest.json"])
        assert sorted(atts) == sorted(d["alias"] for d in manifest["disks"])
        for d in manifest["disks"]:
            want = hashlib.sha256(second[d["file"]]).hexdigest()
            got = await trio.to_thread.run_sync(sim.admin.disk_sha256, atts[d["alias"]].disk.id)
            assert got == want
        log = "\n".join(status["log"])
        assert "keeps its new id" in log and f"took over MAC {original.mac}" in log
    finally:
        await cleanup(engine, [original.name])


async def test_a_failure_after_the_original_is_gone_keeps_the_new_vm_and_says_so(
    sim: Any, rig: tuple[Engine, RestoreManager]
) -> None:
    """Renaming the new VM and moving its MAC fail (every VM or NIC update refused):
    the original is gone, so the complete new VM stays, under its temporary name, and
    the restore fails with an error that tells what is left to do."""
    engine, manager = rig
    original, second = await make_original(sim, engine, manager, "late")
    try:
        await trio.to_thread.run_sync(
            lambda: sim.admin.add_fault(
                "engine-error", method="PUT", path=f"{API}/vms/*", status=409, times=-1
            )
        )
        status = await restore(
            manager,
            f"{original.name}-over",
            second,
            f"vm_name = {original.name}\nvm_force_overwrite = yes\nnics = original\n",
        )
        await trio.to_thread.run_sync(sim.admin.clear_faults)
        assert status["phase"] == "failed" and status["settled"]
        error = status["error"]
        assert "is removed" in error and "is complete and kept" in error, error
        assert "renaming it" in error and f"giving it MAC {original.mac}" in error
        new_id = status["vm_id"]
        assert new_id is not None and new_id in error
        assert original.vm_id not in {v.id for v in await engine.list_vms()}
        vm = await engine.get_vm(new_id)
        assert vm.name.startswith(f"{original.name}-rhvfs-restore-")
        atts = await engine.disk_attachments(new_id)
        sums = sorted(
            [await trio.to_thread.run_sync(sim.admin.disk_sha256, a.disk.id) for a in atts]
        )
        assert sums == sorted(
            hashlib.sha256(data).hexdigest() for f, data in second.items() if f.endswith(".raw")
        )
        assert not any("rolled back" in line for line in status["log"])
    finally:
        await cleanup(engine, [original.name])


async def test_the_simulator_changes_a_mac_like_the_engine(
    rig: tuple[Engine, RestoreManager],
) -> None:
    """A MAC in use is refused; so is a MAC change of a NIC plugged into a running VM,
    which works unplugged (unplug, change, plug)."""
    engine, _ = rig
    rnd = random.Random()
    names = [f"nicvm-{uuid.uuid4().hex[:6]}", f"nicvm-{uuid.uuid4().hex[:6]}"]
    try:
        a = await engine.create_vm(name=names[0], cluster="Default")
        b = await engine.create_vm(name=names[1], cluster="Default")
        taken = (
            await engine.add_nic(
                b.id, name="n", interface="virtio", mac=random_mac(rnd), vnic_profile_id=None
            )
        ).mac
        nic = await engine.add_nic(
            a.id, name="n", interface="virtio", mac=None, vnic_profile_id=None
        )
        assert taken is not None
        with pytest.raises(Conflict, match="already in use"):
            await engine.update_nic(a.id, nic.id, mac=taken)
        free = random_mac(rnd)
        assert (await engine.update_nic(a.id, nic.id, mac=free)).mac == free  # VM down
        await engine.start_vm(a.id)
        other = random_mac(rnd)
        with pytest.raises(Conflict, match="un-plug the interface"):
            await engine.update_nic(a.id, nic.id, mac=other)
        assert not (await engine.update_nic(a.id, nic.id, plugged=False)).plugged
        assert (await engine.update_nic(a.id, nic.id, mac=other)).mac == other
        assert (await engine.update_nic(a.id, nic.id, plugged=True)).plugged
        assert [(n.mac, n.plugged) for n in await engine.vm_nics(a.id)] == [(other, True)]
    finally:
        await cleanup(engine, names)
