"""Engine load control through a real mount (issue 12): a tool reading 20 VMs' sets at once
under ``--max-sessions 4``.

A private simulator with extra VMs (each disk given distinct guest data first), a mount
that shows only those 20 (``--vms``), and 20 reader threads, one per VM, each reading
its ``@rhv/`` configuration and then every image; each keeps its first image open until
sessions have been queued for longer than ``system_timeout`` (so the wait is that long
on any machine). Meanwhile a watcher asks the engine
(one ``GET /vms?follow=snapshots`` and the backups of the VMs that are up) how many of the
VMs have a snapshot or a backup, and reads ``status.json`` for queued sessions.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rhvfs.sim.scale import extra_vm_name
from tests.support.mounts import SimMount
from tests.support.sim import SimProcess, conf_with

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
N_VMS = 20
LIMIT = 4
CHUNK = 1 * MiB
#: Bounds each engine request, status poll and retry of the mount: long enough for a
#: loaded machine's simulator to answer (5 s was not: a snapshot broke with EIO).
SYSTEM_TIMEOUT_S = 30
GRACE_S = 3600  # longer than the test runs (see the test)


def read_set(set_dir: Path, first_image_open: Callable[[], None]) -> dict[str, str]:
    """Read a set as a backup tool does (configuration first); sha256 per image file.
    ``first_image_open()`` is called once the first image is open (its session holds a place)."""
    names = os.listdir(set_dir)
    config = [n for n in ("vm.ovf", "vm.xml", "manifest.json") if n in names]
    images = sorted(n for n in names if n.endswith(".raw"))
    assert len(config) == 3 and images, names
    out: dict[str, str] = {}
    for name in config + images:
        h = hashlib.sha256()
        with open(set_dir / name, "rb") as f:
            if images and name == images[0]:
                first_image_open()
            while chunk := f.read(CHUNK):
                h.update(chunk)
                if name == "manifest.json":
                    out["manifest"] = out.get("manifest", "") + chunk.decode()
        out[name] = h.hexdigest()
    return out


class EngineWatch:
    """How many of ``vm_ids`` have a snapshot or an engine backup, polled until stopped.

    ``release`` is set once sessions have been seen queued for longer than ``hold_s``
    (or when the watch ends): the readers holding places wait for it.
    """

    def __init__(self, sim: SimProcess, vm_ids: set[str], mount: SimMount, hold_s: float) -> None:
        self.sim, self.vm_ids, self.mount, self.hold_s = sim, vm_ids, mount, hold_s
        self.release = threading.Event()
        self.first_queued: float | None = None  # time.monotonic() of the first queued session
        self.peak = 0
        self.polls = 0
        self.busy_polls = 0  # polls that saw at least one snapshot or backup
        self.queued: list[dict[str, Any]] = []
        self.queued_sessions: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = self.sim.sdk_connection()
        try:
            vms_service = conn.system_service().vms_service()
            while not self.stop.is_set():
                with_artifact: set[str] = set()
                for vm in vms_service.list(follow="snapshots"):
                    if vm.id not in self.vm_ids:
                        continue
                    if any(s.snapshot_type.value != "active" for s in vm.snapshots or ()):
                        with_artifact.add(vm.id)
                    if vm.status.value == "up":
                        backups = vms_service.vm_service(vm.id).backups_service().list()
                        if any(b.phase.value not in ("succeeded", "failed") for b in backups):
                            with_artifact.add(vm.id)
                self.peak = max(self.peak, len(with_artifact))
                self.polls += 1
                self.busy_polls += bool(with_artifact)
                status = self.mount.status()["sessions"]
                self.queued.extend(status["queued"])
                self.queued_sessions.extend(s for s in status["sessions"] if s["state"] == "queued")
                if self.first_queued is None and any(
                    q["waits_for"] == "session" for q in status["queued"]
                ):
                    self.first_queued = time.monotonic()
                if self.first_queued is not None:
                    if time.monotonic() - self.first_queued > self.hold_s:
                        self.release.set()
                time.sleep(0.05)
        except BaseException as e:
            self.error = e
        finally:
            self.release.set()
            conn.close()


def prepare_vms(sim: SimProcess) -> dict[str, dict[str, str]]:
    """Distinct guest data in every disk of the 20 VMs; vm name -> disk id -> sha256."""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service().list(follow="disk_attachments.disk")
    finally:
        conn.close()
    wanted = {extra_vm_name(i, N_VMS + 4) for i in range(N_VMS)}
    out: dict[str, dict[str, str]] = {}
    for vm in vms:
        if vm.name not in wanted:
            continue
        out[vm.name] = {}
        for n, att in enumerate(vm.disk_attachments):
            seed = f"{vm.name}-{n}".encode()
            data = hashlib.sha256(seed).digest() * (256 * 1024 // 32)  # 256 KiB
            sim.admin.guest_write(disk=att.disk.id, offset=n * MiB + 4096, data=data)
            out[vm.name][att.disk.id] = sim.admin.disk_sha256(att.disk.id)
    assert sorted(out) == sorted(wanted)
    return out


def test_twenty_vms_read_at_once_never_exceed_max_sessions(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory(serve_args=("--extra-vms", str(N_VMS + 4)))
    want = prepare_vms(sim)
    (tmp_path / "state").mkdir()
    # Reads wait in line longer than system_timeout: waiting must not become EBUSY.
    conf = conf_with(sim, tmp_path, system_timeout=SYSTEM_TIMEOUT_S)
    # Every reader reads its whole set, so each read completes and frees its place at once:
    # no place is ever given away here. A session idle for grace_period while others wait
    # gives its place away and its read ends (README "Engine load"), so a short grace period
    # would turn a reader descheduled between two images (a loaded machine) into ESTALE.
    # GRACE_S outlasts the test: what it checks cannot depend on how fast the machine is.
    mount = SimMount(
        sim,
        tmp_path / "mnt",
        tmp_path / "state",
        "--max-sessions", str(LIMIT), "--grace-period", str(GRACE_S),
        "--vms", "vm-00(0[0-9]|1[0-9])",
        config_file=conf,
    )  # fmt: skip
    try:
        vms = tmp_path / "mnt" / "vms"
        assert sorted(os.listdir(vms)) == sorted(want)  # the selection: exactly those 20
        ids = {json.loads((vms / n / "vm.json").read_text())["id"] for n in want}
        # Readers keep their first image open until sessions have been queued for longer
        # than system_timeout: the places stay held (open files: nothing is given way), so
        # the wait outlasts system_timeout however fast or slow the machine is.
        watch = EngineWatch(sim, ids, mount, hold_s=SYSTEM_TIMEOUT_S + 1)

        def hold() -> None:
            assert watch.release.wait(timeout=600), "the watch never released the readers"

        watch.thread.start()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=N_VMS) as pool:
            results = dict(
                zip(want, pool.map(lambda n: read_set(vms / n / "@rhv", hold), want), strict=True)
            )
        elapsed = time.monotonic() - started
        watch.stop.set()
        watch.thread.join(timeout=60)
        assert watch.error is None, watch.error

        for name, files in results.items():
            manifest = json.loads(files["manifest"])
            got = {d["id"]: files[d["file"]] for d in manifest["disks"]}
            assert got == want[name], name
        status = mount.status()["sessions"]
        limits = status["limits"]["sessions"]
        print(
            f"{N_VMS} VMs in {elapsed:.1f}s; engine peak {watch.peak} VMs with a snapshot/backup "
            f"in {watch.polls} polls ({watch.busy_polls} busy); limiter {limits}"
        )
        assert watch.peak <= LIMIT
        assert watch.busy_polls > 0
        assert limits["peak"] <= LIMIT and limits["granted"] >= N_VMS
        assert limits["waited"] > 0  # 20 readers, 4 places: some waited
        assert limits["longest_wait_s"] > SYSTEM_TIMEOUT_S  # and longer than system_timeout
        assert watch.queued, "no queued session ever showed in status.json"
        assert {q["waits_for"] for q in watch.queued} <= {"session", "transfer"}
        assert all(q["position"] >= 1 for q in watch.queued)
        assert {q["owner"]["name"] for q in watch.queued if "owner" in q} <= set(want)
        assert watch.queued_sessions and all(
            s["queue_position"] >= 1 for s in watch.queued_sessions
        )
        assert status["errors"] == []
    finally:
        mount.umount()
