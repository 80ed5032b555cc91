"""``rhvfs ls``, ``gc`` and ``mount`` against the simulator, run as a script would run them.

Every failure exits 1 with the reason on stderr and nothing on stdout that could
be read as a result: a wrong password and an unreachable engine for ``ls`` (even
of ``/``, whose listing needs no engine call: the command checks the engine
first) and ``gc`` (never a cleanup line on stdout and exit 0), and for
``mount`` (the daemon's error, relayed by the parent). ``ls --json`` lists what
``ls -l`` lists. ``gc --json`` sorts its report: what it removed (or would), the
rhvfs artifacts it left alone, and failures (an engine refusing the removal
makes it exit 1, the failure on stderr too).

Every test leaves the shared simulator as it found it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ovirtsdk4 as sdk
import ovirtsdk4.types as types
import pytest

from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._gc import artifact_description
from rhvfs.sessions.core._installation import Installation, Ownership, new_id
from tests.support.mounts import RHVFS
from tests.support.sim import conf_with, snapshot_ids
from tests.support.waiting import wait_for

SNAPSHOT_PATH = "/ovirt-engine/api/vms/*/snapshots/*"
VM = "myvm0"


def rhvfs(tmp_path: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg-state")}
    env.pop("RHVFS_PASSWORD", None)
    return subprocess.run(
        [*RHVFS, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def connection(conf: Path, state: Path) -> list[str]:
    return ["-c", "sim", "--config-file", str(conf), "--state-dir", str(state)]


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line of a command that failed without printing a result."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return result.stderr.splitlines()[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def wrong_password(sim: Any, tmp_path: Path) -> Path:
    (tmp_path / "wrong").mkdir()
    return conf_with(sim, tmp_path / "wrong", password="not-the-password")


@pytest.fixture
def unreachable(sim: Any, tmp_path: Path) -> Path:
    (tmp_path / "down").mkdir()
    return conf_with(
        sim,
        tmp_path / "down",
        engine_url=f"https://localhost:{closed_port()}",
        system_tries=1,
        system_timeout=5,
    )


LS_AND_GC = [
    ["ls", "/"],
    ["ls", "--json", "/"],
    ["ls", "-R", "/vms"],
    ["gc"],
    ["gc", "--dry-run"],
    ["gc", "--json"],
]


@pytest.mark.parametrize("command", LS_AND_GC, ids=" ".join)
def test_a_wrong_password_fails_ls_and_gc(
    command: list[str], wrong_password: Path, tmp_path: Path, sim: Any
) -> None:
    args = [command[0], *connection(wrong_password, tmp_path / "state"), *command[1:]]
    result = rhvfs(tmp_path, *args)
    assert result.stderr.splitlines() == [failed(result)]  # one line, nothing else
    line = failed(result)
    assert line.startswith("rhvfs: authentication failed: ")
    assert "username or password is incorrect" in line


@pytest.mark.parametrize("command", LS_AND_GC, ids=" ".join)
def test_an_unreachable_engine_fails_ls_and_gc(
    command: list[str], unreachable: Path, tmp_path: Path
) -> None:
    args = [command[0], *connection(unreachable, tmp_path / "state"), *command[1:]]
    line = failed(rhvfs(tmp_path, *args))
    assert line.startswith("rhvfs: engine unavailable: ")
    assert "Could not connect" in line or "Connection refused" in line


def test_ls_json_lists_what_ls_long_lists(sim: Any, tmp_path: Path) -> None:
    base = ["ls", *connection(sim.conf_file, tmp_path / "state")]
    text = rhvfs(tmp_path, *base, "-l", "/vms/web01/@rhv")
    doc = rhvfs(tmp_path, *base, "--json", "/vms/web01/@rhv")
    assert (text.returncode, text.stderr, doc.returncode, doc.stderr) == (0, "", 0, "")
    listed = json.loads(doc.stdout)
    assert listed["path"] == "/vms/web01/@rhv" and listed["errors"] == []
    columns = [line.split() for line in text.stdout.splitlines()]
    # (a running VM's set shows the time it is listed at: the two runs may differ)
    assert [(e["size"], e["path"]) for e in listed["entries"]] == [
        (int(size), path) for _, size, _, path in columns
    ]
    for entry in listed["entries"]:
        stamp = datetime.fromtimestamp(entry["mtime_ns"] / 1e9, UTC)
        assert entry["mtime"] == stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [e["path"].rsplit("/", 1)[1] for e in listed["entries"]][:3] == [
        "vm.ovf",
        "vm.xml",
        "manifest.json",
    ]
    assert all(e["type"] == "file" for e in listed["entries"])
    missing = rhvfs(tmp_path, *base, "/vms/no-such-vm")
    assert failed(missing) == "rhvfs: not found: no-such-vm"


def test_ls_of_the_root_names_the_engine_product_and_version(sim: Any, tmp_path: Path) -> None:
    base = ["ls", *connection(sim.conf_file, tmp_path / "state")]
    text = rhvfs(tmp_path, *base, "/")
    assert (text.returncode, text.stderr) == (0, "")
    lines = text.stdout.splitlines()
    assert lines[0] == "# engine: oVirt Engine 4.5.5-1.el8"
    assert "/vms/" in lines and "/datacenters/" in lines
    doc = json.loads(rhvfs(tmp_path, *base, "--json", "/vms").stdout)
    assert doc["engine"] == {"name": "oVirt Engine", "version": "4.5.5-1.el8"}
    assert not rhvfs(tmp_path, *base, "/vms").stdout.startswith("#")  # only the root's listing


def add_snapshot(sim: Any, description: str) -> str:
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm = vms.list(search=f"name={VM}")[0]
        snaps = vms.vm_service(vm.id).snapshots_service()
        snap = snaps.add(types.Snapshot(description=description, persist_memorystate=False))
        service = snaps.snapshot_service(snap.id)
        wait_for("snapshot ok", lambda: service.get().snapshot_status == types.SnapshotStatus.OK)
        return str(snap.id)
    finally:
        conn.close()


def remove_snapshot(sim: Any, snapshot_id: str) -> None:
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm = vms.list(search=f"name={VM}")[0]
        service = vms.vm_service(vm.id).snapshots_service().snapshot_service(snapshot_id)
        try:
            service.remove()
        except sdk.NotFoundError:
            return

        def gone() -> bool:
            try:
                service.get()
            except sdk.NotFoundError:
                return True
            return False

        wait_for("snapshot removed", gone)
    finally:
        conn.close()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_gc_json_reports_removals_what_it_left_alone_and_failures(sim: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    gc = ["gc", *connection(sim.conf_file, state)]
    clean = rhvfs(tmp_path, *gc)
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "nothing to clean up\n", "")
    before = snapshot_ids(sim, VM)
    ours = Installation(state).id
    ghost = procid.ProcessIdentity(procid.hostname(), procid.boot_id(), dead_pid(), 1)
    now = datetime.now(UTC)
    leftover = add_snapshot(
        sim, artifact_description("cligc000001", ghost, now, owner=Ownership(ours, new_id()))
    )
    theirs = add_snapshot(
        sim,
        artifact_description("cligc000002", ghost, now, owner=Ownership(new_id(), new_id())),
    )
    try:
        dry = rhvfs(tmp_path, *gc, "--dry-run", "--json")
        assert (dry.returncode, dry.stderr) == (0, "")
        report = json.loads(dry.stdout)
        assert report["dry_run"] is True and report["errors"] == []
        (action,) = report["actions"]
        assert action.startswith(f"would remove snapshot {leftover} of VM ")
        (alone,) = [line for line in report["left_alone"] if theirs in line]
        assert alone.startswith(f"left alone: snapshot {theirs} of VM ")
        assert leftover in snapshot_ids(sim, VM)

        # The engine refuses the removal: a failure, on stderr and in the report, exit 1.
        sim.admin.add_fault(
            "engine-error", method="DELETE", path=SNAPSHOT_PATH, status=400, times=-1
        )
        try:
            refused = rhvfs(tmp_path, *gc, "--json")
            text = rhvfs(tmp_path, *gc)  # the same failure without --json
        finally:
            sim.admin.clear_faults()
        assert refused.returncode == 1, refused.stderr
        report = json.loads(refused.stdout)
        assert report["dry_run"] is False and report["actions"] == []
        (error,) = report["errors"]
        assert error.startswith(f"failed to remove snapshot {leftover} of VM ")
        assert refused.stderr.splitlines() == [f"rhvfs: {error}"]
        assert text.returncode == 1  # and not shown as a cleanup line
        assert leftover not in text.stdout and theirs in text.stdout
        assert [line for line in text.stderr.splitlines() if leftover in line] == [
            f"rhvfs: {error}"
        ]

        done = rhvfs(tmp_path, *gc, "--json")
        assert (done.returncode, done.stderr) == (0, "")
        report = json.loads(done.stdout)
        (action,) = report["actions"]
        assert action.startswith(f"removed snapshot {leftover} of VM ")
        assert set(snapshot_ids(sim, VM)) == set(before) | {theirs}
    finally:
        for snapshot in (leftover, theirs):
            remove_snapshot(sim, snapshot)
    assert snapshot_ids(sim, VM) == before


def test_mount_failures_exit_1_with_the_reason(
    sim: Any, wrong_password: Path, unreachable: Path, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "state"
    for conf, reason in (
        (wrong_password, "authentication failed: "),
        (unreachable, "engine unavailable: "),
    ):
        result = rhvfs(tmp_path, "mount", *connection(conf, state), str(mnt))
        (line,) = result.stderr.splitlines()
        assert failed(result) == line
        assert line.startswith(f"rhvfs: mount failed: {reason}")
        assert line.endswith(f"(log: {state}/mount-{str(mnt).strip('/').replace('/', '_')}.log)")
        assert not os.path.ismount(mnt)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = rhvfs(tmp_path, "mount", *connection(sim.conf_file, state), str(not_a_dir))
    assert (
        failed(result) == f"rhvfs: configuration error: mountpoint {not_a_dir} is not a directory"
    )


def test_rhvfs_sim_runs_with_its_extra_installed() -> None:
    """The guard lets the simulator through when its modules are there (this venv)."""
    result = subprocess.run([*RHVFS, "sim", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: rhvfs sim")
    assert "serve" in result.stdout
