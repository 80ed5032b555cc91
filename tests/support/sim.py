"""The engine simulator in tests: start and stop ``rhvfs sim serve``, its config, SDK look-ups.

``start_sim`` runs ``rhvfs sim serve --port 0`` in a subprocess and returns a
``SimProcess`` once it is ready (``conftest.py`` builds the ``sim`` and
``sim_factory`` fixtures on it); ``running_sim`` does the same for a private
simulator with extra settings in its ``ovirt-img.conf`` section (guest writes
must not disturb the shared one). ``SimProcess.stop`` asserts that no
qemu-nbd or ovirt-imageio process it started is left. The SDK helpers
(``vm_and_first_disk``, ``snapshot_ids``, ``engine_state``, ``vm_details``,
``remove_vm``) read or clean the simulator's engine state; ``live_transfers``
lists transfers that are not finished. ``engine_calls`` reads the simulator's
engine-call counter and ``counting_engine_calls`` gives the calls made inside
a ``with`` block (by method and path template, e.g. ``("GET", "/vms/{vm}")``).

Must not: import rhvfs client code (the simulator is the engine under test's stand-in).
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

READY_PREFIX = "rhvfs-sim ready: "
START_TIMEOUT_S = 90.0


def children(pid: int) -> list[int]:
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


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclasses.dataclass
class SimProcess:
    """A running ``rhvfs sim serve``: its state, client configuration and admin client."""

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
            helpers = [p for p in children(self.proc.pid) if alive(p)]
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
            while time.monotonic() < deadline and any(alive(p) for p in helpers):
                time.sleep(0.1)
            left = [f"{p}: {cmdline(p)}" for p in helpers if alive(p)]
            for p in helpers:
                if alive(p):
                    os.kill(p, signal.SIGKILL)
            assert not left, f"processes left after the simulator stopped: {left}"
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_sim(
    state_dir: Path, *, sample: bool = True, delay_s: float = 0.0, serve_args: Sequence[str] = ()
) -> SimProcess:
    """``rhvfs sim serve --port 0 [serve_args]`` on ``state_dir``, returned once it printed
    its ready line (``serve_args`` e.g. ``("--token-ttl", "3")``)."""
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
        *serve_args,
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


@contextlib.contextmanager
def running_sim(
    state_dir: Path, *, sample: bool = True, delay_s: float = 0.0, **settings: object
) -> Iterator[SimProcess]:
    """A private simulator with ``settings`` added to its config section; stopped at the end."""
    s = start_sim(state_dir, sample=sample, delay_s=delay_s)
    try:
        if settings:
            set_options(s.conf_file, s.section, **settings)
        yield s
    finally:
        s.stop()


def set_options(conf_file: Path, section: str, **settings: object) -> None:
    """Set ``settings`` (key = value) in ``section`` of an ``ovirt-img.conf``-style file."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(conf_file)
    for key, value in settings.items():
        parser[section][key] = str(value)
    with open(conf_file, "w") as f:
        parser.write(f)


def conf_without(sim: SimProcess, directory: Path, *keys: str) -> Path:
    """A copy (0600) of the simulator's ``ovirt-img.conf`` in ``directory`` without ``keys``
    in its section (e.g. ``cafile``: as before the engine's CA is known)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(sim.conf_file)
    for key in keys:
        parser.remove_option(sim.section, key)
    path = directory / "ovirt-img.conf"
    with open(path, "w") as f:
        parser.write(f)
    path.chmod(0o600)
    return path


def conf_with(sim: SimProcess, directory: Path, **settings: object) -> Path:
    """A copy of the simulator's ``ovirt-img.conf`` in ``directory`` with ``settings`` added."""
    path = directory / "ovirt-img.conf"
    path.write_bytes(sim.conf_file.read_bytes())
    set_options(path, sim.section, **settings)
    return path


# -- the simulator's engine state through the SDK ------------------------------------------


def vm_and_first_disk(sim: SimProcess, name: str) -> tuple[str, str]:
    """(vm id, id of its first attached disk) of the VM called ``name``."""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm_id = vms.list(search=f"name={name}")[0].id
        att = vms.vm_service(vm_id).disk_attachments_service().list()[0]
        return vm_id, att.disk.id
    finally:
        conn.close()


def snapshot_ids(sim: SimProcess, vm_name: str) -> list[str]:
    """Ids of the VM's snapshots (the active one included), sorted."""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        vm = vms.list(search=f"name={vm_name}")[0]
        return sorted(s.id for s in vms.vm_service(vm.id).snapshots_service().list())
    finally:
        conn.close()


def engine_calls(sim: SimProcess) -> dict[tuple[str, str], int]:
    """Engine requests since the simulator started (or its counter was reset), by
    (method, path template): API routes relative to the API root, e.g.
    ``("GET", "/vms/{vm}/nics")``; SSO by path; unrouted API paths as ``"(no route)"``."""
    calls: dict[tuple[str, str], int] = sim.admin.engine_calls()
    return calls


@dataclasses.dataclass
class EngineCalls:
    """Engine requests made inside a ``counting_engine_calls`` block (filled at its end)."""

    counts: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def of(self, method: str, path: str) -> int:
        return self.counts.get((method, path), 0)


@contextlib.contextmanager
def counting_engine_calls(sim: SimProcess) -> Iterator[EngineCalls]:
    """The engine calls made while the block runs (a difference of two counter readings,
    so it needs no reset and leaves the counter to others)."""
    before = engine_calls(sim)
    result = EngineCalls()
    yield result
    after = engine_calls(sim)
    result.counts = {
        key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)
    }


def live_transfers(sim: SimProcess) -> list[dict[str, Any]]:
    """The simulator's image transfers that are neither finished nor cancelled."""
    transfers: list[dict[str, Any]] = sim.admin.transfers()
    return [t for t in transfers if not str(t["phase"]).startswith(("finished", "cancelled"))]


def engine_state(sim: SimProcess) -> tuple[dict[str, str], set[str]]:
    """(vm id -> name, disk ids) of the whole engine."""
    conn = sim.sdk_connection()
    try:
        system = conn.system_service()
        vms = {v.id: v.name for v in system.vms_service().list()}
        disks = {d.id for d in system.disks_service().list()}
        return vms, disks
    finally:
        conn.close()


def vm_details(sim: SimProcess, name: str) -> dict[str, Any] | None:
    """The VM called ``name`` as a restore test compares it: status, cluster, disks, NICs."""
    conn = sim.sdk_connection()
    try:
        system = conn.system_service()
        found = system.vms_service().list(search=f"name={name}")
        found = [v for v in found if v.name == name]
        if not found:
            return None
        vm = found[0]
        service = system.vms_service().vm_service(vm.id)
        disks = []
        for att in service.disk_attachments_service().list():
            disk = system.disks_service().disk_service(att.disk.id).get()
            sd = (
                system.storage_domains_service()
                .storage_domain_service(disk.storage_domains[0].id)
                .get()
            )
            disks.append(
                {
                    "id": disk.id,
                    "alias": disk.alias,
                    "size": disk.provisioned_size,
                    "format": disk.format.value,
                    "interface": att.interface.value,
                    "bootable": bool(att.bootable),
                    "active": bool(att.active),
                    "sd": sd.name,
                }
            )
        nics = [(n.name, n.mac.address) for n in service.nics_service().list()]
        cluster = system.clusters_service().cluster_service(vm.cluster.id).get().name
        return {
            "id": vm.id,
            "status": vm.status.value,
            "cluster": cluster,
            "disks": sorted(disks, key=lambda d: d["alias"]),
            "nics": nics,
        }
    finally:
        conn.close()


def remove_vm(sim: SimProcess, name: str) -> None:
    """Stop (if needed) and remove every VM called ``name``."""
    conn = sim.sdk_connection()
    try:
        vms = conn.system_service().vms_service()
        for v in vms.list(search=f"name={name}"):
            if v.name != name:
                continue
            service = vms.vm_service(v.id)
            if v.status.value != "down":
                service.stop()
                deadline = time.monotonic() + 60
                while service.get().status.value != "down" and time.monotonic() < deadline:
                    time.sleep(0.2)
            service.remove()
    finally:
        conn.close()
