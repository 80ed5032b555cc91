"""The fake engine of tests/support models what the session tests rely on."""

from __future__ import annotations

from tests.support.fake_engine import FakeEngine


async def test_fake_engine_snapshot_freezes_volume() -> None:
    eng = FakeEngine()
    vm = eng.add_vm("v", disks=[("a", 8192)])
    disk_id = eng.disk_ids(vm.id)[0]
    before = bytes(eng.volumes[eng.active[disk_id]])
    snap = await eng.create_snapshot(vm.id, description="x")
    eng.guest_write(disk_id, 0, b"\xff" * 16)
    (sdisk,) = await eng.snapshot_disks(vm.id, snap.id)
    assert bytes(eng.volumes[sdisk.image_id or ""]) == before
    await eng.remove_snapshot(vm.id, snap.id)
    assert eng.active[disk_id] == sdisk.image_id
    assert bytes(eng.volumes[sdisk.image_id])[:16] == b"\xff" * 16
