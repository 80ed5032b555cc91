"""rhvfs.engine against the simulator: inventory, snapshots, transfers, backups, restore writes.

Every test leaves the shared (session-scoped) simulator as it found it: what a
test creates, it removes. Data checks compare bytes read through the transfer
URLs the engine handed out with the simulator's own sha256 of the volume.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from rhvfs.config import Config, load_config
from rhvfs.engine import Engine, open_engine
from rhvfs.errors import AuthenticationError, Conflict, EngineUnavailable, NotFound
from rhvfs.retry import RetryPolicy

FAST_POLL = RetryPolicy.for_polling(interval_s=0.05, max_interval_s=0.25, timeout_s=120.0)


def _config(sim: Any, **overrides: Any) -> Config:
    return load_config(section=sim.section, config_file=sim.conf_file, overrides=overrides or None)


@pytest.fixture
async def engine(sim: Any) -> AsyncIterator[Engine]:
    async with open_engine(_config(sim), connections=2, poll=FAST_POLL) as eng:
        yield eng


async def _vm_named(engine: Engine, name: str) -> Any:
    vm = await engine.find_vm(name)
    assert vm is not None, f"the sample inventory has no vm {name!r}"
    return vm


def _tls(cafile: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


async def _image_sha256(transfer_url: str, cafile: str | None, size: int) -> str:
    """sha256 of the guest-visible bytes behind an imageio transfer URL (zero extents not fetched)."""
    digest = hashlib.sha256()
    async with httpx.AsyncClient(verify=_tls(cafile), timeout=60) as client:
        extents = (await client.get(transfer_url + "/extents")).raise_for_status().json()
        assert extents[-1]["start"] + extents[-1]["length"] == size
        for ext in extents:
            start, length = ext["start"], ext["length"]
            if ext["zero"]:
                chunk = b"\0" * min(length, 8 << 20)
                left = length
                while left:
                    n = min(left, len(chunk))
                    digest.update(chunk[:n])
                    left -= n
                continue
            pos = start
            while pos < start + length:
                n = min(8 << 20, start + length - pos)
                r = await client.get(transfer_url, headers={"Range": f"bytes={pos}-{pos + n - 1}"})
                assert r.status_code == 206
                assert len(r.content) == n
                digest.update(r.content)
                pos += n
    return digest.hexdigest()


async def test_inventory_matches_the_sdk(sim: Any, engine: Engine) -> None:
    conn = sim.sdk_connection()
    try:
        system = conn.system_service()
        sdk_vms = {v.id: v.name for v in system.vms_service().list()}
        sdk_sds = {s.id: s.name for s in system.storage_domains_service().list()}
        sdk_templates = {t.id for t in system.templates_service().list()}
    finally:
        conn.close()

    before = engine.requests
    vms = await engine.list_vms()
    assert engine.requests - before == 1  # one list call, no call per VM
    assert {v.id: v.name for v in vms} == sdk_vms
    assert {s.id: s.name for s in await engine.list_storage_domains()} == sdk_sds

    templates = await engine.list_templates()
    assert "Blank" not in {t.name for t in templates}
    assert {t.id for t in templates} == sdk_templates - {"00000000-0000-0000-0000-000000000000"}

    dcs = await engine.list_datacenters()
    assert "Default" in {d.name for d in dcs}
    clusters = await engine.list_clusters()
    assert {"Default", "mycluster"} <= {c.name for c in clusters}
    assert all(c.datacenter_id in {d.id for d in dcs} for c in clusters)
    hosts = await engine.list_hosts()
    assert any(h.name == "host1" and h.status == "up" for h in hosts)
    tags = await engine.list_tags()
    assert "root" not in {t.name for t in tags} and "mytag" in {t.name for t in tags}

    myvm = await _vm_named(engine, "myvm")
    assert myvm.name == "myvm" and myvm.id in sdk_vms
    assert await engine.get_vm(myvm.id) == myvm
    assert await engine.find_vm("no-such-vm-" + uuid.uuid4().hex) is None
    with pytest.raises(NotFound):
        await engine.get_vm(str(uuid.uuid4()))

    atts = await engine.disk_attachments(myvm.id)
    assert len(atts) >= 2
    for att in atts:
        assert att.disk.provisioned_size > 0
        assert att.disk.image_id
        assert att.disk.storage_domain_id in sdk_sds
        assert att.interface is not None
    assert await engine.get_disk(atts[0].disk.id) == atts[0].disk

    ovf = await engine.vm_ovf(myvm.id)
    assert myvm.id in ovf and "ovf:Envelope" in ovf
    xml = await engine.vm_xml(myvm.id)
    assert b"<vm " in xml and myvm.id.encode() in xml


async def test_vms_by_tag(sim: Any, engine: Engine) -> None:
    tag = next(t for t in await engine.list_tags() if t.name == "mytag")
    conn = sim.sdk_connection()
    try:
        vms_service = conn.system_service().vms_service()
        expected = set()
        for vm in vms_service.list():
            if any(t.id == tag.id for t in vms_service.vm_service(vm.id).tags_service().list()):
                expected.add(vm.id)
    finally:
        conn.close()
    got = await engine.vms_by_tag(tag.id)
    assert {v.id for v in got} == expected
    assert all(v.tag_ids == (tag.id,) for v in got)


async def test_snapshot_create_list_disks_remove(sim: Any, engine: Engine) -> None:
    vm = await _vm_named(engine, "myvm")
    before = {a.disk.id: a.disk.image_id for a in await engine.disk_attachments(vm.id)}
    description = f"rhvfs-test-{uuid.uuid4()}"
    snap = await engine.create_snapshot(vm.id, description=description)
    try:
        assert (snap.status, snap.type, snap.description, snap.vm_id) == (
            "ok",
            "regular",
            description,
            vm.id,
        )
        listed = {s.id: s for s in await engine.list_snapshots(vm.id)}
        assert listed[snap.id].status == "ok"
        assert any(s.type == "active" for s in listed.values())
        disks = await engine.snapshot_disks(vm.id, snap.id)
        # The snapshot owns the volumes that were active before it; new active volumes replace them.
        assert {d.id: d.image_id for d in disks} == before
        after = {a.disk.id: a.disk.image_id for a in await engine.disk_attachments(vm.id)}
        assert set(after) == set(before) and all(after[d] != before[d] for d in before)
        found = await engine.list_all_snapshots_with_description_prefix("rhvfs-test-")
        assert (vm.id, listed[snap.id]) in found
    finally:
        await engine.remove_snapshot(vm.id, snap.id)
    assert snap.id not in {s.id for s in await engine.list_snapshots(vm.id)}


async def test_download_transfer_of_a_snapshot_volume(sim: Any, engine: Engine) -> None:
    vm = await _vm_named(engine, "myvm")
    snap = await engine.create_snapshot(vm.id, description=f"rhvfs-test-{uuid.uuid4()}")
    try:
        disk = (await engine.snapshot_disks(vm.id, snap.id))[0]
        transfer = await engine.start_transfer(
            snapshot_image_id=disk.image_id, inactivity_timeout=30
        )
        try:
            assert transfer.phase == "transferring"
            assert transfer.transfer_url and transfer.transfer_url.startswith("http")
            assert transfer.disk_id == disk.id
            got = await _image_sha256(transfer.transfer_url, sim.cafile, disk.provisioned_size)
        except BaseException:
            await engine.cancel_transfer(transfer.id)
            raise
        await engine.finalize_transfer(transfer.id)
        assert got == await trio.to_thread.run_sync(sim.admin.disk_sha256, disk.id, disk.image_id)
        try:
            final = await engine.get_transfer(transfer.id)
            assert final.phase == "finished_success"
        except NotFound:
            pass  # engines may drop finished transfers
        assert (await engine.get_disk(disk.id)).status == "ok"
    finally:
        await engine.remove_snapshot(vm.id, snap.id)


async def test_cancel_transfer(sim: Any, engine: Engine) -> None:
    vm = await _vm_named(engine, "myvm")
    snap = await engine.create_snapshot(vm.id, description=f"rhvfs-test-{uuid.uuid4()}")
    try:
        disk = (await engine.snapshot_disks(vm.id, snap.id))[0]
        transfer = await engine.start_transfer(snapshot_image_id=disk.image_id)
        await engine.cancel_transfer(transfer.id)
        try:
            assert (await engine.get_transfer(transfer.id)).phase in (
                "finished_failure",
                "finished_cleanup",
            )
        except NotFound:
            pass
        async with httpx.AsyncClient(verify=_tls(sim.cafile)) as client:
            assert (await client.options(transfer.transfer_url or "")).status_code == 403
    finally:
        await engine.remove_snapshot(vm.id, snap.id)


async def test_full_backup_and_checkpoint(sim: Any, engine: Engine) -> None:
    vm = await _vm_named(engine, "myvm")
    cow = [
        a.disk
        for a in await engine.disk_attachments(vm.id)
        if a.disk.format == "cow" and a.disk.backup == "incremental"
    ]
    assert cow, "myvm should have cow disks with incremental backup enabled"
    backup = await engine.start_backup(vm.id, [d.id for d in cow], description="rhvfs test")
    try:
        assert backup.phase == "ready" and backup.vm_id == vm.id and backup.to_checkpoint_id
        disks = await engine.backup_disks(vm.id, backup.id)
        assert {d.id for d in disks} == {d.id for d in cow}
        assert all(d.backup_mode == "full" for d in disks)
        disk = disks[0]
        transfer = await engine.start_transfer(disk_id=disk.id, backup_id=backup.id)
        try:
            got = await _image_sha256(
                transfer.transfer_url or "", sim.cafile, disk.provisioned_size
            )
        finally:
            await engine.finalize_transfer(transfer.id)
        assert got == await trio.to_thread.run_sync(sim.admin.disk_sha256, disk.id)
    finally:
        await engine.finalize_backup(vm.id, backup.id)
    assert (await engine.get_backup(vm.id, backup.id)).phase == "succeeded"
    checkpoints = await engine.list_checkpoints(vm.id)
    assert backup.to_checkpoint_id in {c.id for c in checkpoints}
    await engine.remove_checkpoint(vm.id, backup.to_checkpoint_id)
    assert backup.to_checkpoint_id not in {c.id for c in await engine.list_checkpoints(vm.id)}


async def test_disk_create_and_remove(sim: Any, engine: Engine) -> None:
    sd = next(s for s in await engine.list_storage_domains() if s.name == "mydata")
    disk_id = str(uuid.uuid4())
    disk = await engine.create_disk(
        alias="rhvfs-test-disk",
        provisioned_size=1 << 20,
        format="cow",
        sparse=True,
        storage_domain="mydata",
        disk_id=disk_id,
        backup="incremental",
    )
    try:
        assert (
            disk.id,
            disk.status,
            disk.format,
            disk.provisioned_size,
            disk.storage_domain_id,
        ) == (disk_id, "ok", "cow", 1 << 20, sd.id)
        assert disk_id in {d.id for d in await engine.storage_domain_disks(sd.id)}
    finally:
        await engine.remove_disk(disk_id)
    with pytest.raises(NotFound):
        await engine.get_disk(disk_id)


async def test_vm_from_ovf_as_a_copy(sim: Any, engine: Engine) -> None:
    vm = await _vm_named(engine, "myvm0")
    ovf = await engine.vm_ovf(vm.id)
    name = f"rhvfs-test-{uuid.uuid4().hex[:8]}"
    clusters = {c.id: c.name for c in await engine.list_clusters()}
    created = await engine.create_vm_from_ovf(
        ovf=ovf, cluster=clusters[vm.cluster_id or ""], name=name, regenerate_ids=True
    )
    try:
        assert created.name == name and created.id != vm.id and created.status == "down"
        assert (await engine.find_vm(name)) == created
    finally:
        await engine.remove_vm(created.id)
    assert await engine.find_vm(name) is None


async def test_wrong_password_is_an_authentication_error(sim: Any) -> None:
    config = _config(sim, password="definitely-wrong")
    async with open_engine(config, poll=FAST_POLL) as eng:
        with pytest.raises(AuthenticationError) as info:
            await eng.list_vms()
    assert "definitely-wrong" not in str(info.value)


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
async def test_unreachable_engine_is_unavailable_after_retries(sim: Any) -> None:
    config = _config(sim, engine_url="https://127.0.0.1:9")
    retry = RetryPolicy(tries=2, interval_s=0.01, timeout_s=5)
    async with open_engine(config, retry=retry, request_timeout_s=5) as eng:
        with pytest.raises(EngineUnavailable):
            await eng.list_vms()
        assert eng.requests == 2


@pytest.fixture
async def flaky_engine(sim: Any) -> AsyncIterator[Engine]:
    """An engine with fast retries; faults injected by a test are cleared afterwards."""
    async with open_engine(_config(sim, system_interval=0.05), poll=FAST_POLL) as eng:
        try:
            yield eng
        finally:
            await trio.to_thread.run_sync(sim.admin.clear_faults)


async def test_transient_5xx_on_a_list_is_retried(sim: Any, flaky_engine: Engine) -> None:
    expected = {v.id for v in await flaky_engine.list_vms()}
    await trio.to_thread.run_sync(
        lambda: sim.admin.add_fault(
            "engine-error", method="GET", path="/ovirt-engine/api/vms", status=503, times=2
        )
    )
    before = flaky_engine.requests
    assert {v.id for v in await flaky_engine.list_vms()} == expected
    assert flaky_engine.requests - before == 3


async def test_revoked_token_is_renewed_by_the_sdk(sim: Any, flaky_engine: Engine) -> None:
    expected = {c.id for c in await flaky_engine.list_clusters()}
    await trio.to_thread.run_sync(lambda: sim.admin.add_fault("revoke-tokens"))
    assert {c.id for c in await flaky_engine.list_clusters()} == expected


async def test_snapshot_and_transfer_creates_survive_a_5xx(sim: Any, flaky_engine: Engine) -> None:
    engine = flaky_engine
    vm = await _vm_named(engine, "myvm")
    await trio.to_thread.run_sync(
        lambda: sim.admin.add_fault(
            "engine-error",
            method="POST",
            path=f"/ovirt-engine/api/vms/{vm.id}/snapshots",
            status=500,
            times=1,
        )
    )
    description = f"rhvfs-test-{uuid.uuid4()}"
    snap = await engine.create_snapshot(vm.id, description=description)
    try:
        assert [
            s.id for s in await engine.list_snapshots(vm.id) if s.description == description
        ] == [snap.id]
        disk = (await engine.snapshot_disks(vm.id, snap.id))[0]
        await trio.to_thread.run_sync(
            lambda: sim.admin.add_fault(
                "engine-error",
                method="POST",
                path="/ovirt-engine/api/imagetransfers",
                status=502,
                times=1,
            )
        )
        transfer = await engine.start_transfer(snapshot_image_id=disk.image_id)
        assert transfer.phase == "transferring" and transfer.transfer_url
        await engine.finalize_transfer(transfer.id)
        active = [
            t
            for t in await engine.list_transfers()
            if t.phase not in ("finished_success", "finished_failure")
        ]
        assert active == []
    finally:
        await engine.remove_snapshot(vm.id, snap.id)


async def test_phase_walks_with_slow_engine_steps(sim_factory: Any) -> None:
    """With 0.3 s per phase step, creates answer locked/initializing and the facade waits them out."""
    slow = await trio.to_thread.run_sync(lambda: sim_factory(delay_s=0.3))
    async with open_engine(_config(slow), poll=FAST_POLL) as engine:
        vm = await _vm_named(engine, "myvm")
        snap = await engine.create_snapshot(vm.id, description=f"rhvfs-test-{uuid.uuid4()}")
        assert snap.status == "ok"
        try:
            disk = (await engine.snapshot_disks(vm.id, snap.id))[0]
            transfer = await engine.start_transfer(snapshot_image_id=disk.image_id)
            assert transfer.phase == "transferring" and transfer.transfer_url
            await engine.finalize_transfer(transfer.id)
            assert (await engine.get_disk(disk.id)).status == "ok"
        finally:
            await engine.remove_snapshot(vm.id, snap.id)
        assert snap.id not in {s.id for s in await engine.list_snapshots(vm.id)}


async def test_templates_nics_and_profiles(sim: Any, engine: Engine) -> None:
    tpl = next(t for t in await engine.list_templates() if t.name == "mytemplate")
    assert await engine.get_template(tpl.id) == tpl
    atts = await engine.template_disk_attachments(tpl.id)
    assert len(atts) >= 1 and all(a.disk.provisioned_size > 0 for a in atts)
    # template_ovf content is checked in test_engine_ovf.py.
    assert b"<template " in await engine.template_xml(tpl.id)
    await engine.template_nics(tpl.id)  # may be empty; must not fail

    profiles = await engine.list_vnic_profiles()
    by_id = {p.id: p for p in profiles}
    assert "ovirtmgmt" in {p.name for p in profiles}
    vm = await _vm_named(engine, "myvm")
    nics = await engine.vm_nics(vm.id)
    assert nics, "myvm has a NIC in the sample inventory"
    for nic in nics:
        assert nic.mac and nic.interface
        if nic.vnic_profile_id:
            assert nic.vnic_profile_name == by_id[nic.vnic_profile_id].name
            assert nic.network_name == by_id[nic.vnic_profile_id].network_name


async def test_plain_vm_with_disk_and_nic_start_stop_remove(sim: Any, engine: Engine) -> None:
    name = f"rhvfs-test-{uuid.uuid4().hex[:8]}"
    vm = await engine.create_vm(
        name=name, cluster="Default", memory=512 << 20, cpu_sockets=1, cpu_cores=1
    )
    disk_id = str(uuid.uuid4())
    try:
        assert (vm.name, vm.status, vm.memory) == (name, "down", 512 << 20)
        await engine.create_disk(
            alias=f"{name}-disk",
            provisioned_size=2 << 20,
            format="raw",
            sparse=True,
            storage_domain="mydata",
            disk_id=disk_id,
        )
        att = await engine.attach_disk(vm.id, disk_id, interface="virtio_scsi", bootable=True)
        assert (att.disk.id, att.interface, att.bootable, att.active) == (
            disk_id,
            "virtio_scsi",
            True,
            True,
        )
        profile = next(p for p in await engine.list_vnic_profiles() if p.name == "ovirtmgmt")
        nic = await engine.add_nic(
            vm.id,
            name="nic1",
            interface="virtio",
            mac="56:6f:aa:bb:cc:01",
            vnic_profile_id=profile.id,
        )
        assert (nic.name, nic.mac, nic.vnic_profile_id) == ("nic1", "56:6f:aa:bb:cc:01", profile.id)
        assert (await engine.start_vm(vm.id)).status == "up"
        assert (await engine.stop_vm(vm.id)).status == "down"
    finally:
        await engine.remove_vm(vm.id)
    assert await engine.find_vm(name) is None
    with pytest.raises(NotFound):
        await engine.get_disk(disk_id)  # removed with the VM


async def test_incremental_backup_after_a_guest_write(sim: Any, engine: Engine) -> None:
    vm = await _vm_named(engine, "myvm")
    cow = [
        a.disk
        for a in await engine.disk_attachments(vm.id)
        if a.disk.format == "cow" and a.disk.backup == "incremental"
    ]
    full = await engine.start_backup(vm.id, [d.id for d in cow])
    await engine.finalize_backup(vm.id, full.id)
    base = full.to_checkpoint_id
    assert base
    await trio.to_thread.run_sync(
        lambda: sim.admin.guest_write(
            # Beyond the guest filesystem (at most 65 MiB into the disk), so the shared
            # sample VM stays mountable for later tests (virt-ls).
            vm="myvm",
            disk=cow[0].id,
            offset=200 << 20,
            size=65536,
            pattern=0x5A,
        )
    )
    incr = await engine.start_backup(vm.id, [d.id for d in cow], from_checkpoint_id=base)
    try:
        assert incr.from_checkpoint_id == base and incr.to_checkpoint_id not in (None, base)
        modes = {d.id: d.backup_mode for d in await engine.backup_disks(vm.id, incr.id)}
        assert modes == {d.id: "incremental" for d in cow}
    finally:
        await engine.finalize_backup(vm.id, incr.id)
    checkpoints = {c.id: c for c in await engine.list_checkpoints(vm.id)}
    assert checkpoints[incr.to_checkpoint_id or ""].parent_id == base
    for cp in (incr.to_checkpoint_id, base):
        await engine.remove_checkpoint(vm.id, cp or "")
    assert not {base, incr.to_checkpoint_id} & {c.id for c in await engine.list_checkpoints(vm.id)}


async def test_upload_transfer_into_a_new_disk(sim: Any, engine: Engine) -> None:
    size = 1 << 20
    data = bytes(range(256)) * (size // 256 // 2) + b"\0" * (size // 2)
    disk_id = str(uuid.uuid4())
    await engine.create_disk(
        alias="rhvfs-test-upload",
        provisioned_size=size,
        format="raw",
        sparse=True,
        storage_domain="mydata",
        disk_id=disk_id,
    )
    try:
        transfer = await engine.start_transfer(
            disk_id=disk_id, direction="upload", timeout_policy="cancel"
        )
        assert (
            transfer.phase == "transferring"
            and transfer.direction == "upload"
            and transfer.disk_id == disk_id
        )
        try:
            async with httpx.AsyncClient(verify=_tls(sim.cafile), timeout=60) as client:
                r = await client.put(
                    transfer.transfer_url or "",
                    content=data[: size // 2],
                    headers={"Content-Range": f"bytes 0-{size // 2 - 1}/*"},
                )
                assert r.status_code == 200
                r = await client.patch(transfer.transfer_url or "", json={"op": "flush"})
                assert r.status_code == 200
        except BaseException:
            await engine.cancel_transfer(transfer.id)
            raise
        await engine.finalize_transfer(transfer.id)
        assert (await engine.get_disk(disk_id)).status == "ok"
        assert (
            await trio.to_thread.run_sync(sim.admin.disk_sha256, disk_id)
            == hashlib.sha256(data).hexdigest()
        )
    finally:
        await engine.remove_disk(disk_id)


async def test_no_credential_in_logs(sim: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_engine(_config(sim), poll=FAST_POLL) as eng:
        vm = await _vm_named(eng, "myvm")
        await eng.get_vm(vm.id)
    async with open_engine(_config(sim, password="wrong-" + sim.password), poll=FAST_POLL) as eng:
        with pytest.raises(AuthenticationError):
            await eng.list_clusters()
    assert any(r.name.startswith("rhvfs.engine") for r in caplog.records)
    assert sim.password not in caplog.text


async def test_concurrent_calls_share_a_bounded_pool(sim: Any) -> None:
    async with open_engine(_config(sim), connections=2, poll=FAST_POLL) as eng:
        vms = await eng.list_vms()
        results: dict[str, str] = {}

        async def fetch(vm_id: str) -> None:
            results[vm_id] = (await eng.get_vm(vm_id)).name

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                for vm in vms:
                    nursery.start_soon(fetch, vm.id)
        assert results == {vm.id: vm.name for vm in vms}
        stats = eng.statistics()
        assert stats["connections_opened"] == 2
        assert stats["requests"] == 1 + 3 * len(vms)


async def test_slow_answer_times_out_and_is_retried(sim: Any, flaky_engine: Engine) -> None:
    async with open_engine(
        _config(sim, system_interval=0.05), poll=FAST_POLL, request_timeout_s=1
    ) as eng:
        expected = {c.id for c in await eng.list_clusters()}
        await trio.to_thread.run_sync(
            lambda: sim.admin.add_fault(
                "engine-delay", method="GET", path="/ovirt-engine/api/clusters", delay=3.0, times=1
            )
        )
        start = trio.current_time()
        assert {c.id for c in await eng.list_clusters()} == expected
        assert 1.0 <= trio.current_time() - start < 3.0  # gave up on the slow answer after ~1 s


async def test_transient_errors_while_polling_a_transfer_are_tolerated(
    sim: Any, flaky_engine: Engine
) -> None:
    engine = flaky_engine
    vm = await _vm_named(engine, "myvm")
    snap = await engine.create_snapshot(vm.id, description=f"rhvfs-test-{uuid.uuid4()}")
    try:
        disk = (await engine.snapshot_disks(vm.id, snap.id))[0]
        transfer = await engine.start_transfer(snapshot_image_id=disk.image_id)
        await trio.to_thread.run_sync(
            lambda: sim.admin.add_fault(
                "engine-error",
                method="GET",
                path=f"/ovirt-engine/api/imagetransfers/{transfer.id}",
                status=503,
                times=3,
            )
        )
        await engine.finalize_transfer(transfer.id)
        try:
            assert (await engine.get_transfer(transfer.id)).phase == "finished_success"
        except NotFound:
            pass
    finally:
        await engine.remove_snapshot(vm.id, snap.id)


async def test_vm_restored_from_its_ovf_keeps_ids_and_reattaches_disks(
    sim: Any, engine: Engine
) -> None:
    name = f"rhvfs-test-{uuid.uuid4().hex[:8]}"
    vm = await engine.create_vm(name=name, cluster="Default", memory=256 << 20)
    disk_id = str(uuid.uuid4())
    try:
        await engine.create_disk(
            alias=f"{name}-d",
            provisioned_size=1 << 20,
            format="cow",
            sparse=True,
            storage_domain="mydata",
            disk_id=disk_id,
        )
        await engine.attach_disk(vm.id, disk_id, interface="virtio", bootable=True)
        await engine.add_nic(vm.id, name="nic1", interface="virtio")
        ovf = await engine.vm_ovf(vm.id)
        assert disk_id in ovf
        await engine.remove_vm(vm.id, detach_only=True)
        assert (await engine.get_disk(disk_id)).status == "ok"  # the disk survived

        restored = await engine.create_vm_from_ovf(ovf=ovf, cluster="Default")
        assert (restored.id, restored.name, restored.status) == (vm.id, name, "down")
        atts = await engine.disk_attachments(restored.id)
        assert [(a.disk.id, a.interface, a.bootable) for a in atts] == [(disk_id, "virtio", True)]
        assert [n.name for n in await engine.vm_nics(restored.id)] == ["nic1"]
    finally:
        try:
            await engine.remove_vm(vm.id)
        finally:
            try:
                await engine.remove_disk(disk_id)
            except NotFound:
                pass
    with pytest.raises(NotFound):
        await engine.get_disk(disk_id)


@pytest.mark.allow_log("rhvfs.engine._core", "WARNING", match="logout did not finish")
async def test_a_hanging_logout_does_not_hold_up_close(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rhvfs.engine._core as core

    monkeypatch.setattr(core, "LOGOUT_TIMEOUT_S", 1.0)
    try:
        async with open_engine(_config(sim), poll=FAST_POLL) as eng:
            assert await eng.list_clusters()
            await trio.to_thread.run_sync(
                lambda: sim.admin.add_fault(
                    "engine-delay",
                    method="POST",
                    path="/ovirt-engine/services/sso-logout",
                    delay=4.0,
                    times=1,
                )
            )
            start = trio.current_time()
        assert 0.9 <= trio.current_time() - start < 3.0
    finally:
        await trio.to_thread.run_sync(sim.admin.clear_faults)


async def test_find_vm_with_a_name_that_needs_quoting(sim: Any, engine: Engine) -> None:
    name = f"rhvfs test {uuid.uuid4().hex[:6]}"
    vm = await engine.create_vm(name=name, cluster="Default")
    try:
        assert await engine.find_vm(name) == vm
        assert await engine.find_vm(name.upper()) is None  # exact match only
    finally:
        await engine.remove_vm(vm.id)


async def test_listings_inline_attachments_nics_and_tags(sim: Any, engine: Engine) -> None:
    """``list_vms``/``list_templates`` (one call each) give what the per-VM calls give."""
    before = dict(engine.calls_by_kind)
    vms = await engine.list_vms()
    templates = await engine.list_templates()
    made = {k: n - before.get(k, 0) for k, n in engine.calls_by_kind.items()}
    assert {k: n for k, n in made.items() if n} == {"list vms": 1, "list templates": 1}
    for vm in vms:
        assert vm.disk_attachments is not None and vm.nics is not None
        assert list(vm.disk_attachments) == await engine.disk_attachments(vm.id), vm.name
        assert list(vm.nics) == await engine.vm_nics(vm.id), vm.name
        assert sorted(vm.tag_ids) == sorted(t.id for t in await engine.vm_tags(vm.id)), vm.name
    assert any(vm.tag_ids for vm in vms) and any(len(vm.disk_attachments or ()) > 1 for vm in vms)
    for tpl in templates:
        assert list(tpl.disk_attachments or ()) == await engine.template_disk_attachments(tpl.id)
        assert list(tpl.nics or ()) == await engine.template_nics(tpl.id)

    # listed_vm answers from the latest listing without a call (it is younger than the
    # listing TTL); a VM rhvfs changed is fetched alone.
    web01 = next(v for v in await engine.list_vms() if v.name == "web01")
    requests = engine.requests
    assert (await engine.listed_vm(web01.id)).disk_attachments == web01.disk_attachments
    assert engine.requests == requests
    engine.forget_listed(web01.id)
    again = await engine.listed_vm(web01.id)
    assert again == web01 and again.disk_attachments == web01.disk_attachments
    assert engine.requests == requests + 1
    assert await engine.listed_vm(web01.id) == web01
    assert engine.requests == requests + 1
    # An old listing (here: dropped) is taken again, once for all concurrent callers.
    engine.invalidate_listings()
    before = dict(engine.calls_by_kind)
    async with trio.open_nursery() as nursery:
        for vm in vms:
            nursery.start_soon(engine.listed_vm, vm.id)
    made = {k: n - before.get(k, 0) for k, n in engine.calls_by_kind.items()}
    assert {k: n for k, n in made.items() if n} == {"list vms": 1}

    # One all-content GET gives the OVF and the XML the two separate reads give.
    ovf, xml = await engine.vm_config(web01.id)
    assert ovf == await engine.vm_ovf(web01.id)
    assert xml == await engine.vm_xml(web01.id)


async def test_product_version_and_external_events(sim: Any, engine: Engine) -> None:
    product = await engine.product_info()
    assert (product.name, product.version) == ("oVirt Engine", "4.5.5-1.el8")
    vm = await _vm_named(engine, "myvm")
    custom_id = uuid.uuid4().int % (2**31 - 1) + 1
    text = f"external event {uuid.uuid4()}"
    await engine.add_event(description=text, severity="warning", custom_id=custom_id, vm_id=vm.id)
    # the engine keeps (origin, custom_id) unique: a second event with them is refused
    with pytest.raises(Conflict):
        await engine.add_event(description=text, severity="normal", custom_id=custom_id)

    def listed() -> list[Any]:
        conn = sim.sdk_connection()
        try:
            return list(conn.system_service().events_service().list(search=f"origin=rhvfs {text}"))
        finally:
            conn.close()

    (event,) = await trio.to_thread.run_sync(listed)
    assert (event.description, event.severity.value, event.origin) == (text, "warning", "rhvfs")
    assert (event.custom_id, event.vm.id) == (custom_id, vm.id)


def test_the_simulator_refuses_external_events_without_origin_or_custom_id(sim: Any) -> None:
    import ovirtsdk4 as sdk
    import ovirtsdk4.types as types

    conn = sim.sdk_connection()
    try:
        events = conn.system_service().events_service()
        for event in (
            types.Event(description="x", severity=types.LogSeverity.NORMAL, origin="rhvfs"),
            types.Event(description="x", severity=types.LogSeverity.NORMAL, custom_id=7),
        ):
            with pytest.raises(sdk.Error) as err:
                events.add(event)
            assert err.value.code == 400
        with pytest.raises(sdk.Error) as err:
            events.add(
                types.Event(
                    description="x", severity=types.LogSeverity.NORMAL, origin="oVirt", custom_id=8
                )
            )
        assert err.value.code == 409
    finally:
        conn.close()
