"""Real FUSE mounts in tests: of the VFS fakes, and of the simulator through ``rhvfs mount``.

- ``FakeMount``: ``python -m tests.support.fake_mount MNT`` in a subprocess
  (``rhvfs.mount.serve`` on the fakes), stopped with ``rhvfs umount``; its
  ``counts`` are the fake backups' opens/releases once it exited.
- ``SimMount``: the public contract ``rhvfs mount -c SECTION --config-file
  CONF --state-dir DIR [extra] MNT`` (it returns once the mount answers) and
  ``rhvfs umount``; ``status()`` reads ``.rhvfs/status.json``.
- ``IncrementalMount``: a ``SimMount`` with ``--grace-period 1`` that tars a
  VM's set directory and waits until the chain recorded the set.
- ``restore_status``: wait until ``restore/<name>/.status`` says settled.
- ``extract``, ``manifest_of``: a tar of a set, unpacked; its manifest.
- ``set_shas``: disk id -> sha256 of each image of a copied set.
- ``restic_summary``: the summary of one ``restic backup``.

Must not: assert what a test checks (only that a mount came up and went away).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rhvfs.sessions.incremental._chainstate import ChainSet, ChainState
from tests.support.data import sha256_file
from tests.support.waiting import wait_until

RHVFS = [sys.executable, "-m", "rhvfs.cli"]
REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeMount:
    """A FUSE mount of the VFS fakes in a subprocess."""

    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt
        path = os.environ.get("PYTHONPATH")
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else ""),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_mount", str(mnt)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.proc.kill()
            raise AssertionError(f"mount did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.counts: dict[str, int] = {}

    def umount(self) -> None:
        if self.proc.poll() is None:
            subprocess.run([*RHVFS, "umount", str(self.mnt)], check=True, timeout=60)
            out, _ = self.proc.communicate(timeout=30)
            self.counts = json.loads(out.strip().splitlines()[-1])
        assert not os.path.ismount(self.mnt)


class SimMount:
    """``rhvfs mount`` of a simulator (daemonizing: returns once the mount answers)."""

    def __init__(
        self,
        sim: Any,
        mnt: Path,
        state_dir: Path,
        *extra: str,
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``config_file`` replaces the simulator's own; ``env`` the mount command's environment.
        What the command printed on stderr is kept in ``stderr``."""
        self.sim, self.mnt, self.state_dir = sim, mnt, state_dir
        mnt.mkdir(exist_ok=True)
        argv = [
            *RHVFS, "mount", "-c", sim.section, "--config-file", str(config_file or sim.conf_file),
            "--state-dir", str(state_dir), *extra, str(mnt),
        ]  # fmt: skip
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            env=None if env is None else dict(env),
        )
        assert result.returncode == 0, result.stderr
        self.stderr = result.stderr
        assert os.path.ismount(mnt)  # ready when `rhvfs mount` returned
        self.pid = int(self.status()["pid"])

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.mnt / ".rhvfs/status.json").read_bytes())
        return doc

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run([*RHVFS, "umount", str(self.mnt)], check=True, timeout=300)
        assert not os.path.ismount(self.mnt)


class IncrementalMount(SimMount):
    """A mount (grace period 1 s; a set read only in part ends 5 s after its last read)
    whose VM set directories are copied with tar."""

    def __init__(self, sim: Any, mnt: Path, state_dir: Path, *, vm: str) -> None:
        super().__init__(sim, mnt, state_dir, "--grace-period", "1", "--read-idle-limit", "5")
        self.vm = vm
        self.chain = ChainState.for_engine(sim.engine_url, state_dir=state_dir)

    def sets(self, vm_id: str) -> list[ChainSet]:
        return self.chain.sets(vm_id)

    def tar_set(self, kind: str, tar: Path, vm_id: str, *, completes: bool = True) -> None:
        """tar a set directory and wait until its backup ended (and the chain advanced)."""
        before = len(self.sets(vm_id))
        subprocess.run(
            ["tar", "-cf", str(tar), "-C", str(self.mnt / "vms" / self.vm / kind), "."],
            check=True,
            timeout=300,
        )
        if completes:
            assert wait_until(lambda: len(self.sets(vm_id)) == before + 1), self.status()
        wait_until(lambda: not self.status()["sessions"]["incremental"]["sessions"])


def restore_status(mnt: SimMount, name: str, timeout_s: float = 120) -> dict[str, Any]:
    """``restore/<name>/.status`` once it is settled (or as it is after ``timeout_s``)."""
    path = mnt.mnt / "restore" / name / ".status"
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = json.loads(path.read_bytes())
        if status["settled"] or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def extract(tar: Path, into: Path) -> list[str]:
    """Unpack ``tar`` into ``into``; the names of its files."""
    names = subprocess.run(
        ["tar", "-tf", str(tar)], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(into)], check=True)
    return [n.removeprefix("./") for n in names if n not in (".", "./")]


def manifest_of(names: list[str], into: Path) -> dict[str, Any]:
    """The manifest (``manifest--<set>.json``) among a set's extracted files."""
    name = next(n for n in names if n.startswith("manifest--"))
    doc: dict[str, Any] = json.loads((into / name).read_bytes())
    return doc


def set_shas(set_dir: Path) -> dict[str, str]:
    """disk id -> sha256 of its image in a copied set (files named by its manifest)."""
    manifest = json.loads((set_dir / "manifest.json").read_bytes())
    return {d["id"]: sha256_file(set_dir / d["file"]) for d in manifest["disks"]}


def restic_summary(repo: Path, path: Path) -> dict[str, int]:
    """Back ``path`` up into the restic ``repo``; the run's summary document."""
    env = {**os.environ, "RESTIC_PASSWORD": "test", "RESTIC_CACHE_DIR": str(repo.parent / "cache")}
    result = subprocess.run(
        ["restic", "-r", str(repo), "--json", "backup", str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    summary: dict[str, int] = next(doc for doc in lines if doc.get("message_type") == "summary")
    return summary
