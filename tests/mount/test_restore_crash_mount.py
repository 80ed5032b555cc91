"""Crash-safe restores through a real mount of the simulator (issue 10, point 5).

A restore of myvm0's set (one 256 MiB disk, one NIC) is held at a phase, the
mount is killed with SIGKILL, and then ``rhvfs gc`` -- or a fresh mount of the
same state directory -- must leave no disk, VM or live transfer of that
restore, and must not touch anything else: the engine's VMs and disks are
exactly those from before the killed restore started, including the VM of a
restore that finished earlier. Engine delays (``engine-delay`` faults) hold
the restore where the test wants it; a delayed create call still completes
in the simulator after the kill, as an engine's would, so the object it makes
never had its id recorded: gc finds it by the restore's marker.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rhvfs.backupset import parse_ovf
from rhvfs.sessions.core import Journal, JournalEntry
from rhvfs.sessions.core._restore_leftovers import RESTORE_KIND
from tests.support.mounts import RHVFS, SimMount, restore_status
from tests.support.sim import engine_state, live_transfers, remove_vm, vm_details
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
API = "/ovirt-engine/api"
DELAY_S = 8


@pytest.fixture(scope="module")
def kept(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """myvm0's set, and the id of the VM of a restore of it that finished (as "kept")."""
    base = tmp_path_factory.mktemp("restore-crash")
    (base / "state").mkdir()
    m = SimMount(sim, base / "mnt", base / "state")
    try:
        set_dir = base / "myvm0"
        subprocess.run(["cp", "-a", str(m.mnt / "vms/myvm0/@rhv"), str(set_dir)], check=True)
        target = m.mnt / "restore" / "kept"
        target.mkdir()
        subprocess.run(["cp", "-a", f"{set_dir}/.", str(target)], check=True)
        status = restore_status(m, "kept")
        assert status["phase"] == "done", status["error"]
    finally:
        m.umount()
    # done: the VM has the OVF's comment back, its disks the set's descriptions
    manifest = json.loads((set_dir / "manifest.json").read_bytes())
    comment, descriptions = marks(sim, status["vm_id"])
    assert comment == parse_ovf((set_dir / "vm.ovf").read_bytes()).comment
    assert sorted(descriptions.values()) == sorted(d["description"] for d in manifest["disks"])
    assert all(descriptions.values())  # the sample's disks have one: this says something
    try:
        yield set_dir, status["vm_id"]
    finally:
        remove_vm(sim, "kept")


def marks(sim: Any, vm_id: str) -> tuple[str, dict[str, str]]:
    """A VM's comment and its disks' descriptions (disk id -> description)."""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        disks = conn.system_service().disks_service()
        comment = vms.vm_service(vm_id).get().comment or ""
        atts = vms.vm_service(vm_id).disk_attachments_service().list()
        return comment, {
            a.disk.id: disks.disk_service(a.disk.id).get().description or "" for a in atts
        }
    finally:
        conn.close()


def disk_descriptions(sim: Any, disk_ids: tuple[str, ...]) -> dict[str, str]:
    """The descriptions of those of ``disk_ids`` that exist."""
    conn = sim.sdk_connection()
    try:
        return {
            d.id: d.description or ""
            for d in conn.system_service().disks_service().list()
            if d.id in disk_ids
        }
    finally:
        conn.close()


def restore_entry(sim: Any, state_dir: Path) -> JournalEntry | None:
    entries = [
        e
        for e in Journal.for_engine(sim.engine_url, state_dir=state_dir).entries()
        if e.owner_kind == RESTORE_KIND
    ]
    assert len(entries) <= 1, entries
    return entries[0] if entries else None


def journaled(sim: Any, m: SimMount, field: str) -> tuple[str, ...]:
    """A field of the restore's journal entry (empty while there is none)."""
    entry = restore_entry(sim, m.state_dir)
    return () if entry is None else tuple(getattr(entry, field))


def writer(image: Path, source: Path, nbytes: int) -> subprocess.Popen[str]:
    """A tool that writes the first ``nbytes`` of an image, says so, and never finishes."""
    code = (
        "import sys, time\n"
        "src = open(sys.argv[2], 'rb')\n"
        "with open(sys.argv[1], 'wb') as f:\n"
        "    left = int(sys.argv[3])\n"
        "    while left:\n"
        "        data = src.read(min(left, 1 << 20))\n"
        "        f.write(data); f.flush(); left -= len(data)\n"
        "    print('written', flush=True)\n"
        "    time.sleep(3600)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(image), str(source), str(nbytes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(m: SimMount) -> None:
    """SIGKILL the mount (it stays visibly broken until detached)."""
    os.kill(m.pid, signal.SIGKILL)
    assert wait_until(lambda: not os.path.exists(f"/proc/{m.pid}"), 10)
    with pytest.raises(OSError) as e:
        os.listdir(m.mnt)
    assert e.value.errno == errno.ENOTCONN


def hold_at(sim: Any, m: SimMount, phase: str, name: str, set_dir: Path) -> list[Any]:
    """Start restore ``name`` and return once it is held at ``phase``; the tools it runs."""
    target = m.mnt / "restore" / name
    target.mkdir()
    image = next(p.name for p in set_dir.iterdir() if p.suffix in (".raw", ".qcow2"))
    config_files = [p for p in set_dir.iterdir() if p.name != image]
    tools: list[Any] = []
    if phase in ("transfer_starting", "uploading"):
        if phase == "transfer_starting":  # the transfer is made after the mount died
            sim.admin.add_fault(
                "engine-delay", method="POST", path=f"{API}/imagetransfers", delay=DELAY_S
            )
        subprocess.run(["cp", "-a", *map(str, config_files), str(target)], check=True)
        tool = writer(target / image, set_dir / image, 96 * MiB)
        tools.append(tool)
        if phase == "transfer_starting":
            wait_for("the transfer's intent", lambda: journaled(sim, m, "transfer_ids"))
            time.sleep(1)  # the request is sent right after the intent (the engine delays it)
        else:
            assert tool.stdout is not None and tool.stdout.readline() == "written\n"
            status = restore_status(m, name, timeout_s=0)
            assert status["phase"] == "uploading" and status["disks"][0]["state"] == "uploading"
        return tools
    if phase == "uploaded":  # disks complete, the VM asked for but not answered
        sim.admin.add_fault("engine-delay", method="POST", path=f"{API}/vms", delay=DELAY_S)
    else:  # creating_vm: the VM is made and its disk attached, its NIC is being added
        sim.admin.add_fault("engine-delay", method="POST", path=f"{API}/vms/*/nics", delay=DELAY_S)
    # the completing close waits for the VM: cp is still running when the mount dies
    tools.append(
        subprocess.Popen(
            ["cp", "-a", f"{set_dir}/.", str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    if phase == "uploaded":
        wait_for("the VM's intent", lambda: "vm" in journaled(sim, m, "pending"))
        time.sleep(1)  # the request is sent right after the intent (the engine delays it)
    else:
        wait_for("the VM with its disk", lambda: (vm_details(sim, name) or {}).get("disks"))
    return tools


@pytest.mark.parametrize(
    ("phase", "cleaner"),
    [
        ("transfer_starting", "gc"),
        ("uploading", "gc"),
        ("uploaded", "gc"),
        ("creating_vm", "gc"),
        ("uploaded", "mount"),
    ],
)
def test_leftovers_of_a_killed_restore_are_removed_and_nothing_else(
    sim: Any, kept: tuple[Path, str], tmp_path: Path, phase: str, cleaner: str
) -> None:
    set_dir, kept_vm = kept
    name = f"killed-{phase}"
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    vms_before, disks_before = engine_state(sim)
    assert kept_vm in vms_before
    m = SimMount(sim, tmp_path / "mnt", state_dir)
    tools: list[Any] = []
    try:
        tools = hold_at(sim, m, phase, name, set_dir)
        entry = restore_entry(sim, state_dir)
        assert entry is not None and entry.owner_name == name and entry.disk_ids
        kill(m)
    finally:
        if os.path.exists(f"/proc/{m.pid}"):
            os.kill(m.pid, signal.SIGKILL)
        for tool in tools:  # their files on the dead mount keep it busy
            tool.kill()
            tool.communicate()
        # `rhvfs umount` detaches a mount whose process is gone
        subprocess.run([*RHVFS, "umount", str(m.mnt)], check=True, timeout=60)
    # what the engine does after the kill: the delayed create call completes
    if phase == "transfer_starting":  # (with an id of the engine's choosing)
        assert wait_until(
            lambda: any(t["disk_id"] in entry.disk_ids for t in live_transfers(sim)), 30
        )
    if phase == "uploaded":
        assert wait_until(lambda: name in engine_state(sim)[0].values(), 30)
    sim.admin.clear_faults()
    vms_now, disks_now = engine_state(sim)
    assert set(disks_now) - set(disks_before), "the killed restore left nothing to clean up"
    # what the killed restore made carries its marker (what gc checks before removing it)
    left = disk_descriptions(sim, entry.disk_ids)
    assert left and set(left.values()) == {entry.marker}, left

    if cleaner == "gc":
        gc = [
            *RHVFS, "gc", "-c", sim.section, "--config-file", str(sim.conf_file),
            "--state-dir", str(state_dir),
        ]  # fmt: skip
        done = subprocess.run(gc, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"restore {name}" in done.stdout, done.stdout
        assert "kept" not in done.stdout
    else:
        second = SimMount(sim, tmp_path / "mnt", state_dir)
        try:
            assert wait_until(lambda: engine_state(sim) == (vms_before, disks_before), 120)
        finally:
            second.umount()

    assert engine_state(sim) == (vms_before, disks_before)
    assert not live_transfers(sim)
    assert restore_entry(sim, state_dir) is None
