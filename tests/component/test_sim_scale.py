"""Issue 12, simulator realism for scale: the upstream SDK against `rhvfs sim serve`.

`follow=` inlines what separate calls return, `search=` selects by name, tag,
cluster and data center, the engine-call counter counts by path template,
`--extra-vms N` adds N VMs spread over clusters and tags with readable empty
disks, `--latency-ms` / `--imageio-latency-ms` delay every request by at
least the configured time, and answers come without a per-call Nagle stall.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import socket
import socketserver
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ovirtsdk4 as sdk
import pytest
from ovirtsdk4 import types

from rhvfs.sim import cli as sim_cli
from rhvfs.sim import httpd
from rhvfs.sim.scale import DISK1_SIZE, DISK2_SIZE, extra_vm_name, extra_vm_tags
from tests.support.sim import SimProcess, counting_engine_calls, engine_calls

FOLLOW = "disk_attachments.disk,nics,tags"


def _separately(conn: Any, vm_id: str) -> dict[str, Any]:
    """A VM's attachments (with their disks), NICs and tags, one call per item."""
    system = conn.system_service()
    service = system.vms_service().vm_service(vm_id)
    disks = system.disks_service()
    return {
        "attachments": [
            (a.id, a.bootable, a.interface, disks.disk_service(a.disk.id).get().alias)
            for a in service.disk_attachments_service().list()
        ],
        "disks": [
            (d.id, d.alias, d.provisioned_size, d.format, d.status)
            for d in (
                disks.disk_service(a.disk.id).get()
                for a in service.disk_attachments_service().list()
            )
        ],
        "nics": [(n.id, n.name, n.mac.address) for n in service.nics_service().list()],
        "tags": sorted(t.name for t in service.tags_service().list()),
    }


def _inlined(vm: Any) -> dict[str, Any]:
    return {
        "attachments": [(a.id, a.bootable, a.interface, a.disk.alias) for a in vm.disk_attachments],
        "disks": [
            (a.disk.id, a.disk.alias, a.disk.provisioned_size, a.disk.format, a.disk.status)
            for a in vm.disk_attachments
        ],
        "nics": [(n.id, n.name, n.mac.address) for n in vm.nics],
        "tags": sorted(t.name for t in vm.tags),
    }


def test_follow_inlines_what_separate_calls_return_in_one_call(sim: SimProcess) -> None:
    conn = sim.sdk_connection()
    try:
        conn.authenticate()
        vms_service = conn.system_service().vms_service()
        with counting_engine_calls(sim) as calls:
            vms = vms_service.list(follow=FOLLOW)
        assert calls.counts == {("GET", "/vms"): 1}
        assert len(vms) == 8
        for vm in vms:
            assert _inlined(vm) == _separately(conn, vm.id), vm.name
        web01 = next(v for v in vms if v.name == "web01")
        assert [a.disk.alias for a in web01.disk_attachments] == [
            "web01_os",
            "web01_data",
            "web01_logs",
        ]
        assert [t.name for t in web01.tags] == ["production"]

        # One VM, and a nested follow on a sub-collection.
        myvm = vms_service.list(search="name=myvm")[0]
        got = vms_service.vm_service(myvm.id).get(
            follow="disk_attachments.disk.storage_domains,cluster.data_center,snapshots"
        )
        assert _inlined_disks(got) == ["myvm_Disk1", "mydisk"]
        assert [[sd.name for sd in a.disk.storage_domains] for a in got.disk_attachments] == [
            ["mydata"],
            ["mydata"],
        ]
        assert (got.cluster.name, got.cluster.data_center.name) == ("Default", "Default")
        assert [s.description for s in got.snapshots] == ["mysnap", "Active VM"]
        atts = vms_service.vm_service(myvm.id).disk_attachments_service().list(follow="disk")
        assert [a.disk.alias for a in atts] == ["myvm_Disk1", "mydisk"]
        nics = vms_service.vm_service(myvm.id).nics_service().list(follow="vnic_profile")
        assert [n.vnic_profile.name for n in nics] == ["ovirtmgmt"]

        # Without follow the links stay links.
        plain = vms_service.list(search="name=web01")[0]
        assert plain.disk_attachments == [] and plain.nics == []

        # A link the entity does not have, or a reference it lacks, is refused.
        for bad in ("no_such_link", "disk_attachments.nothing", "host", "status"):
            with pytest.raises(sdk.Error) as err:
                vms_service.list(search="name=myvm", follow=bad)
            assert err.value.code == 400, bad
    finally:
        conn.close()


def _inlined_disks(vm: Any) -> list[str]:
    return [a.disk.alias for a in vm.disk_attachments]


def test_vm_searches_by_name_tag_cluster_and_datacenter(sim: SimProcess) -> None:
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()

        def names(query: str) -> list[str]:
            return sorted(v.name for v in vms.list(search=query))

        assert names("tag=production") == ["db01", "web01"]
        assert names("tag=mytag or tag=production") == ["db01", "myvm", "myvm0", "web01"]
        assert names("cluster=mycluster") == ["web01"]
        assert names("datacenter=remote") == ["remote01"]
        assert names("datacenter=Default and tag!=mytag and status=down") == [
            "myagent",
            "tmplvm",
        ]
        assert names("name=myvm* and cluster=Default") == ["myvm", "myvm0"]
        assert names("name=web01 or name=db01") == ["db01", "web01"]
    finally:
        conn.close()


def test_engine_calls_are_counted_by_path_template(sim: SimProcess) -> None:
    conn = sim.sdk_connection()
    try:
        conn.authenticate()
        vms = conn.system_service().vms_service()
        myvm = vms.list(search="name=myvm")[0]
        web01 = vms.list(search="name=web01")[0]
        with counting_engine_calls(sim) as calls:
            vms.vm_service(myvm.id).get()
            vms.vm_service(web01.id).get()
            vms.vm_service(web01.id).nics_service().list()
            with pytest.raises(sdk.Error):
                conn.system_service().vms_service().vm_service("no-such-vm").get()
            sim.admin.transfers()  # admin calls are not engine calls
        assert calls.counts == {("GET", "/vms/{vm}"): 3, ("GET", "/vms/{vm}/nics"): 1}
        assert calls.total == 4

        before = engine_calls(sim)
        assert sim.admin.reset_engine_calls() == before
        vms.vm_service(myvm.id).get()
        assert engine_calls(sim) == {("GET", "/vms/{vm}"): 1}
    finally:
        conn.close()


def test_sso_and_unrouted_calls_are_counted_too(sim: SimProcess) -> None:
    with counting_engine_calls(sim) as calls:
        conn = sim.sdk_connection()
        try:
            conn.authenticate()
            context = conn.send(sdk.http.Request(method="GET", path="/nothing/here"))
            assert conn.wait(context).code == 404
        finally:
            conn.close()
    assert calls.of("POST", "/ovirt-engine/sso/oauth/token") == 1
    assert calls.of("GET", "(no route)") == 1


def test_responses_leave_on_nodelay_sockets_in_one_write() -> None:
    """Nagle + delayed ACK used to add ~40 ms to every call (headers and body in two
    writes, the second held until the client's ACK). Checked by structure, not by a
    timing: the server's side of a connection has TCP_NODELAY, and a whole response
    (status line, headers, body) reaches the socket in one send."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    sends: list[int] = []

    class Recording:
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock

        def sendall(self, data: bytes) -> None:
            sends.append(len(data))
            self._sock.sendall(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._sock, name)

    try:
        handler = httpd._RequestHandler.__new__(httpd._RequestHandler)
        handler.request = server_side
        handler.setup()
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        handler.wfile.close()
        # the same writer StreamRequestHandler.setup makes, over a recording socket
        writer = socketserver._SocketWriter(Recording(server_side))  # type: ignore[arg-type]
        handler.wfile = io.BufferedWriter(writer, handler.wbufsize) if handler.wbufsize else writer
        handler.request_version = "HTTP/1.1"
        handler.requestline = "GET /ovirt-engine/api HTTP/1.1"
        handler.command = "GET"
        handler.client_address = client.getsockname()
        handler.send_response(200)
        handler.send_header("Content-Length", "4096")
        handler.end_headers()
        handler.wfile.write(b"x" * 4096)
        handler.wfile.flush()
        assert len(sends) == 1 and sends[0] > 4096, sends
    finally:
        for s in (client, server_side, listener):
            s.close()


N_EXTRA = 300


def test_extra_vms_are_spread_over_clusters_and_tags_with_readable_disks(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    state_dir = tmp_path / "extra"
    sim = sim_factory(state_dir=state_dir, serve_args=("--extra-vms", str(N_EXTRA)))
    conn = sim.sdk_connection()
    try:
        conn.authenticate()
        vms_service = conn.system_service().vms_service()
        with counting_engine_calls(sim) as calls:
            vms = vms_service.list(follow=FOLLOW)
        assert calls.counts == {("GET", "/vms"): 1}
        extra = {v.name: v for v in vms if v.name.startswith("vm-")}
        assert sorted(extra) == [extra_vm_name(i, N_EXTRA) for i in range(N_EXTRA)]
        assert len(vms) == N_EXTRA + 8

        clusters = {c.id: c.name for c in conn.system_service().clusters_service().list()}
        assert Counter(clusters[v.cluster.id] for v in extra.values()) == {
            "Default": 100,
            "mycluster": 100,
            "remote": 100,
        }
        for i in range(N_EXTRA):
            vm = extra[extra_vm_name(i, N_EXTRA)]
            assert sorted(t.name for t in vm.tags) == sorted(extra_vm_tags(i))
            assert len(vm.nics) == (2 if i % 3 == 0 else 1)
            sizes = [a.disk.provisioned_size for a in vm.disk_attachments]
            assert sizes == ([DISK1_SIZE, DISK2_SIZE] if i % 2 else [DISK1_SIZE])
            assert vm.status.value == ("up" if i % 10 == 0 else "down")
        macs = [n.mac.address for v in vms for n in v.nics]
        assert len(macs) == len(set(macs))
        selected = vms_service.list(search="tag=group1 and cluster=remote or tag=nothing")
        assert sorted(v.name for v in selected) == [
            extra_vm_name(i, N_EXTRA)
            for i in range(N_EXTRA)
            if "group1" in extra_vm_tags(i) and i % 3 == 2
        ]
        assert selected

        # The empty volumes are valid images: read back as zeroes, snapshots work.
        vm1 = extra[extra_vm_name(1, N_EXTRA)]
        for att, size in zip(vm1.disk_attachments, (DISK1_SIZE, DISK2_SIZE), strict=True):
            assert sim.admin.disk_sha256(att.disk.id) == hashlib.sha256(bytes(size)).hexdigest()
        snaps = vms_service.vm_service(vm1.id).snapshots_service()
        snap = snaps.add(types.Snapshot(description="scale-check"))
        deadline = time.monotonic() + 60
        while snaps.snapshot_service(snap.id).get().snapshot_status.value != "ok":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        conn.close()
    sim.stop()

    # A restart serves the same inventory, without adding the VMs twice.
    again = sim_factory(state_dir=state_dir, serve_args=("--extra-vms", str(N_EXTRA)))
    conn = again.sdk_connection()
    try:
        assert len(conn.system_service().vms_service().list()) == N_EXTRA + 8
    finally:
        conn.close()


def test_extra_vms_need_the_sample(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        sim_cli.main(["serve", "--state-dir", str(tmp_path), "--extra-vms", "3"])
    assert exit_.value.code == 2
    assert not any(tmp_path.iterdir())


LATENCY_S = 0.08


def test_latency_options_delay_every_engine_and_imageio_request(
    sim_factory: Callable[..., SimProcess],
) -> None:
    ms = str(int(LATENCY_S * 1000))
    sim = sim_factory(serve_args=("--latency-ms", ms, "--imageio-latency-ms", ms))
    conn = sim.sdk_connection()
    try:
        conn.authenticate()
        vms = conn.system_service().vms_service()
        service = vms.vm_service(vms.list(search="name=myvm")[0].id)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            service.nics_service().list()
            times.append(time.perf_counter() - start)
        assert min(times) >= LATENCY_S, times
    finally:
        conn.close()

    # Data plane: every request on one keep-alive connection waits too.
    ctx = ssl.create_default_context(cafile=sim.cafile)
    data = http.client.HTTPSConnection("localhost", sim.admin.imageio_port, context=ctx)
    try:
        data.connect()
        for _ in range(3):
            start = time.perf_counter()
            data.request("GET", "/info/")
            resp = data.getresponse()
            assert resp.status == 200 and b"version" in resp.read()
            assert time.perf_counter() - start >= LATENCY_S
    finally:
        data.close()
    # Admin calls are not delayed (they are not the engine's), but they work.
    assert engine_calls(sim)[("GET", "/vms/{vm}/nics")] == 5
