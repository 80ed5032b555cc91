"""Progress and errors a person or a script can watch, through real mounts (issue 13).

- ``rhvfs status --watch`` on a pseudo-terminal while a VM's image is read
  slowly: frames redraw in place, bytes advance, the ETA is finite;
- status.json during a read of an incremental-enabled, running VM's ``@rhv/``
  (an engine backup): the totals are the sum of the sessions;
- the engine goes away: ``ls`` fails and status.json's ``errors`` shows the
  retries and the failed call.

Each read is checked against the simulator's sha256 of the disk. A private
simulator: reading a running VM's set through an engine backup adds
checkpoints to its disks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mounts import RHVFS, SimMount
from tests.support.sim import SimProcess, start_sim
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
CLEAR = "\x1b[H\x1b[J"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(tmp_path_factory.mktemp("statussim"), sample=True, delay_s=0.0)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def mount(sim: SimProcess, tmp_path: Path) -> Iterator[SimMount]:
    m = SimMount(sim, tmp_path / "mnt", tmp_path / "state", "--grace-period", "1")
    try:
        yield m
    finally:
        m.umount()


class SlowReader(threading.Thread):
    """Reads files 1 MiB at a time, pausing ``pause_s`` after each MiB until ``hurry`` is
    set (then at full speed); keeps each file's sha256."""

    def __init__(self, paths: list[Path], *, pause_s: float) -> None:
        super().__init__(daemon=True)
        self.paths, self.pause_s = paths, pause_s
        self.hurry = threading.Event()
        self.sha256: dict[str, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for path in self.paths:
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(MiB):
                        digest.update(block)
                        if not self.hurry.is_set():
                            time.sleep(self.pause_s)
                self.sha256[path.name] = digest.hexdigest()
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self) -> dict[str, str]:
        self.hurry.set()
        self.join(timeout=300)
        assert not self.is_alive(), "the reader did not finish"
        if self.error is not None:
            raise self.error
        return self.sha256


def disk_ids(mnt: SimMount, vm: str) -> dict[str, str]:
    """image file name (``<alias>--<disk id>.raw``) -> disk id, from the set's listing
    (reading the manifest here would make the test's own read of it begin a new read)."""
    names = os.listdir(mnt.mnt / "vms" / vm / "@rhv")
    return {n: n.rsplit("--", 1)[1].removesuffix(".raw") for n in names if n.endswith(".raw")}


def watch_frames(
    mnt: Path, *, until: Callable[[list[str]], bool], timeout_s: float = 60
) -> tuple[list[str], int]:
    """Run ``rhvfs status --watch --interval 0.5`` on a pseudo-terminal until ``until(frames)``;
    stop it with Ctrl-C (SIGINT). The frames drawn (escape sequences removed) and its exit code."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "50"}
    proc = subprocess.Popen(
        [*RHVFS, "status", "--watch", "--interval", "0.5", str(mnt)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    raw = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    raw += os.read(master, 65536)
                except OSError:  # the terminal's other side closed: the process is gone
                    break
            frames = raw.decode(errors="replace").split(CLEAR)[1:]
            if until(frames[:-1]):  # the last frame may still be arriving
                break
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            raw += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = raw.decode(errors="replace")
    assert text.startswith(CLEAR), text[:200]  # drawn in place on a terminal
    return [ANSI.sub("", f).replace("\r", "") for f in text.split(CLEAR)[1:]], code


FILE_LINE = re.compile(
    r"^\s+\[[#-]+\]\s+(?P<pct>[\d.]+)%\s+(?P<done>[\d.]+ \w*B) / (?P<size>[\d.]+ \w+)\s+"
    r"(?P<rate>[\d.]+ \w*B)/s \(avg [^)]*\)\s+ETA (?P<eta>[-\d:]+)"
)
UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}


def parse_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


def file_progress(frame: str, name: str) -> dict[str, Any] | None:
    """The progress line under file ``name`` in a frame (None when it is not shown)."""
    lines = frame.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip().startswith(name):
            m = FILE_LINE.match(lines[i + 1])
            assert m is not None, lines[i + 1]
            return {
                "state": line.split()[-1],
                "percent": float(m["pct"]),
                "done": parse_bytes(m["done"]),
                "rate": parse_bytes(m["rate"]),
                "eta": m["eta"],
            }
    return None


def test_watch_on_a_terminal_shows_bytes_advancing_with_a_finite_eta(
    mount: SimMount, sim: SimProcess
) -> None:
    ids = disk_ids(mount, "myvm")
    name = next(n for n in ids if n.startswith("mydisk--"))
    reader = SlowReader([mount.mnt / "vms/myvm/@rhv" / name], pause_s=0.03)
    reader.start()

    def advancing(frames: list[str]) -> bool:
        shown = [p for p in (file_progress(f, name) for f in frames) if p and p["done"] > 0]
        return len({p["done"] for p in shown}) >= 3

    try:
        frames, code = watch_frames(mount.mnt, until=advancing)
    finally:
        sha = reader.finish()
    assert code == 0  # Ctrl-C ends --watch quietly
    seen = [p for p in (file_progress(f, name) for f in frames) if p is not None]
    done = [p["done"] for p in seen if p["done"] > 0]
    assert len(set(done)) >= 3 and done == sorted(done), done  # bytes advance, never back
    reading = [p for p in seen if p["state"] == "reading" and p["rate"] > 0]
    assert reading and all(re.fullmatch(r"\d+:\d\d(:\d\d)?", p["eta"]) for p in reading)
    assert all(0 < p["percent"] < 100 for p in reading)
    assert any("vm myvm: full set via snapshot, active" in f for f in frames)
    assert sha[name] == sim.admin.disk_sha256(ids[name])
    # and once it was read to the end, the session says so (or has already closed)
    doc = mount.status()
    files = [f for s in doc["sessions"]["sessions"] for f in s["files"] if f["name"] == name]
    assert all(f["state"] == "done" and f["progress"]["percent"] == 100.0 for f in files)


def check_totals(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """status.json's totals are the sum of its sessions; returns the sessions."""
    sessions = doc["sessions"]
    live = sessions["sessions"] + sessions["incremental"]["sessions"]
    totals = sessions["totals"]
    assert totals["sessions_active"] == len(live)
    assert totals["bytes_read_active"] == sum(s["bytes_read"] for s in live)
    assert totals["handles_open"] == sum(s["handles"] for s in live)
    for key in ("size", "bytes_done", "rate_bytes_per_s"):
        assert totals["progress"][key] == sum(s["progress"][key] for s in live), key
    for s in live:  # and each session is the sum of its files
        assert s["progress"]["bytes_done"] == sum(f["progress"]["bytes_done"] for f in s["files"])
        assert s["progress"]["size"] == sum(f["size"] for f in s["files"])
    return live


def test_totals_are_the_sum_of_sessions_while_an_incremental_enabled_vm_is_read(
    mount: SimMount, sim: SimProcess
) -> None:
    set_dir = mount.mnt / "vms/web01/@rhv"
    ids = disk_ids(mount, "web01")
    images = sorted(n for n in os.listdir(set_dir) if n.endswith(".raw"))
    assert sorted(ids) == images
    sizes = sum(os.stat(set_dir / n).st_size for n in images)
    config = ["vm.ovf", "vm.xml", "manifest.json"]
    reader = SlowReader([set_dir / n for n in [*config, *images]], pause_s=0.02)
    reader.start()
    samples: list[dict[str, Any]] = []
    try:

        def sampled() -> bool:
            doc = mount.status()
            if doc["sessions"]["incremental"]["sessions"]:
                samples.append(doc)
            return len(samples) >= 4 and samples[-1]["sessions"]["totals"]["bytes_read"] > 0

        assert wait_until(sampled, timeout_s=60, interval_s=0.3), mount.status()
    finally:
        sha = reader.finish()
    for doc in samples:
        live = check_totals(doc)
        # the read goes through an engine backup (web01 is up, a disk has incremental backup)
        (session,) = live
        assert session["point_in_time"]["method"] == "backup"
        assert session["point_in_time"]["configuration_time"]
        if session["phase"] == "active":  # starting: the backup's files are not known yet
            assert sorted(f["name"] for f in session["files"]) == images
        # a fresh mount: every byte read so far is this session's
        assert doc["sessions"]["totals"]["bytes_read"] == session["bytes_read"]
    assert samples[-1]["sessions"]["totals"]["bytes_read"] > 0
    assert samples[-1]["sessions"]["incremental"]["sessions"][0]["phase"] == "active"
    assert any(d["sessions"]["totals"]["progress"]["rate_bytes_per_s"] > 0 for d in samples)
    assert any(d["sessions"]["totals"]["progress"]["eta_s"] is not None for d in samples)
    for name in images:
        assert sha[name] == sim.admin.disk_sha256(ids[name]), name
    # the read completed (every file of the set): the session ends, its bytes stay counted
    assert wait_until(lambda: not mount.status()["sessions"]["incremental"]["sessions"])
    totals = mount.status()["sessions"]["totals"]
    assert totals["sessions_active"] == 0 and totals["bytes_read_active"] == 0
    assert totals["bytes_read"] >= sizes


def test_engine_down_listing_fails_and_errors_say_why(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    own = sim_factory()
    mnt = SimMount(own, tmp_path / "mnt", tmp_path / "state")
    try:
        assert "web01" in os.listdir(mnt.mnt / "vms")
        assert mnt.status()["errors"] == []
        own.stop()
        # the listings expire (listing_ttl 5 s); the next ls asks the engine, which is gone
        time.sleep(6)
        with pytest.raises(OSError) as failed:
            os.listdir(mnt.mnt / "vms/web01")
        assert failed.value.errno == errno.EIO
        errors = mnt.status()["errors"]
        retries = [e for e in errors if e["level"] == "retry"]
        assert retries and all("engine unavailable" in e["message"] for e in retries)
        assert all(set(e) == {"time", "level", "what", "message"} for e in errors)
        calls = [e for e in errors if e["what"].startswith("fs ")]
        assert calls and calls[-1]["level"] == "warning"
        assert "engine unavailable" in calls[-1]["message"] and "EIO" in calls[-1]["message"]
        counts = mnt.status()["error_counts"]
        assert counts["retry"] == len(retries) and counts["warning"] >= 2
        out = subprocess.run(
            [*RHVFS, "status", str(mnt.mnt)], capture_output=True, text=True, check=True
        ).stdout
        assert "recent errors (" in out and "fs " in out
    finally:
        mnt.umount()
