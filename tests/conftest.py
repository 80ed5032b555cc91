"""Shared fixtures for every test tier. Other modules depend on these names: keep them stable.

``sim`` (session scope)
    A ``rhvfs sim serve --sample --port 0 --delay 0`` subprocess on a temporary
    state dir, shared by the whole session. It yields a ``SimProcess`` with:
    ``state_dir`` (Path), ``conf_file`` (Path of ``ovirt-img.conf``),
    ``section`` (``"sim"``), ``engine_url`` (``https://localhost:PORT``),
    ``api_url`` (``engine_url + "/ovirt-engine/api"``), ``cafile`` (str),
    ``username``, ``password``, ``admin`` (a ``rhvfs.sim.client.SimAdmin``:
    guest writes, volume sha256, faults) and ``sdk_connection(**kwargs)``
    returning a fresh ``ovirtsdk4.Connection`` (close it). At the end it stops
    the simulator and asserts that no qemu-nbd or ovirt-imageio process it
    started is left. Tests that change shared state (snapshots, uploads, guest
    writes, faults) must undo it or work on their own disks/VMs.

``sim_factory`` (function scope)
    ``sim_factory(*, sample=True, delay_s=0.0, state_dir=None) -> SimProcess``
    starts an isolated simulator (for destructive tests); ``state_dir`` reuses
    a directory (restart tests). Every simulator it started is stopped at the
    end of the test, with the same leftover-process check; ``SimProcess.stop()``
    stops one earlier.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

READY_PREFIX = "rhvfs-sim ready: "
START_TIMEOUT_S = 90.0


def _children(pid: int) -> list[int]:
    """All descendant pids of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    result: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            result.append(child)
            todo.append(child)
    return result


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclasses.dataclass
class SimProcess:
    state_dir: Path
    proc: subprocess.Popen[str]
    conf_file: Path
    section: str
    engine_url: str
    api_url: str
    cafile: str
    username: str
    password: str
    admin: Any

    def sdk_connection(self, **kwargs: Any) -> Any:
        import ovirtsdk4

        options: dict[str, Any] = {
            "url": self.api_url,
            "username": self.username,
            "password": self.password,
            "ca_file": self.cafile,
        }
        options.update(kwargs)
        return ovirtsdk4.Connection(**options)

    def stop(self) -> None:
        """SIGTERM, wait, and assert nothing it started (qemu-nbd, imageio) survives."""
        if self.proc.poll() is None:
            helpers = [p for p in _children(self.proc.pid) if _alive(p)]
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"rhvfs sim serve on {self.state_dir} ignored SIGTERM"
                ) from None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in helpers):
                time.sleep(0.1)
            left = [f"{p}: {_cmdline(p)}" for p in helpers if _alive(p)]
            for p in helpers:
                if _alive(p):
                    os.kill(p, signal.SIGKILL)
            assert not left, f"processes left after the simulator stopped: {left}"
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_sim(state_dir: Path, *, sample: bool = True, delay_s: float = 0.0) -> SimProcess:
    from rhvfs.sim.client import SimAdmin

    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "rhvfs.cli",
        "sim",
        "serve",
        "--state-dir",
        str(state_dir),
        "--port",
        "0",
        "--delay",
        str(delay_s),
    ]
    if sample:
        argv.append("--sample")
    with open(state_dir / "serve.stderr", "ab") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(READY_PREFIX) or not line:
            break
    if not line.startswith(READY_PREFIX):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        tail = (state_dir / "serve.stderr").read_text()[-3000:]
        raise RuntimeError(f"rhvfs sim serve did not become ready:\n{tail}")
    conf_file = state_dir / "ovirt-img.conf"
    cp = configparser.ConfigParser()
    cp.read(conf_file)
    section = cp["sim"]
    engine_url = section["engine_url"]
    return SimProcess(
        state_dir=state_dir,
        proc=proc,
        conf_file=conf_file,
        section="sim",
        engine_url=engine_url,
        api_url=engine_url + "/ovirt-engine/api",
        cafile=section["cafile"],
        username=section["username"],
        password=section["password"],
        admin=SimAdmin(state_dir),
    )


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(tmp_path_factory.mktemp("sim"), sample=True, delay_s=0.0)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sim_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def factory(
        *, sample: bool = True, delay_s: float = 0.0, state_dir: Path | None = None
    ) -> SimProcess:
        s = start_sim(state_dir or tmp_path_factory.mktemp("simf"), sample=sample, delay_s=delay_s)
        started.append(s)
        return s

    try:
        yield factory
    finally:
        for s in started:
            s.stop()
