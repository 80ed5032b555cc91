"""`rhvfs sim guest-write` and `rhvfs sim fault` against a running simulator (subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ovirtsdk4 as sdk
import pytest

MiB = 1024**2


def _rhvfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rhvfs.cli", *args], capture_output=True, text=True, timeout=120
    )


def _read(image: Path, offset: int, size: int, tmp: Path) -> bytes:
    flat = tmp / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(flat)], check=True)
    with open(flat, "rb") as f:
        f.seek(offset)
        return f.read(size)


def test_guest_write_and_fault_commands(sim_factory: Callable[..., Any], tmp_path: Path) -> None:
    s = sim_factory()
    conn = s.sdk_connection()
    try:
        vm = conn.system_service().vms_service().list(search="name=myvm0")[0]
        disk = conn.follow_link(conn.follow_link(vm.disk_attachments)[0].disk)
        before = s.admin.disk_sha256(disk.id)
        state = str(s.state_dir)
        r = _rhvfs(
            "sim",
            "guest-write",
            "--state-dir",
            state,
            "--vm",
            "myvm0",
            "--disk",
            "myvm0_Disk1",
            "--offset",
            str(MiB),
            "--size",
            "65536",
            "--pattern",
            "0xcd",
        )
        assert r.returncode == 0, r.stderr
        assert disk.image_id in r.stdout
        payload = tmp_path / "payload"
        payload.write_bytes(b"hello from the guest\n" * 100)
        r = _rhvfs(
            "sim",
            "guest-write",
            "--state-dir",
            state,
            "--vm",
            "myvm0",
            "--disk",
            disk.id,
            "--offset",
            str(3 * MiB),
            "--from-file",
            str(payload),
        )
        assert r.returncode == 0, r.stderr
        assert s.admin.disk_sha256(disk.id) != before
        volume = s.state_dir / "storage" / disk.storage_domains[0].id / disk.id / disk.image_id
        assert _read(volume, MiB, 65536, tmp_path) == b"\xcd" * 65536
        assert _read(volume, 3 * MiB, 2100, tmp_path) == payload.read_bytes()
        r = _rhvfs(
            "sim",
            "guest-write",
            "--state-dir",
            state,
            "--vm",
            "myvm0",
            "--disk",
            "nope",
            "--offset",
            "0",
            "--size",
            "1",
            "--pattern",
            "1",
        )
        assert r.returncode == 1 and "404" in r.stderr

        r = _rhvfs(
            "sim",
            "fault",
            "--state-dir",
            state,
            "engine-error",
            "--method",
            "GET",
            "--path",
            "/ovirt-engine/api/vms",
            "--status",
            "500",
            "--times",
            "-1",
        )
        assert r.returncode == 0, r.stderr
        for _ in range(2):
            with pytest.raises(sdk.Error) as err:
                conn.system_service().vms_service().list()
            assert err.value.code == 500
        assert _rhvfs("sim", "fault", "--state-dir", state, "clear").returncode == 0
        assert len(conn.system_service().vms_service().list()) >= 6

        sd = conn.system_service().storage_domains_service().list(search="name=mydata")[0]
        dc_sd = (
            conn.system_service()
            .data_centers_service()
            .data_center_service(sd.data_centers[0].id)
            .storage_domains_service()
            .storage_domain_service(sd.id)
        )
        for status in ("maintenance", "active"):
            r = _rhvfs(
                "sim",
                "fault",
                "--state-dir",
                state,
                "storage-domain",
                "--name",
                "mydata",
                "--status",
                status,
            )
            assert r.returncode == 0, r.stderr
            assert dc_sd.get().status.value == status
    finally:
        conn.close()


def test_commands_without_a_running_simulator(tmp_path: Path) -> None:
    r = _rhvfs("sim", "fault", "--state-dir", str(tmp_path), "clear")
    assert r.returncode == 1 and "no simulator is running" in r.stderr


def test_serve_with_a_password_file_prints_one_line_and_never_the_password(tmp_path: Path) -> None:
    import configparser
    import signal

    secret = "s3cret-from-file"
    pw = tmp_path / "pw"
    pw.write_text(secret + "\n")
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rhvfs.cli",
            "sim",
            "serve",
            "--state-dir",
            str(state),
            "--password-file",
            str(pw),
            "--delay",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(
            f"rhvfs-sim ready: {state.resolve()}/ovirt-img.conf (engine https://localhost:"
        )
        conf = configparser.ConfigParser()
        conf.read(state / "ovirt-img.conf")
        assert conf["sim"]["password"] == secret
        assert not (state / "password").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out == ""  # nothing after the ready line
    assert secret not in err and secret not in line
    assert secret not in (state / "run" / "sim.log").read_text()
