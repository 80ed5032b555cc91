"""Engine behaviours beyond the happy path: auth wire format, transfer phases and
policies, fault injection, VM lifecycle, OVF import, tags, checkpoints.

Destructive tests run on their own simulator (`sim_factory`); the rest clean up.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ovirtsdk4 as sdk
import pytest
from ovirt_imageio import client as imageio
from ovirtsdk4 import types

from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MiB = 1024**2
P = types.ImageTransferPhase


def _https(
    sim: Any,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=sim.cafile)
    port = urllib.parse.urlsplit(sim.engine_url).port
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _transfers(conn: Any) -> Any:
    return conn.system_service().image_transfers_service()


def _start(conn: Any, **kwargs: Any) -> types.ImageTransfer:
    t = _transfers(conn).add(types.ImageTransfer(**kwargs))
    ts = _transfers(conn).image_transfer_service(t.id)
    return wait_for("transferring", lambda: (x := ts.get()).phase == P.TRANSFERRING and x)


def _vm(conn: Any, name: str) -> types.Vm:
    return conn.system_service().vms_service().list(search=f"name={name}", case_sensitive=True)[0]


def _disk(conn: Any, vm: types.Vm, alias: str) -> types.Disk:
    for att in conn.follow_link(vm.disk_attachments):
        d = conn.follow_link(att.disk)
        if d.alias == alias:
            return d
    raise AssertionError(alias)


def test_auth_wire_format(sim: Any) -> None:
    # SSO: token JSON, errors as JSON with an "error" key.
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "scope": "ovirt-app-api",
            "username": sim.username,
            "password": sim.password,
        }
    ).encode()
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    status, headers, body = _https(sim, "POST", "/ovirt-engine/sso/oauth/token", form, hdrs)
    assert status == 200 and headers["content-type"].startswith("application/json")
    token = json.loads(body)
    assert token["token_type"] == "bearer" and token["access_token"] and int(token["exp"]) > 0
    bad = form.replace(urllib.parse.quote(sim.password).encode(), b"nope")
    status, _, body = _https(sim, "POST", "/ovirt-engine/sso/oauth/token", bad, hdrs)
    assert status == 400 and json.loads(body)["error_code"] == "access_denied"
    # API: Bearer and Basic work; nothing or bad credentials -> 401, empty body.
    status, _, body = _https(
        sim,
        "GET",
        "/ovirt-engine/api",
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert status == 200 and body.lstrip().startswith(b"<?xml")
    basic = base64.b64encode(f"{sim.username}:{sim.password}".encode()).decode()
    status, _, _ = _https(
        sim, "GET", "/ovirt-engine/api/vms", headers={"Authorization": f"Basic {basic}"}
    )
    assert status == 200
    status, headers, _ = _https(
        sim,
        "GET",
        "/ovirt-engine/api",
        headers={"Authorization": f"Basic {basic}", "Prefer": "persistent-auth"},
    )
    cookie = headers["set-cookie"].split(";")[0]
    assert status == 200 and cookie.startswith("JSESSIONID=")
    status, _, _ = _https(sim, "GET", "/ovirt-engine/api/hosts", headers={"Cookie": cookie})
    assert status == 200
    status, _, _ = _https(sim, "GET", "/ovirt-engine/api/hosts", headers={"Cookie": "JSESSIONID=x"})
    assert status == 401
    status, headers, body = _https(
        sim, "GET", "/ovirt-engine/api/vms", headers={"Authorization": "Bearer nope"}
    )
    assert (status, body) == (401, b"") and "www-authenticate" in headers
    # Logout answers JSON and revokes the token.
    logout = urllib.parse.urlencode(
        {"scope": "ovirt-app-api", "token": token["access_token"]}
    ).encode()
    status, headers, body = _https(sim, "POST", "/ovirt-engine/services/sso-logout", logout, hdrs)
    assert status == 200 and json.loads(body) == {}
    status, _, _ = _https(
        sim,
        "GET",
        "/ovirt-engine/api",
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert status == 401
    # The CA is served without auth at the engine's pki-resource URL.
    status, headers, body = _https(
        sim, "GET", "/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA"
    )
    assert status == 200 and body == Path(sim.cafile).read_bytes()
    # The SDK logs in again after its token is revoked.
    conn = sim.sdk_connection()
    try:
        conn.system_service().get()
        sim.admin.add_fault("revoke-tokens")
        assert conn.system_service().vms_service().list(search="name=myvm")[0].name == "myvm"
    finally:
        conn.close()


def test_cow_download_is_the_volume_file_and_shallow_shows_holes(sim: Any, tmp_path: Path) -> None:
    conn = sim.sdk_connection()
    try:
        disk = _disk(conn, _vm(conn, "myvm"), "mydisk")
        chain = (
            conn.system_service()
            .disks_service()
            .disk_service(disk.id)
            .disk_snapshots_service()
            .list()
        )
        assert len(chain) == 1 and chain[0].disk.id == disk.id and chain[0].parent is None
        base = chain[0].id
        volume_file = sim.state_dir / "storage" / disk.storage_domains[0].id / disk.id / base
        t = _start(
            conn,
            snapshot=types.DiskSnapshot(id=base),
            direction=types.ImageTransferDirection.DOWNLOAD,
            format=types.DiskFormat.COW,
        )
        try:
            c = imageio.ImageioClient(t.transfer_url, cafile=sim.cafile)
            try:
                size = c.size()
                buf = bytearray(size)
                c.read(0, memoryview(buf))
            finally:
                c.close()
        finally:
            _transfers(conn).image_transfer_service(t.id).finalize()
        assert size == volume_file.stat().st_size
        assert (
            hashlib.sha256(buf).hexdigest() == hashlib.sha256(volume_file.read_bytes()).hexdigest()
        )
        # Shallow raw download of the active layer: everything not written since mysnap is a hole.
        wait_for(
            "disk unlocked",
            lambda: (
                conn.system_service().disks_service().disk_service(disk.id).get().status
                == types.DiskStatus.OK
            ),
        )
        t = _start(
            conn,
            disk=types.Disk(id=disk.id),
            direction=types.ImageTransferDirection.DOWNLOAD,
            format=types.DiskFormat.RAW,
            shallow=True,
        )
        try:
            c = imageio.ImageioClient(t.transfer_url, cafile=sim.cafile)
            try:
                extents = list(c.extents("zero"))
            finally:
                c.close()
        finally:
            _transfers(conn).image_transfer_service(t.id).finalize()
        assert extents[-1].start + extents[-1].length == disk.provisioned_size
        assert all(e.hole for e in extents)
        wait_for(
            "disk unlocked",
            lambda: (
                conn.system_service().disks_service().disk_service(disk.id).get().status
                == types.DiskStatus.OK
            ),
        )
    finally:
        conn.close()


def test_flushes_keep_an_idle_upload_alive_like_imageio_tickets(sim: Any) -> None:
    """The engine cancels an upload whose ticket's ``idle_time`` (imageio: seconds since the
    last request ended) exceeds the inactivity timeout; every request resets it, a flush
    that writes nothing too. So flushes alone keep it transferring past the timeout, and
    once they stop the engine cancels it (policy cancel: the disk goes away)."""
    conn = sim.sdk_connection()
    try:
        disks = conn.system_service().disks_service()
        d = disks.add(
            types.Disk(
                name="keepalive",
                format=types.DiskFormat.RAW,
                provisioned_size=4 * MiB,
                storage_domains=[types.StorageDomain(name="mydata")],
            )
        )
        ds = disks.disk_service(d.id)
        wait_for("disk ok", lambda: ds.get().status == types.DiskStatus.OK)
        t = _start(
            conn,
            disk=types.Disk(id=d.id),
            format=types.DiskFormat.RAW,
            inactivity_timeout=4,
            timeout_policy=types.ImageTransferTimeoutPolicy.CANCEL,
        )
        ts = _transfers(conn).image_transfer_service(t.id)
        c = imageio.ImageioClient(t.transfer_url, cafile=sim.cafile)
        try:
            c.write(0, b"\x5a" * 65536)
            c.flush()
            end = time.monotonic() + 12  # three times the inactivity timeout
            while time.monotonic() < end:
                time.sleep(0.5)
                c.flush()
                assert ts.get().phase == P.TRANSFERRING
        finally:
            c.close()
        wait_for("cancelled when idle", lambda: ts.get().phase == P.FINISHED_FAILURE, timeout_s=20)
        wait_for("disk removed", lambda: d.id not in {x.id for x in disks.list()})
    finally:
        conn.close()


@pytest.mark.slow
def test_transfer_policies_and_faults(sim_factory: Callable[..., Any]) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        disks = conn.system_service().disks_service()
        sd = conn.system_service().storage_domains_service().list(search="name=mydata")[0]

        def new_disk(name: str) -> types.Disk:
            d = disks.add(
                types.Disk(
                    name=name,
                    format=types.DiskFormat.COW,
                    provisioned_size=16 * MiB,
                    storage_domains=[types.StorageDomain(name="mydata")],
                )
            )
            ds = disks.disk_service(d.id)
            wait_for("disk ok", lambda: ds.get().status == types.DiskStatus.OK)
            assert ds.get().storage_domains[0].id == sd.id
            return d

        # Cancelled upload: the disk goes away.
        d = new_disk("cancelled")
        t = _start(conn, disk=types.Disk(id=d.id))  # direction defaults to upload
        assert t.direction == types.ImageTransferDirection.UPLOAD
        assert disks.disk_service(d.id).get().status == types.DiskStatus.LOCKED
        _transfers(conn).image_transfer_service(t.id).cancel()
        ts = _transfers(conn).image_transfer_service(t.id)
        wait_for("finished_failure", lambda: ts.get().phase == P.FINISHED_FAILURE)
        assert d.id not in {x.id for x in disks.list()}

        # Inactivity with policy cancel on a download: cancelled by the system, disk unlocked.
        d = new_disk("idle")
        t = _start(
            conn,
            disk=types.Disk(id=d.id),
            direction=types.ImageTransferDirection.DOWNLOAD,
            inactivity_timeout=1,
            timeout_policy=types.ImageTransferTimeoutPolicy.CANCEL,
        )
        ts = _transfers(conn).image_transfer_service(t.id)
        phases = set()
        wait_for(
            "idle cancel",
            lambda: phases.add(ts.get().phase) or ts.get().phase == P.FINISHED_FAILURE,
            timeout_s=20,
        )
        assert disks.disk_service(d.id).get().status == types.DiskStatus.OK

        # Inactivity with policy pause on an upload: paused_system; resume; finalize.
        t = _start(
            conn,
            disk=types.Disk(id=d.id),
            format=types.DiskFormat.RAW,
            inactivity_timeout=1,
            timeout_policy=types.ImageTransferTimeoutPolicy.PAUSE,
        )
        ts = _transfers(conn).image_transfer_service(t.id)
        wait_for("paused_system", lambda: ts.get().phase == P.PAUSED_SYSTEM, timeout_s=20)
        ts.resume()
        wait_for("transferring again", lambda: ts.get().phase == P.TRANSFERRING)
        c = imageio.ImageioClient(ts.get().transfer_url, cafile=s.cafile)
        try:
            c.write(0, b"\x42" * 65536)
            c.flush()
        finally:
            c.close()
        ts.finalize()
        wait_for("finished_success", lambda: ts.get().phase == P.FINISHED_SUCCESS)
        content = s.admin.disk_sha256(d.id)
        expected = hashlib.sha256(b"\x42" * 65536 + bytes(16 * MiB - 65536)).hexdigest()
        assert content == expected

        # Faults: pause-transfer, expire-ticket (403 while still transferring), engine 5xx and delay.
        t = _start(conn, disk=types.Disk(id=d.id), direction=types.ImageTransferDirection.DOWNLOAD)
        ts = _transfers(conn).image_transfer_service(t.id)
        s.admin.add_fault("expire-ticket", transfer=t.id)
        with pytest.raises(Exception, match="not allowed to access"):
            imageio.ImageioClient(t.transfer_url, cafile=s.cafile)
        assert ts.get().phase == P.TRANSFERRING
        ts.finalize()
        wait_for("finished_success", lambda: ts.get().phase == P.FINISHED_SUCCESS)
        t = _start(conn, disk=types.Disk(id=d.id), direction=types.ImageTransferDirection.DOWNLOAD)
        ts = _transfers(conn).image_transfer_service(t.id)
        s.admin.add_fault("pause-transfer", transfer=t.id)
        assert ts.get().phase == P.PAUSED_SYSTEM
        ts.cancel()
        wait_for("finished", lambda: ts.get().phase == P.FINISHED_FAILURE)
        assert disks.disk_service(d.id).get().status == types.DiskStatus.OK

        s.admin.add_fault(
            "engine-error", method="GET", path="/ovirt-engine/api/disks/*", status=503, times=1
        )
        with pytest.raises(sdk.Error) as err:
            disks.disk_service(d.id).get()
        assert err.value.code == 503
        assert disks.disk_service(d.id).get().id == d.id
        s.admin.add_fault("engine-delay", path="/ovirt-engine/api/disks/*", delay=0.5, times=1)
        start = time.monotonic()
        disks.disk_service(d.id).get()
        assert time.monotonic() - start >= 0.5

        # A dropped imageio connection: the proxy cuts the stream after 1 MiB.
        t = _start(
            conn,
            disk=types.Disk(id=d.id),
            direction=types.ImageTransferDirection.DOWNLOAD,
            format=types.DiskFormat.RAW,
        )
        ts = _transfers(conn).image_transfer_service(t.id)
        c = imageio.ImageioClient(t.transfer_url, cafile=s.cafile)
        try:
            s.admin.add_fault("drop-imageio", after_bytes=MiB, times=1)
            c2 = imageio.ImageioClient(t.transfer_url, cafile=s.cafile)
            try:
                with pytest.raises((OSError, http.client.HTTPException, RuntimeError)) as cut:
                    buf = bytearray(8 * MiB)
                    c2.read(0, memoryview(buf))
            finally:
                c2.close()
            assert "out of image bounds" not in str(cut.value), repr(cut.value)
            # The next connection is not cut: the whole disk reads fine.
            buf = bytearray(8 * MiB)
            c.read(0, memoryview(buf))
            assert bytes(buf[:65536]) == b"\x42" * 65536
        finally:
            c.close()
        s.admin.clear_faults()
        ts.finalize()
        wait_for("finished_success", lambda: ts.get().phase == P.FINISHED_SUCCESS)
    finally:
        conn.close()


@pytest.mark.slow
def test_vm_lifecycle_ovf_import_tags_and_checkpoints(sim_factory: Callable[..., Any]) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm = vms.add(
            types.Vm(
                name="newvm",
                cluster=types.Cluster(name="Default"),
                template=types.Template(name="Blank"),
                memory=512 * MiB,
            )
        )
        assert vm.status == types.VmStatus.DOWN
        vs = vms.vm_service(vm.id)
        att = vs.disk_attachments_service().add(
            types.DiskAttachment(
                disk=types.Disk(
                    name="newvm_disk",
                    format=types.DiskFormat.COW,
                    provisioned_size=32 * MiB,
                    backup=types.DiskBackup.INCREMENTAL,
                    storage_domains=[types.StorageDomain(name="mydata")],
                ),
                interface=types.DiskInterface.VIRTIO_SCSI,
                bootable=True,
                active=True,
            )
        )
        ds = conn.system_service().disks_service().disk_service(att.disk.id)
        wait_for("disk ok", lambda: ds.get().status == types.DiskStatus.OK)
        vs.nics_service().add(
            types.Nic(
                name="nic1",
                vnic_profile=types.VnicProfile(
                    id=conn.system_service().vnic_profiles_service().list()[0].id
                ),
            )
        )
        vs.tags_service().add(types.Tag(name="mytag"))
        assert [t.name for t in vs.tags_service().list()] == ["mytag"]
        assert "newvm" in [v.name for v in vms.list(search="tag=mytag")]
        vs.start()
        wait_for("up", lambda: vs.get().status == types.VmStatus.UP)
        assert vs.get().host is not None
        with pytest.raises(sdk.Error) as err:
            vs.remove()
        assert err.value.code == 409
        vs.stop()
        wait_for("down", lambda: vs.get().status == types.VmStatus.DOWN)

        # A backup creates a checkpoint; removing it drops it (404 afterwards).
        backups = vs.backups_service()
        b = backups.add(types.Backup(disks=[types.Disk(id=att.disk.id)]))
        bs = backups.backup_service(b.id)
        cp = wait_for(
            "ready", lambda: (x := bs.get()).phase == types.BackupPhase.READY and x
        ).to_checkpoint_id
        bs.finalize()
        wait_for("succeeded", lambda: bs.get().phase == types.BackupPhase.SUCCEEDED)
        cps = vs.checkpoints_service()
        assert [d.id for d in cps.checkpoint_service(cp).disks_service().list()] == [att.disk.id]
        cps.checkpoint_service(cp).remove()
        with pytest.raises(sdk.NotFoundError):
            cps.checkpoint_service(cp).get()

        # Export the configuration, remove the VM keeping its disk, import it back (201, same ids).
        ovf = vms.list(search="name=newvm", all_content=True)[0].initialization.configuration.data
        assert vm.id in ovf and att.disk.id in ovf
        vs.remove(detach_only=True)
        with pytest.raises(sdk.NotFoundError):
            vs.get()
        restored = vms.add(
            types.Vm(
                cluster=types.Cluster(name="Default"),
                initialization=types.Initialization(
                    configuration=types.Configuration(type=types.ConfigurationType.OVF, data=ovf)
                ),
            )
        )
        assert (restored.id, restored.name) == (vm.id, "newvm")
        rs = vms.vm_service(restored.id)
        atts = rs.disk_attachments_service().list()
        assert [(a.id, a.bootable, a.interface) for a in atts] == [
            (att.disk.id, True, types.DiskInterface.VIRTIO_SCSI)
        ]
        assert [n.name for n in rs.nics_service().list()] == ["nic1"]
        # A second import clashes (409); as a copy it gets a new id and no disks.
        with pytest.raises(sdk.Error) as err:
            vms.add(
                types.Vm(
                    cluster=types.Cluster(name="Default"),
                    initialization=types.Initialization(
                        configuration=types.Configuration(
                            type=types.ConfigurationType.OVF, data=ovf
                        )
                    ),
                )
            )
        assert err.value.code == 409
        copy = vms.add(
            types.Vm(
                name="newvm-copy",
                cluster=types.Cluster(name="Default"),
                initialization=types.Initialization(
                    regenerate_ids=True,
                    configuration=types.Configuration(type=types.ConfigurationType.OVF, data=ovf),
                ),
            )
        )
        assert copy.id != vm.id and vms.vm_service(copy.id).disk_attachments_service().list() == []
        rs.remove()
        assert att.disk.id not in {d.id for d in conn.system_service().disks_service().list()}
    finally:
        conn.close()


@pytest.mark.slow
def test_vm_from_template_copies_its_disk_and_disks_grow(sim_factory: Callable[..., Any]) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        system = conn.system_service()
        template = system.templates_service().list(search="name=mytemplate")[0]
        assert {t.name for t in system.templates_service().list()} >= {"mytemplate"}
        tdisk = (
            system.disks_service()
            .disk_service(
                system.templates_service()
                .template_service(template.id)
                .disk_attachments_service()
                .list()[0]
                .id
            )
            .get()
        )
        vm = system.vms_service().add(
            types.Vm(
                name="fromtemplate",
                cluster=types.Cluster(name="Default"),
                template=types.Template(name="mytemplate"),
            ),
            clone=True,
        )
        vs = system.vms_service().vm_service(vm.id)
        wait_for("vm down", lambda: vs.get().status == types.VmStatus.DOWN)
        atts = vs.disk_attachments_service().list()
        assert len(atts) == 1 and atts[0].id != tdisk.id
        assert s.admin.disk_sha256(atts[0].id) == s.admin.disk_sha256(tdisk.id)
        # Grow the disk through its attachment: the new tail reads as zeroes.
        before = s.admin.disk_sha256(atts[0].id)
        vs.disk_attachments_service().attachment_service(atts[0].id).update(
            types.DiskAttachment(
                disk=types.Disk(provisioned_size=tdisk.provisioned_size + 64 * MiB)
            )
        )
        grown = system.disks_service().disk_service(atts[0].id).get()
        assert grown.provisioned_size == tdisk.provisioned_size + 64 * MiB
        assert s.admin.disk_sha256(atts[0].id) != before
        # Deactivate, then detach: the disk survives as a floating disk.
        vs.disk_attachments_service().attachment_service(atts[0].id).update(
            types.DiskAttachment(active=False)
        )
        assert vs.disk_attachments_service().list()[0].active is False
        vs.disk_attachments_service().attachment_service(atts[0].id).remove()
        assert vs.disk_attachments_service().list() == []
        assert system.disks_service().disk_service(atts[0].id).get().status == types.DiskStatus.OK
        vs.remove()
        with pytest.raises(sdk.NotFoundError):
            vs.get()
    finally:
        conn.close()


def test_disk_add_answers_locked_or_waits_when_asked(sim: Any) -> None:
    conn = sim.sdk_connection()
    try:
        disks = conn.system_service().disks_service()
        spec = dict(
            format=types.DiskFormat.RAW,
            provisioned_size=8 * MiB,
            storage_domains=[types.StorageDomain(name="mydata")],
        )
        waited = disks.add(types.Disk(name="expect-201", **spec), headers={"Expect": "201-created"})
        assert waited.status == types.DiskStatus.OK
        quick = disks.add(types.Disk(name="expect-202", sparse=False, **spec))
        assert quick.status in (types.DiskStatus.LOCKED, types.DiskStatus.OK)
        wait_for(
            "disk ok", lambda: disks.disk_service(quick.id).get().status == types.DiskStatus.OK
        )
        assert sim.admin.disk_sha256(quick.id) == sim.admin.disk_sha256(waited.id)
        with pytest.raises(sdk.Error) as err:
            disks.add(
                types.Disk(
                    name="no-size",
                    format=types.DiskFormat.RAW,
                    storage_domains=[types.StorageDomain(name="mydata")],
                )
            )
        assert err.value.code == 400
        with pytest.raises(sdk.Error) as err:
            disks.add(
                types.Disk(name="raw-incremental", backup=types.DiskBackup.INCREMENTAL, **spec)
            )
        assert err.value.code == 409
        for d in (waited, quick):
            disks.disk_service(d.id).remove()
    finally:
        conn.close()


@pytest.mark.slow
def test_templates_blank_ovf_export_and_import(sim_factory: Callable[..., Any]) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        templates = conn.system_service().templates_service()
        names = [t.name for t in templates.list()]
        assert names[0] == "Blank" and "mytemplate" in names
        blank = templates.template_service("00000000-0000-0000-0000-000000000000").get()
        assert (blank.name, blank.description) == ("Blank", "Blank template")
        tpl = templates.list(search="name=mytemplate")[0]
        ts = templates.template_service(tpl.id)
        # TemplateService.get() has no all_content parameter (it swallows kwargs): use the header.
        ovf = ts.get(headers={"All-Content": "true"}).initialization.configuration.data
        disk_id = ts.disk_attachments_service().list()[0].id
        assert tpl.id in ovf and disk_id in ovf
        content = s.admin.disk_sha256(disk_id)
        # mytemplate has a VM made from it: refused. Remove that VM first.
        with pytest.raises(sdk.Error) as err:
            ts.remove()
        assert err.value.code == 409
        conn.system_service().vms_service().vm_service(_vm(conn, "tmplvm").id).remove()
        # Keep the disk: detach it from the template by re-importing over a floating copy is not
        # possible, so export the OVF, remove the template (its disk goes too), and import the
        # OVF with a fresh disk of the same id.
        ts.remove()
        with pytest.raises(sdk.NotFoundError):
            ts.get()
        assert disk_id not in {d.id for d in conn.system_service().disks_service().list()}
        disks = conn.system_service().disks_service()
        disks.add(
            types.Disk(
                id=disk_id,
                name="restored",
                format=types.DiskFormat.RAW,
                provisioned_size=256 * MiB,
                storage_domains=[types.StorageDomain(name="mydata")],
            ),
            headers={"Expect": "201-created"},
        )
        restored = templates.add(
            types.Template(
                cluster=types.Cluster(name="Default"),
                initialization=types.Initialization(
                    configuration=types.Configuration(type=types.ConfigurationType.OVF, data=ovf)
                ),
            )
        )
        assert (restored.id, restored.name) == (tpl.id, "mytemplate")
        rts = templates.template_service(restored.id)
        assert [a.id for a in rts.disk_attachments_service().list()] == [disk_id]
        assert [n.name for n in rts.nics_service().list()] == ["nic1"]
        assert s.admin.disk_sha256(disk_id) != content  # a fresh, empty disk
        with pytest.raises(sdk.Error) as err:
            templates.template_service("00000000-0000-0000-0000-000000000000").remove()
        assert err.value.code == 409
    finally:
        conn.close()


def test_storage_domain_state_and_space_are_enforced(sim: Any) -> None:
    conn = sim.sdk_connection()
    disks = conn.system_service().disks_service()
    spec = dict(
        format=types.DiskFormat.COW,
        provisioned_size=8 * MiB,
        storage_domains=[types.StorageDomain(name="mydata")],
    )
    mydisk = _disk(conn, _vm(conn, "myvm"), "mydisk")
    try:
        sd = conn.system_service().storage_domains_service().list(search="name=mydata")[0]
        assert sd.available + sd.used == 100 * 1024**3 and sd.committed > 0
        sim.admin.add_fault("storage-domain", name="mydata", status="maintenance")
        dc_sds = (
            conn.system_service()
            .data_centers_service()
            .data_center_service(sd.data_centers[0].id)
            .storage_domains_service()
        )
        assert (
            dc_sds.storage_domain_service(sd.id).get().status
            == types.StorageDomainStatus.MAINTENANCE
        )
        for call in (
            lambda: disks.add(types.Disk(name="nope", **spec)),
            lambda: _transfers(conn).add(
                types.ImageTransfer(
                    disk=types.Disk(id=mydisk.id), direction=types.ImageTransferDirection.DOWNLOAD
                )
            ),
        ):
            with pytest.raises(sdk.Error) as err:
                call()
            assert err.value.code == 409
        sim.admin.add_fault(
            "storage-domain", name="mydata", status="active", capacity_bytes=sd.used + 2 * 1024**3
        )
        with pytest.raises(sdk.Error) as err:
            disks.add(
                types.Disk(
                    name="too-big",
                    sparse=False,
                    format=types.DiskFormat.RAW,
                    provisioned_size=3 * 1024**3,
                    storage_domains=[types.StorageDomain(name="mydata")],
                )
            )
        assert err.value.code == 409 and "Low disk space" in str(err.value)
        small = disks.add(types.Disk(name="fits", **spec), headers={"Expect": "201-created"})
        disks.disk_service(small.id).remove()
    finally:
        sim.admin.add_fault(
            "storage-domain", name="mydata", status="active", capacity_bytes=100 * 1024**3
        )
        conn.close()


@pytest.mark.slow
def test_clone_vm_from_snapshot_copies_the_snapshot_content(
    sim_factory: Callable[..., Any],
) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        myvm = _vm(conn, "myvm")
        snaps = vms.vm_service(myvm.id).snapshots_service()
        mysnap = next(x for x in snaps.list() if x.description == "mysnap")
        expected = sorted(
            s.admin.disk_sha256(d.id, image_id=d.image_id)
            for d in snaps.snapshot_service(mysnap.id).disks_service().list()
        )
        # The guest writes after the snapshot: the clone must not see it.
        s.admin.guest_write(vm="myvm", disk="mydisk", offset=0, size=MiB, pattern=0x77)
        clone = vms.add(
            types.Vm(
                name="myclone",
                cluster=types.Cluster(name="Default"),
                snapshots=[types.Snapshot(id=mysnap.id)],
            )
        )
        cs = vms.vm_service(clone.id)
        wait_for("clone down", lambda: cs.get().status == types.VmStatus.DOWN)
        atts = cs.disk_attachments_service().list()
        assert len(atts) == 2 and len(cs.nics_service().list()) == 1
        assert sorted(s.admin.disk_sha256(a.id) for a in atts) == expected
    finally:
        conn.close()


def test_membership_searches_used_by_upstream_clients(sim: Any) -> None:
    conn = sim.sdk_connection()
    try:
        system = conn.system_service()
        dcs = system.data_centers_service()
        assert [d.name for d in dcs.list(search="storage.name=mydata", case_sensitive=True)] == [
            "Default"
        ]
        assert [d.name for d in dcs.list(search="storage.name=remote-data")] == ["remote"]
        assert [d.name for d in dcs.list(search="Clusters.name=mycluster")] == ["Default"]
        hosts = system.hosts_service().list(
            search="datacenter=Default and status=Up", case_sensitive=True
        )
        assert [h.name for h in hosts] == ["host1"]
        assert sorted(v.name for v in system.vms_service().list(search="tag=production")) == [
            "db01",
            "web01",
        ]
        assert [v.name for v in system.vms_service().list(search="status=up")] == ["web01"]
        with pytest.raises(sdk.Error) as err:
            system.vms_service().list(search="colour=blue")
        assert err.value.code == 400
    finally:
        conn.close()


@pytest.mark.slow
def test_invalid_or_broken_checkpoints_refuse_incremental_backups(
    sim_factory: Callable[..., Any],
) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        vm = _vm(conn, "myvm0")
        disk = _disk(conn, vm, "myvm0_Disk1")
        backups = conn.system_service().vms_service().vm_service(vm.id).backups_service()

        def backup(from_checkpoint: str | None) -> Any:
            b = backups.add(
                types.Backup(disks=[types.Disk(id=disk.id)], from_checkpoint_id=from_checkpoint)
            )
            bs = backups.backup_service(b.id)
            phase = wait_for(
                "ready or failed",
                lambda: (
                    (p := bs.get().phase) in (types.BackupPhase.READY, types.BackupPhase.FAILED)
                    and p
                ),
            )
            if phase == types.BackupPhase.READY:
                bs.finalize()
                wait_for("succeeded", lambda: bs.get().phase == types.BackupPhase.SUCCEEDED)
            return bs.get()

        first = backup(None)
        second = backup(None)
        assert first.phase == second.phase == types.BackupPhase.SUCCEEDED
        s.admin.add_fault("invalidate-checkpoint", checkpoint=first.to_checkpoint_id)
        with pytest.raises(sdk.Error) as err:
            backups.add(
                types.Backup(
                    disks=[types.Disk(id=disk.id)], from_checkpoint_id=first.to_checkpoint_id
                )
            )
        assert err.value.code == 409
        s.admin.add_fault("break-checkpoint", checkpoint=second.to_checkpoint_id)
        failed = backup(second.to_checkpoint_id)
        assert failed.phase == types.BackupPhase.FAILED
        events = conn.system_service().events_service().list(search=failed.id)
        assert any("bitmap is missing" in ev.description for ev in events)
        # A full backup still works, and the failed one left no snapshot behind.
        assert backup(None).phase == types.BackupPhase.SUCCEEDED
        snaps = conn.system_service().vms_service().vm_service(vm.id).snapshots_service().list()
        assert [x.description for x in snaps] == ["Active VM"]
    finally:
        conn.close()


@pytest.mark.slow
def test_phase_delays_are_observable(sim_factory: Callable[..., Any]) -> None:
    s = sim_factory(delay_s=0.3)
    conn = s.sdk_connection()
    try:
        disk = _disk(conn, _vm(conn, "myvm0"), "myvm0_Disk1")
        transfers = _transfers(conn)
        t = transfers.add(
            types.ImageTransfer(
                disk=types.Disk(id=disk.id), direction=types.ImageTransferDirection.DOWNLOAD
            )
        )
        assert t.phase == P.INITIALIZING and t.transfer_url is None
        ts = transfers.image_transfer_service(t.id)
        seen = []

        def walk(final: Any) -> bool:
            phase = ts.get().phase
            if not seen or seen[-1] != phase:
                seen.append(phase)
            return phase == final

        wait_for("transferring", lambda: walk(P.TRANSFERRING))
        assert ts.get().transfer_url
        ts.finalize()
        wait_for("finished", lambda: walk(P.FINISHED_SUCCESS))
        assert seen == [P.INITIALIZING, P.TRANSFERRING, P.FINALIZING_SUCCESS, P.FINISHED_SUCCESS]
        snaps = (
            conn.system_service()
            .vms_service()
            .vm_service(_vm(conn, "myvm0").id)
            .snapshots_service()
        )
        snap = snaps.add(types.Snapshot(description="slow"))
        assert snaps.snapshot_service(snap.id).get().snapshot_status == types.SnapshotStatus.LOCKED
        assert (
            conn.system_service().disks_service().disk_service(disk.id).get().status
            == types.DiskStatus.LOCKED
        )
        wait_for(
            "ok",
            lambda: (
                snaps.snapshot_service(snap.id).get().snapshot_status == types.SnapshotStatus.OK
            ),
        )
    finally:
        conn.close()


@pytest.mark.slow
def test_snapshot_restore_reverts_disks_and_invalidates_checkpoints(
    sim_factory: Callable[..., Any],
) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        vm = _vm(conn, "myvm")
        vs = conn.system_service().vms_service().vm_service(vm.id)
        disk = _disk(conn, vm, "mydisk")
        snaps = vs.snapshots_service()
        mysnap = next(x for x in snaps.list() if x.description == "mysnap")
        at_mysnap = s.admin.disk_sha256(
            disk.id,
            image_id=next(
                d
                for d in snaps.snapshot_service(mysnap.id).disks_service().list()
                if d.id == disk.id
            ).image_id,
        )
        backups = vs.backups_service()
        b = backups.add(types.Backup(disks=[types.Disk(id=disk.id)]))
        bs = backups.backup_service(b.id)
        cp = wait_for(
            "ready", lambda: (x := bs.get()).phase == types.BackupPhase.READY and x
        ).to_checkpoint_id
        bs.finalize()
        wait_for("succeeded", lambda: bs.get().phase == types.BackupPhase.SUCCEEDED)
        later = snaps.add(types.Snapshot(description="later"))
        wait_for(
            "ok",
            lambda: (
                snaps.snapshot_service(later.id).get().snapshot_status == types.SnapshotStatus.OK
            ),
        )
        s.admin.guest_write(vm="myvm", disk="mydisk", offset=0, size=1 << 20, pattern=0x42)
        assert s.admin.disk_sha256(disk.id) != at_mysnap

        snaps.snapshot_service(mysnap.id).restore()
        wait_for(
            "restored",
            lambda: (
                snaps.snapshot_service(mysnap.id).get().snapshot_status == types.SnapshotStatus.OK
            ),
        )
        assert [x.description for x in snaps.list()] == ["mysnap", "Active VM"]
        assert s.admin.disk_sha256(disk.id) == at_mysnap
        checkpoint = vs.checkpoints_service().checkpoint_service(cp).get()
        assert checkpoint.state == types.CheckpointState.INVALID
        with pytest.raises(sdk.Error) as err:
            backups.add(types.Backup(disks=[types.Disk(id=disk.id)], from_checkpoint_id=cp))
        assert err.value.code == 409
        # A running VM cannot be reverted.
        vs.start()
        wait_for("up", lambda: vs.get().status == types.VmStatus.UP)
        with pytest.raises(sdk.Error) as err:
            snaps.snapshot_service(mysnap.id).restore()
        assert err.value.code == 409
    finally:
        conn.close()
