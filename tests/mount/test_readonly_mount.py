"""``rhvfs mount -o ro``: no ``restore/`` tree, a read-only mount for the kernel; repeated
``-o`` merged; ``rhvfs umount`` exits 1 when the mount process is still cleaning up.

The mount is ``-o ro -o umask=027`` (two ``-o``): the root has every top directory
but ``restore/``, files show mode 0440 (the second ``-o``'s umask), the kernel
reports the mount read-only and refuses writes with EROFS, the mount's log says
so. ``rhvfs umount --timeout 0`` returns before the daemon finished its cleanup:
exit 1 with the reason, and the daemon goes on to unmount by itself.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.mounts import RHVFS, SimMount
from tests.support.sim import alive
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_a_read_only_mount_has_no_restore_tree_and_refuses_writes(sim: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    m = SimMount(sim, tmp_path / "mnt", state, "-o", "ro", "-o", "umask=027")
    try:
        assert sorted(os.listdir(m.mnt)) == [
            ".rhvfs", "clusters", "datacenters", "hosts", "storagedomains", "tags", "templates", "vms",
        ]  # fmt: skip
        assert not os.path.exists(m.mnt / "restore")
        assert os.statvfs(m.mnt).f_flag & os.ST_RDONLY
        vm_json = m.mnt / "vms/web01/vm.json"
        assert stat.S_IMODE(os.stat(vm_json).st_mode) == 0o440
        assert json.loads(vm_json.read_bytes())["name"] == "web01"
        for write in (
            lambda: os.mkdir(m.mnt / "restore"),
            lambda: os.mkdir(m.mnt / "vms/web01/new"),
            lambda: open(m.mnt / "vms/web01/new.txt", "wb"),  # noqa: SIM115 - refused
        ):
            with pytest.raises(OSError) as refused:
                write()
            assert refused.value.errno == errno.EROFS
        status = subprocess.run(
            [*RHVFS, "status", str(m.mnt)], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        log = next(state.glob("mount-*.log")).read_text()
        assert "umask 0027, read-only (no restore/)" in log

        # umount that does not wait for the cleanup: exit 1 with the reason
        pid = m.pid
        hurried = subprocess.run(
            [*RHVFS, "umount", "--timeout", "0", str(m.mnt)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (hurried.returncode, hurried.stdout) == (1, "")
        assert hurried.stderr.splitlines() == [
            f"rhvfs: mount process {pid} still cleaning up after 0 s"
        ]
        assert wait_until(lambda: not alive(pid), 60)
        assert wait_until(lambda: not os.path.ismount(m.mnt), 10)
    finally:
        m.umount()
