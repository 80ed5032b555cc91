"""DataPlane: the real imageio daemon over qemu-nbd exports, checked with upstream clients."""

from __future__ import annotations

import atexit
import gc
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ovirt_imageio import client

from rhvfs.sim.dataplane import DataPlane, DataPlaneError
from rhvfs.sim.guestdata import make_guest_image
from rhvfs.sim.pki import Pki, ensure_pki
from rhvfs.sim.storage import ImageLockedError, Storage
from tests.support.data import sha

MiB = 1024 * 1024
KiB = 1024
SD = "sd-1"
SIZE = 32 * MiB


class Env:
    def __init__(self, root: Path, *, proxy: bool) -> None:
        self.root = root
        self.pki: Pki = ensure_pki(root / "pki", [])
        self.storage = Storage(root / "storage")
        self.guest = root / "guest.img"
        make_guest_image(self.guest, size=SIZE, hostname="vm-dp", seed=11, files_mib=1)
        self.guest_bytes = self.guest.read_bytes()
        self.plane = DataPlane(root / "run", pki=self.pki, proxy=proxy)
        self.plane.start()

    def https(self) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_file))
        return http.client.HTTPSConnection("localhost", self.plane.port, context=ctx, timeout=30)

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.https()
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("dp"), proxy=False)
    yield e
    e.plane.stop()


# The upstream client leaks the socket of its local qemu-nbd; collect it here.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_download_with_upstream_client(env: Env, tmp_path: Path) -> None:
    s = env.storage
    s.import_raw(SD, "dl", "v1", env.guest, fmt="cow")
    export = env.plane.export_nbd(s.volume_path(SD, "dl", "v1"), fmt="cow", read_only=True)
    env.plane.add_ticket(
        ticket_id="dl-1", url=export.nbd_url, size=SIZE, ops=["read"], transfer_id="tx-dl"
    )
    out = tmp_path / "out.raw"
    client.download(env.plane.image_url("dl-1"), str(out), str(env.pki.ca_file), fmt="raw")
    gc.collect()
    assert sha(out.read_bytes()) == s.content_sha256(SD, "dl", "v1") == sha(env.guest_bytes)

    status = env.plane.ticket_status("dl-1")
    assert status is not None
    assert (status["uuid"], status["transfer_id"], status["ops"]) == ("dl-1", "tx-dl", ["read"])
    assert status["transferred"] > 0

    # Ranged GET: 206 with the exact Content-Range and bytes.
    code, headers, body = env.get("/images/dl-1", {"Range": "bytes=1048000-1052095"})
    assert code == 206
    assert headers["content-range"] == f"bytes 1048000-1052095/{SIZE}"
    assert headers["content-length"] == "4096"
    assert body == env.guest_bytes[1048000:1052096]

    # Beyond the ticket: 416.
    code, headers, _ = env.get("/images/dl-1", {"Range": f"bytes={SIZE}-{SIZE + 10}"})
    assert code == 416

    expires = env.plane.ticket_status("dl-1")["expires"]  # type: ignore[index]
    env.plane.extend_ticket("dl-1", 600)
    assert env.plane.ticket_status("dl-1")["expires"] >= expires + 290  # type: ignore[index]
    env.plane.remove_ticket("dl-1")
    env.plane.remove_ticket("dl-1")
    assert env.plane.ticket_status("dl-1") is None
    code, _, _ = env.get("/images/dl-1", {"Range": "bytes=0-1"})
    assert code == 403
    env.plane.unexport(export.id)
    env.plane.unexport(export.id)
    assert not export.socket_path.exists()


def test_dirty_extents_cover_guest_writes(env: Env) -> None:
    s, disk = env.storage, "inc"
    s.import_raw(SD, disk, "base", env.guest, fmt="cow")
    s.add_bitmap(SD, disk, "base", "cp1")
    s.guest_write(SD, disk, "base", offset=8 * MiB, pattern=0x5A, size=128 * KiB)
    s.snapshot(SD, disk, "base", "mid")
    s.guest_write(SD, disk, "mid", offset=20 * MiB, pattern=0, size=64 * KiB)
    s.guest_write(SD, disk, "mid", offset=24 * MiB + 1000, data=b"x" * 10)
    # The backup snapshot: "mid" becomes read-only, guest writes go on in "top".
    s.snapshot(SD, disk, "mid", "top")
    overlay = s.prepare_dirty_overlay(SD, disk, "mid", "cp1", env.root / "work")
    export = env.plane.export_nbd(
        overlay, fmt="cow", read_only=True, bitmap="cp1", remove_image_on_open=True
    )
    assert not overlay.exists()
    env.plane.add_ticket(ticket_id="inc-1", url=export.nbd_url, size=SIZE, ops=["read"], dirty=True)
    s.guest_write(SD, disk, "top", offset=0, pattern=0x77, size=MiB)  # not part of the backup

    code, _, body = env.get("/images/inc-1/extents?context=dirty")
    assert code == 200
    extents = json.loads(body)
    assert extents[0]["start"] == 0
    assert sum(e["length"] for e in extents) == SIZE
    dirty = [(e["start"], e["length"], e["zero"]) for e in extents if e["dirty"]]
    assert dirty == [
        (8 * MiB, 128 * KiB, False),
        (20 * MiB, 64 * KiB, True),
        (24 * MiB, 4 * KiB, False),
        (24 * MiB + 4 * KiB, 60 * KiB, True),
    ]
    code, _, body = env.get("/images/inc-1", {"Range": f"bytes={8 * MiB}-{8 * MiB + 3}"})
    assert (code, body) == (206, b"\x5a" * 4)
    env.plane.remove_ticket("inc-1")
    env.plane.unexport(export.id)

    # No dirty context on a plain ticket.
    export = env.plane.export_nbd(s.volume_path(SD, disk, "mid"), fmt="cow", read_only=True)
    env.plane.add_ticket(ticket_id="inc-2", url=export.nbd_url, size=SIZE, ops=["read"])
    code, _, _ = env.get("/images/inc-2/extents?context=dirty")
    assert code == 404
    env.plane.remove_ticket("inc-2")
    env.plane.unexport(export.id)


def test_bitmaps_survive_backward_merge(env: Env) -> None:
    s, disk = env.storage, "merge-inc"
    s.import_raw(SD, disk, "base", env.guest, fmt="cow")
    s.add_bitmap(SD, disk, "base", "cp1")
    s.guest_write(SD, disk, "base", offset=4 * MiB, pattern=0x01, size=64 * KiB)
    s.snapshot(SD, disk, "base", "top")
    s.add_bitmap(SD, disk, "top", "cp2")
    s.guest_write(SD, disk, "top", offset=12 * MiB, pattern=0x02, size=64 * KiB)
    before = s.content_sha256(SD, disk, "top")
    s.merge(SD, disk, "base", "top")
    assert s.content_sha256(SD, disk, "base") == before

    def dirty_ranges(checkpoint: str) -> list[tuple[int, int]]:
        overlay = s.prepare_dirty_overlay(SD, disk, "base", checkpoint, env.root / "work")
        export = env.plane.export_nbd(
            overlay, fmt="cow", read_only=True, bitmap=checkpoint, remove_image_on_open=True
        )
        env.plane.add_ticket(
            ticket_id="mi-1", url=export.nbd_url, size=SIZE, ops=["read"], dirty=True
        )
        try:
            code, _, body = env.get("/images/mi-1/extents?context=dirty")
            assert code == 200
            return [(e["start"], e["length"]) for e in json.loads(body) if e["dirty"]]
        finally:
            env.plane.remove_ticket("mi-1")
            env.plane.unexport(export.id)

    # cp1 saw both writes; cp2 (created on the removed top volume) only the second.
    assert dirty_ranges("cp1") == [(4 * MiB, 64 * KiB), (12 * MiB, 64 * KiB)]
    assert dirty_ranges("cp2") == [(12 * MiB, 64 * KiB)]


def test_shallow_export_reports_holes(env: Env) -> None:
    s, disk = env.storage, "shallow"
    s.import_raw(SD, disk, "base", env.guest, fmt="cow")
    s.snapshot(SD, disk, "base", "top")
    s.guest_write(SD, disk, "top", offset=4 * MiB, pattern=0x42, size=64 * KiB)
    export = env.plane.export_nbd(
        s.volume_path(SD, disk, "top"), fmt="cow", read_only=True, shallow=True
    )
    env.plane.add_ticket(ticket_id="sh-1", url=export.nbd_url, size=SIZE, ops=["read"])
    code, _, body = env.get("/images/sh-1/extents")
    assert code == 200
    data = [(e["start"], e["length"]) for e in json.loads(body) if not e["hole"]]
    assert data == [(4 * MiB, 64 * KiB)]
    env.plane.remove_ticket("sh-1")
    env.plane.unexport(export.id)


def test_upload_ranges_then_guest_lock(env: Env) -> None:
    s, disk = env.storage, "up"
    s.create_volume(SD, disk, "v", fmt="cow", size=4 * MiB)
    export = env.plane.export_nbd(
        s.volume_path(SD, disk, "v"), fmt="cow", read_only=False, discard=True
    )
    env.plane.add_ticket(
        ticket_id="up-1", url=export.nbd_url, size=4 * MiB, ops=["write"], sparse=True
    )
    payload = bytes(range(256)) * 256  # 64 KiB
    conn = env.https()
    conn.request(
        "PUT",
        "/images/up-1?flush=n",
        body=payload,
        headers={"Content-Range": f"bytes {MiB}-{MiB + len(payload) - 1}/*"},
    )
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"")
    conn.request(
        "PATCH",
        "/images/up-1",
        body=json.dumps({"op": "flush"}),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"")
    conn.close()

    # The guest cannot write while the upload export holds the image.
    with pytest.raises(ImageLockedError):
        s.guest_write(SD, disk, "v", offset=0, pattern=1, size=512)

    env.plane.remove_ticket("up-1")
    env.plane.unexport(export.id)
    expected = bytearray(4 * MiB)
    expected[MiB : MiB + len(payload)] = payload
    assert s.content_sha256(SD, disk, "v") == sha(expected)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_upload_with_upstream_client(env: Env) -> None:
    s, disk = env.storage, "up-client"
    s.create_volume(SD, disk, "v", fmt="cow", size=SIZE)
    export = env.plane.export_nbd(
        s.volume_path(SD, disk, "v"), fmt="cow", read_only=False, discard=True
    )
    env.plane.add_ticket(ticket_id="upc-1", url=export.nbd_url, size=SIZE, ops=["write"])
    code, headers, body = _options(env, "/images/upc-1")
    assert code == 200
    assert json.loads(body) == {
        "features": ["checksum", "extents", "flush", "zero"],
        "max_readers": 8,
        "max_writers": 8,
    }
    client.upload(str(env.guest), env.plane.image_url("upc-1"), str(env.pki.ca_file))
    gc.collect()
    env.plane.remove_ticket("upc-1")
    env.plane.unexport(export.id)
    assert s.content_sha256(SD, disk, "v") == sha(env.guest_bytes)
    # Zero extents were sent as zeroes, not data: the volume stays small.
    assert s.volume_info(SD, disk, "v").actual_size < 8 * MiB


def test_cow_download_over_file_backend(env: Env) -> None:
    s, disk = env.storage, "cow-dl"
    s.import_raw(SD, disk, "v", env.guest, fmt="cow")
    path = s.volume_path(SD, disk, "v")
    size = s.volume_info(SD, disk, "v").file_size
    env.plane.add_ticket(ticket_id="cow-1", url=f"file://{path}", size=size, ops=["read"])
    code, _, body = _options(env, "/images/cow-1")
    assert code == 200
    assert json.loads(body)["features"] == ["checksum", "extents"]
    code, headers, body = env.get("/images/cow-1", {"Range": f"bytes=0-{size - 1}"})
    assert code == 206
    assert headers["content-range"] == f"bytes 0-{size - 1}/{size}"
    assert sha(body) == sha(path.read_bytes())
    env.plane.remove_ticket("cow-1")


def _options(env: Env, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = env.https()
    try:
        conn.request("OPTIONS", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_bitmap_export_must_be_read_only(env: Env) -> None:
    with pytest.raises(DataPlaneError):
        env.plane.export_nbd(env.guest, fmt="raw", read_only=False, bitmap="x")


def _live_pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_fault_proxy_drop_and_clean_stop(tmp_path: Path) -> None:
    env = Env(tmp_path, proxy=True)
    try:
        plane = env.plane
        assert plane.fault_proxy is not None
        assert plane.port != plane.daemon_port
        export = plane.export_nbd(env.guest, fmt="raw", read_only=True)
        plane.add_ticket(ticket_id="fp-1", url=export.nbd_url, size=SIZE, ops=["read"])
        plane.export_nbd(env.guest, fmt="raw", read_only=True)  # left for stop() to kill

        plane.fault_proxy.drop_after(10_000, times=1)
        conn = env.https()
        conn.request("GET", "/images/fp-1", headers={"Range": f"bytes=0-{MiB - 1}"})
        resp = conn.getresponse()
        assert resp.status == 206
        with pytest.raises((http.client.IncompleteRead, ConnectionError, ssl.SSLError)):
            resp.read()
        conn.close()
        assert plane.fault_proxy.stats().dropped == 1

        # The next connection is clean and returns the right bytes.
        code, _, body = env.get("/images/fp-1", {"Range": f"bytes=0-{MiB - 1}"})
        assert (code, body) == (206, env.guest_bytes[:MiB])

        plane.fault_proxy.delay(0.4, times=1)
        start = time.monotonic()
        code, _, body = env.get("/images/fp-1", {"Range": "bytes=0-4095"})
        assert (code, body) == (206, env.guest_bytes[:4096])
        assert time.monotonic() - start >= 0.4
        assert plane.fault_proxy.pending() == 0

        pids = plane.running_pids()
        assert len(pids) == 3  # the daemon and two qemu-nbd
        assert set(pids) <= _live_pids()
    finally:
        env.plane.stop()
    assert not any(_is_running(p) for p in pids)
    assert env.plane.running_pids() == []
    # Nothing anywhere still runs with our run dir on its command line.
    run_dir = str(tmp_path / "run").encode()
    for pid in _live_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        assert run_dir not in cmdline, cmdline
    env.plane.stop()  # idempotent


@pytest.mark.allow_log("rhvfs.sim.dataplane", "WARNING", match="killing stale child")
def test_start_reaps_children_of_a_crashed_run(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", [])
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(MiB))
    crashed = DataPlane(tmp_path / "run", pki=pki)
    crashed.start()
    crashed.export_nbd(image, fmt="raw", read_only=True)
    orphans = crashed.running_pids()
    assert len(orphans) == 2
    # Simulate a crash: the processes stay, nothing calls stop().
    procs = [e.proc for e in crashed._exports.values()]
    assert crashed._daemon is not None
    procs.append(crashed._daemon)
    crashed._daemon = None
    crashed._exports.clear()
    atexit.unregister(crashed.stop)

    restarted = DataPlane(tmp_path / "run", pki=pki)
    try:
        restarted.start()
        deadline = time.monotonic() + 10
        while any(_is_running(p) for p in orphans) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_is_running(p) for p in orphans)
        assert [p.wait(timeout=5) for p in procs] == [-9, -9]
        assert restarted.ticket_status("nope") is None
    finally:
        restarted.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


_CRASHING_OWNER = """
import sys
from pathlib import Path
from rhvfs.sim.dataplane import DataPlane

root = Path(sys.argv[1])
plane = DataPlane(root / "run")
plane.start()
plane.export_nbd(root / "disk.raw", fmt="raw", read_only=True)
print(" ".join(str(p) for p in plane.running_pids()), flush=True)
sys.stdin.read()
"""


def test_children_die_with_a_killed_owner(tmp_path: Path) -> None:
    (tmp_path / "disk.raw").write_bytes(bytes(MiB))
    owner = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_OWNER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2
        assert all(_is_running(p) for p in pids)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 10
        while any(_is_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_is_running(p) for p in pids)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        assert owner.stdin is not None and owner.stdout is not None
        owner.stdin.close()
        owner.stdout.close()
