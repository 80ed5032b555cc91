"""The simulator is as strict as an engine: SSO tokens expire (the upstream SDK gets a
401 and logs in again once), and what it stores is private (volumes, logs: 0600 in 0700).

One simulator with a 2 s token ttl for the module.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import stat
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from ovirt_imageio import client as imageio
from ovirtsdk4 import types

from tests.support.sim import SimProcess, start_sim
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

TOKEN_TTL_S = 2.0
P = types.ImageTransferPhase


@pytest.fixture(scope="module")
def short_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(tmp_path_factory.mktemp("simttl"), serve_args=("--token-ttl", str(TOKEN_TTL_S)))
    try:
        yield s
    finally:
        s.stop()


def _get_api(sim: SimProcess, token: str) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=sim.cafile)
    port = urllib.parse.urlsplit(sim.engine_url).port
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
    try:
        conn.request("GET", "/ovirt-engine/api", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_sdk_gets_401_after_the_ttl_and_logs_in_again(short_sim: SimProcess) -> None:
    assert short_sim.admin.auth_stats()["token_ttl_s"] == TOKEN_TTL_S
    conn = short_sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        names = sorted(v.name for v in vms.list())
        first = conn.authenticate()
        before = short_sim.admin.auth_stats()
        time.sleep(TOKEN_TTL_S + 1.0)
        # The next call is refused (401: token expired), the SDK fetches a new token
        # once and replays it: the caller sees the answer.
        assert sorted(v.name for v in vms.list()) == names
        after = short_sim.admin.auth_stats()
        assert after["expired"] == before["expired"] + 1
        assert after["issued"] == before["issued"] + 1
        second = conn.authenticate()
        assert second != first
    finally:
        conn.close()
    # The old token stays refused with the engine's 401: empty body, WWW-Authenticate.
    status, headers, body = _get_api(short_sim, first)
    assert (status, body) == (401, b"")
    assert headers["www-authenticate"].startswith("Bearer")
    # While in use, a token outlives the ttl: each request renews it.
    conn = short_sim.sdk_connection()
    try:
        api = conn.system_service()
        api.get()
        token = conn.authenticate()
        used_since = short_sim.admin.auth_stats()
        deadline = time.monotonic() + 3 * TOKEN_TTL_S
        while time.monotonic() < deadline:
            api.get()
            time.sleep(TOKEN_TTL_S / 4)
        assert conn.authenticate() == token
        assert short_sim.admin.auth_stats()["issued"] == used_since["issued"]
    finally:
        conn.close()


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of every regular file and directory under ``root`` (not sockets)."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                out[path.relative_to(root).as_posix()] = stat.S_IMODE(st.st_mode)
    return out


def test_volumes_and_logs_are_private(short_sim: SimProcess, tmp_path: Path) -> None:
    conn = short_sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm = vms.list(search="name=myvm", case_sensitive=True)[0]
        snaps = vms.vm_service(vm.id).snapshots_service()
        # A snapshot made now: a new volume of each disk, written by qemu-img.
        snap = snaps.add(types.Snapshot(description="private volumes"))
        wait_for(
            "snapshot ok",
            lambda: (
                snaps.snapshot_service(snap.id).get().snapshot_status == types.SnapshotStatus.OK
            ),
        )
        disk_id = conn.follow_link(vms.vm_service(vm.id).get().disk_attachments)[0].disk.id
        (disk_dir,) = short_sim.state_dir.glob(f"storage/*/{disk_id}")
        volumes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in disk_dir.iterdir()}
        assert len(volumes) >= 4  # base + overlay, each with its .meta
        assert set(volumes.values()) == {0o600}, volumes
        transfers = conn.system_service().image_transfers_service()
        t = transfers.add(
            types.ImageTransfer(
                disk=types.Disk(id=disk_id),
                direction=types.ImageTransferDirection.DOWNLOAD,
                format=types.DiskFormat.RAW,
            )
        )
        ts = transfers.image_transfer_service(t.id)
        t = wait_for("transferring", lambda: (x := ts.get()).phase == P.TRANSFERRING and x)
        ticket = urllib.parse.urlsplit(t.transfer_url).path.rsplit("/", 1)[-1]
        try:
            c = imageio.ImageioClient(t.transfer_url, cafile=short_sim.cafile)
            try:
                head = bytearray(1 << 20)
                c.read(0, memoryview(head))
            finally:
                c.close()
        finally:
            ts.finalize()
        wait_for("finished", lambda: ts.get().phase == P.FINISHED_SUCCESS)
        snaps.snapshot_service(snap.id).remove()
        wait_for("snapshot removed", lambda: snap.id not in {x.id for x in snaps.list()})
    finally:
        conn.close()
    assert hashlib.sha256(head).hexdigest()  # read through the daemon whose log is checked
    daemon_log = short_sim.state_dir / "run" / "imageio-daemon.log"
    assert ticket in daemon_log.read_text()  # the log that holds the ticket ids
    modes = _modes(short_sim.state_dir)
    assert len([k for k in modes if k.startswith("storage/")]) >= 10
    assert modes["run/imageio-daemon.log"] == 0o600 and modes["run/sim.log"] == 0o600
    loose = {k: oct(v) for k, v in modes.items() if v not in (0o600, 0o700)}
    assert loose == {}
    dirs = [k for k in modes if (short_sim.state_dir / k).is_dir()]
    assert all(modes[k] == 0o700 for k in dirs) and "storage" in dirs
