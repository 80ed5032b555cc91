"""Benchmark of backup reads through a real rhvfs mount of the simulator. Not a test.

In one run, against ``rhvfs sim serve`` (engine delays 0, the real
ovirt-imageio daemon, TLS), with ``--images`` VMs ``benchvm0..`` each holding
one qcow2 disk of ``--size-mib`` MiB of random data (written as the guest
would):

1. For each data-plane latency in ``--latencies`` (ms added per request by the
   simulator's ``--imageio-latency-ms``; default 0, 5 and 20) the simulator is
   restarted with that latency and benchvm0's image is read, every reader
   writing a file:

   - ``mount``: ``dd bs=1M`` of ``MNT/vms/benchvm0/@rhv/<image>``;
   - ``ovirt-img``: ``ovirt-img download-disk -f raw``;
   - ``curl x4``: 4 parallel ``curl`` range GETs of one download ticket
     (each a quarter of the image, to its own part file);
   - ``mount first MiB``: ``dd count=1`` of a new read, to ``/dev/null``: the
     snapshot and image transfer a mount read includes and curl's does not.

   Before every reader the page cache is dropped (``/proc/sys/vm/drop_caches``)
   and the simulator's volumes are read once, so every reader starts with the
   same cold output and warm storage.
2. Without latency: the ``--images`` images read through the mount at once
   (one ``dd`` each); total MB/s against the single-image mount reads. For
   reference, the same images read at once straight from the data plane
   (``curl x4`` on one ticket per image, all at once): what the machine and
   the imageio daemon give several images together. And one image, then all
   of them at once, read through the mount to ``/dev/null``: the same reads
   without gigabytes of new output files (page cache, writeback) competing
   for the machine. And the same single and parallel reads with ``dd
   iflag=direct``, which bypasses the mount's page cache. For each parallel
   mount read: when the first image was done, against the last (a fair share
   ends them together).
3. Peak RSS of the mount process (VmHWM) over all of it.
4. For each reader at the first latency: how busy the host's CPUs were while
   it ran (``/proc/stat``: everything, the data plane and the kernel included)
   and what that makes per GiB read. Near 100% busy, a reader is bound by the
   host, and its speed against another's is the inverse of their costs.
5. Where those CPU-seconds went, per GiB and per group of processes (user +
   system, the system part apart): the reader's own processes, the mount, the
   ``ovirt-imageio`` daemon, its ``qemu-nbd`` exports, the rest of the
   simulator, and the rest of the host's busy time (kernel threads such as
   writeback). A FUSE reader pays in its own process for the mount's page
   cache and the copy out of it, which curl does not.

Runs are repeated ``--repeat`` times; medians are printed with the targets
of issue 15 (ratios are computed inside one run, so a loaded machine slows
both sides alike).

Run as root: ``.venv/bin/python bench/bench_backup_read.py [--size-mib 1024]
[--repeat 3] [--latencies 0,5,20] [--images 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.sim import SimProcess, start_sim  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
RHVFS = [sys.executable, "-m", "rhvfs.cli"]
OVIRT_IMG = str(Path(sys.executable).parent / "ovirt-img")
_WRITE_STEP = 32 * MiB
CURL_STREAMS = 4
_CLK = os.sysconf("SC_CLK_TCK")


def sh(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kw)


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        print(f"(cannot drop caches: {e})")


def warm(paths: Sequence[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 * MiB):
                pass


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def host_cpu() -> tuple[int, int]:
    """Jiffies of all CPUs since boot: (total, idle + iowait), from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(v[:8]), v[3] + v[4]


class HostBusy:
    """How much of the host's CPU a span of time used (all processes, the kernel's too)."""

    def __init__(self) -> None:
        self._start = host_cpu()
        self.busy_s = 0.0  # after ``stop``: busy CPU-seconds of all CPUs together

    def stop(self) -> float:
        """The busy fraction since the start (time another guest of the hypervisor
        stole counts as busy: this guest could not use it)."""
        total, idle = (b - a for a, b in zip(self._start, host_cpu(), strict=True))
        self.busy_s = (total - idle) / _CLK
        return 1 - idle / max(1, total)


_GROUPS = ("reader", "mount", "imageio", "qemu-nbd", "engine sim", "rest")


def proc_cpu(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a live process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) / _CLK, int(fields[12]) / _CLK


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(x) for x in children.read_text().split())
    return found


class ProcessCpu:
    """CPU seconds (user, system) per group of processes over a span of time: the reader
    processes (``dd``, ``curl``, ``ovirt-img``: this process's waited children), the mount,
    the simulator's ``ovirt-imageio`` daemon and ``qemu-nbd`` exports, the rest of the
    simulator, and what is left of the host's busy time over the same span (``HostBusy``:
    kernel threads such as writeback, this benchmark). Processes are sampled every 0.1 s,
    so one that ends between samples loses at most its last 0.1 s."""

    def __init__(self, sim_pid: int, mount_pid: int) -> None:
        self._sim_pid, self._mount_pid = sim_pid, mount_pid
        self._first: dict[int, tuple[float, float]] = {}
        self._last: dict[int, tuple[str, float, float]] = {}
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._sample(first=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _group(self, pid: int) -> str | None:
        """The group of ``pid`` now (a child of the simulator may not have exec'd its
        program yet); None when it is gone."""
        if pid == self._mount_pid:
            return "mount"
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        return {"ovirt-imageio": "imageio", "qemu-nbd": "qemu-nbd"}.get(comm, "engine sim")

    def _sample(self, first: bool = False) -> None:
        for pid in [self._mount_pid, *descendants(self._sim_pid)]:
            cpu = proc_cpu(pid)
            if cpu is None:
                continue
            if first:
                self._first[pid] = cpu
            group = self._group(pid) or (self._last[pid][0] if pid in self._last else None)
            self._last[pid] = (group or "engine sim", *cpu)

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def stop(self, host_busy_s: float) -> dict[str, tuple[float, float]]:
        """(user, system) seconds per group (``_GROUPS``) since the start; ``host_busy_s``:
        the host's busy CPU-seconds over the span, whose unclaimed part is "rest"."""
        self._stop.set()
        self._thread.join()
        self._sample()
        used = {g: [0.0, 0.0] for g in _GROUPS}
        for pid, (group, user, system) in self._last.items():
            u0, s0 = self._first.get(pid, (0.0, 0.0))
            used[group][0] += user - u0
            used[group][1] += system - s0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        used["reader"] = [
            children.ru_utime - self._children.ru_utime,
            children.ru_stime - self._children.ru_stime,
        ]
        used["rest"] = [0.0, max(0.0, host_busy_s - sum(u + s for u, s in used.values()))]
        return {g: (u, s) for g, (u, s) in used.items()}


# -- the images ----------------------------------------------------------------------


def make_bench_vm(sim: SimProcess, name: str, size: int) -> str:
    """Create VM ``name`` with one qcow2 disk of ``size`` random bytes; return the disk id."""
    import ovirtsdk4.types as types

    conn = sim.sdk_connection()
    try:
        system = conn.system_service()
        vm = system.vms_service().add(
            types.Vm(
                name=name,
                cluster=types.Cluster(name="Default"),
                template=types.Template(name="Blank"),
            )
        )
        disks = system.disks_service()
        disk = disks.add(
            types.Disk(
                name=f"{name}-disk",
                format=types.DiskFormat.COW,
                provisioned_size=size,
                sparse=True,
                storage_domains=[types.StorageDomain(name="mydata")],
            )
        )
        disk_service = disks.disk_service(disk.id)
        deadline = time.monotonic() + 120
        while disk_service.get().status != types.DiskStatus.OK:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}-disk did not become ok")
            time.sleep(0.2)
        system.vms_service().vm_service(vm.id).disk_attachments_service().add(
            types.DiskAttachment(
                disk=types.Disk(id=disk.id),
                interface=types.DiskInterface.VIRTIO,
                bootable=False,
                active=True,
            )
        )
    finally:
        conn.close()
    for offset in range(0, size, _WRITE_STEP):
        sim.admin.guest_write(
            vm=name, disk=disk.id, offset=offset, data=os.urandom(min(_WRITE_STEP, size - offset))
        )
    return str(disk.id)


def disk_volume(sim: SimProcess, disk_id: str) -> Path:
    """Path of the disk's active volume in the simulator's storage."""
    conn = sim.sdk_connection()
    try:
        image_id = conn.system_service().disks_service().disk_service(disk_id).get().image_id
    finally:
        conn.close()
    (path,) = (sim.state_dir / "storage").glob(f"*/{disk_id}/{image_id}")
    return path


# -- readers -------------------------------------------------------------------------


class Mount:
    def __init__(self, sim: SimProcess, mnt: Path, state: Path) -> None:
        self.mnt = mnt
        mnt.mkdir(exist_ok=True)
        state.mkdir(exist_ok=True)
        sh(
            *RHVFS,
            "mount",
            "-c",
            sim.section,
            "--config-file",
            str(sim.conf_file),
            "--state-dir",
            str(state),
            "--grace-period",
            "1",
            # The bench reads one file of a set: end its session soon after.
            "--read-idle-limit",
            "2",
            str(mnt),
            timeout=120,
        )
        self.pid = int(self.status()["pid"])

    def status(self) -> dict[str, Any]:
        return json.loads((self.mnt / ".rhvfs/status.json").read_bytes())  # type: ignore[no-any-return]

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return -1

    def image(self, vm: str) -> Path:
        (image,) = [p for p in (self.mnt / "vms" / vm / "@rhv").iterdir() if p.suffix == ".raw"]
        return image

    def wait_idle(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            info = self.status()["sessions"]
            if not (info["sessions"] if isinstance(info, dict) else info):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("sessions did not end")
            time.sleep(0.2)

    def umount(self) -> None:
        subprocess.run([*RHVFS, "umount", str(self.mnt)], check=True, timeout=300)


def run_all(argvs: Sequence[Sequence[str]], env: dict[str, str] | None = None) -> list[float]:
    """Seconds from their common start until each of ``argvs`` ended; raises if one failed."""
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in argvs]
        procs = [
            subprocess.Popen(list(a), stdout=subprocess.DEVNULL, stderr=e, env=env)
            for a, e in zip(argvs, errs, strict=True)
        ]
        ended: dict[int, float] = {}
        while len(ended) < len(procs):
            for i, p in enumerate(procs):
                if i not in ended and p.poll() is not None:
                    ended[i] = time.monotonic() - start
            time.sleep(0.005)
        errors = []
        for argv, p, e in zip(argvs, procs, errs, strict=True):
            if p.returncode:
                e.seek(0)
                tail = e.read().decode(errors="replace")[-500:]
                errors.append(f"{argv[0]} exited {p.returncode}: {tail}")
    if errors:
        raise RuntimeError("; ".join(errors))
    return [ended[i] for i in range(len(procs))]


def dd(src: Path, dst: Path) -> list[str]:
    return ["dd", f"if={src}", f"of={dst}", "bs=1M"]


class Ticket:
    """A download transfer of one disk, for curl; finalized by ``close``."""

    def __init__(self, sim: SimProcess, disk_id: str) -> None:
        import ovirtsdk4.types as types

        self._conn = sim.sdk_connection()
        transfers = self._conn.system_service().image_transfers_service()
        transfer = transfers.add(
            types.ImageTransfer(
                disk=types.Disk(id=disk_id),
                direction=types.ImageTransferDirection.DOWNLOAD,
                format=types.DiskFormat.RAW,
            )
        )
        self._service = transfers.image_transfer_service(transfer.id)
        deadline = time.monotonic() + 60
        while transfer.phase == types.ImageTransferPhase.INITIALIZING:
            if time.monotonic() > deadline:
                raise RuntimeError("transfer did not start")
            time.sleep(0.2)
            transfer = self._service.get()
        if transfer.phase != types.ImageTransferPhase.TRANSFERRING:
            raise RuntimeError(f"transfer in phase {transfer.phase}")
        self.url = str(transfer.transfer_url)

    def close(self) -> None:
        import ovirtsdk4.types as types

        self._service.finalize()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            phase = self._service.get().phase
            if phase in (
                types.ImageTransferPhase.FINISHED_SUCCESS,
                types.ImageTransferPhase.FINISHED_FAILURE,
            ):
                break
            time.sleep(0.2)
        self._conn.close()


def curl_argvs(url: str, cafile: str, size: int, out: Path) -> list[list[str]]:
    step = -(-size // CURL_STREAMS)
    return [
        [
            "curl",
            "-sS",
            "--fail",
            "--cacert",
            cafile,
            "-r",
            f"{start}-{min(start + step, size) - 1}",
            "-o",
            f"{out}.{i}",
            url,
        ]
        for i, start in enumerate(range(0, size, step))
    ]


# -- one phase: a simulator with one data-plane latency ------------------------------


class Phase:
    """A simulator (``latency_ms`` per data-plane request) and a mount of it."""

    def __init__(self, state: Path, work: Path, latency_ms: int) -> None:
        args = ["--imageio-latency-ms", str(latency_ms)] if latency_ms else []
        self.sim = start_sim(state, sample=True, serve_args=args)
        self.work = work
        self.mount: Mount | None = None
        self.peak_rss = 0
        try:
            self.mount = Mount(self.sim, work / "mnt", work / "mntstate")
        except BaseException:
            self.sim.stop()
            raise

    def close(self) -> None:
        try:
            if self.mount is not None:
                self.peak_rss = self.mount.peak_rss()
                self.mount.umount()
        finally:
            self.sim.stop()


def prepare(mount: Mount, volumes: Sequence[Path], outs: Sequence[Path]) -> None:
    mount.wait_idle()
    for out in outs:
        for p in out.parent.glob(out.name + "*"):
            p.unlink()
    drop_caches()
    warm(volumes)


def run_phase(
    phase: Phase, disks: Sequence[str], volumes: Sequence[Path], size: int, *, parallel: bool
) -> tuple[
    dict[str, float],
    dict[str, float],
    dict[str, list[float]],
    dict[str, dict[str, tuple[float, float]]],
]:
    """Seconds per reader of one repetition in ``phase``, the host's busy
    fraction while each ran, when each process of each reader ended, and the
    CPU seconds (user, system) each group of processes used while it ran."""
    assert phase.mount is not None
    mount, sim, out = phase.mount, phase.sim, phase.work / "out.raw"
    env = dict(os.environ, XDG_CONFIG_HOME=str(sim.conf_file.parent))
    times: dict[str, float] = {}
    busy: dict[str, float] = {}
    ends: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, tuple[float, float]]] = {}

    def timed(name: str, argvs: Sequence[Sequence[str]], env: dict[str, str] | None = None) -> None:
        span = HostBusy()
        groups = ProcessCpu(sim.proc.pid, mount.pid)
        ends[name] = run_all(argvs, env)
        times[name] = max(ends[name])
        busy[name] = span.stop()
        cpu[name] = groups.stop(span.busy_s)

    prepare(mount, volumes[:1], [out])
    timed("mount", [dd(mount.image("benchvm0"), out)])

    prepare(mount, volumes[:1], [out])
    argv = [OVIRT_IMG, "download-disk", "-c", sim.section, "-f", "raw", disks[0], str(out)]
    timed("ovirt-img", [argv], env)

    # Time to the first MiB of a new read (its snapshot and image transfer included,
    # which the mount's figure above includes and curl's does not).
    prepare(mount, volumes[:1], [])
    timed("mount first MiB", [[*dd(mount.image("benchvm0"), Path("/dev/null")), "count=1"]])

    mount.wait_idle()
    ticket = Ticket(sim, disks[0])
    try:
        prepare(mount, volumes[:1], [out])
        timed("curl x4", curl_argvs(ticket.url, sim.cafile, size, out))
    finally:
        ticket.close()

    if parallel and len(disks) > 1:
        outs = [phase.work / f"out{i}.raw" for i in range(len(disks))]
        prepare(mount, volumes, outs)
        timed("mount parallel", [dd(mount.image(f"benchvm{i}"), o) for i, o in enumerate(outs)])
        # dd iflag=direct: the kernel copies each READ reply straight into dd's buffer
        # and the mount's page cache is not filled (the README's way to copy several
        # images at once).
        prepare(mount, volumes[:1], [out])
        timed("mount direct", [[*dd(mount.image("benchvm0"), out), "iflag=direct"]])
        prepare(mount, volumes, outs)
        timed(
            "mount parallel direct",
            [[*dd(mount.image(f"benchvm{i}"), o), "iflag=direct"] for i, o in enumerate(outs)],
        )
        # The same reads with the output thrown away: what the mount gives several
        # images when no reader also writes gigabytes of new files (page cache,
        # writeback) on the same two cores.
        prepare(mount, volumes[:1], [])
        timed("mount to null", [dd(mount.image("benchvm0"), Path("/dev/null"))])
        prepare(mount, volumes, [])
        timed(
            "mount parallel to null",
            [dd(mount.image(f"benchvm{i}"), Path("/dev/null")) for i in range(len(disks))],
        )
        mount.wait_idle()
        tickets: list[Ticket] = []
        try:
            for d in disks:
                tickets.append(Ticket(sim, d))
            prepare(mount, volumes, outs)
            timed(
                "curl parallel",
                [
                    argv
                    for t, o in zip(tickets, outs, strict=True)
                    for argv in curl_argvs(t.url, sim.cafile, size, o)
                ],
            )
        finally:
            for t in tickets:
                t.close()
    prepare(mount, [], [out, *(phase.work / f"out{i}.raw" for i in range(len(disks)))])
    return times, busy, ends, cpu


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="image size (default 1024)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latencies", default="0,5,20", help="ms per data-plane request")
    ap.add_argument("--images", type=int, default=3, help="images read in parallel")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    size = args.size_mib * MiB
    latencies = [int(x) for x in args.latencies.split(",") if x.strip()]
    print(f"load average at start: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rhvfs-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        state = work / "sim"
        t0 = time.monotonic()
        sim = start_sim(state, sample=True)
        try:
            disks = [make_bench_vm(sim, f"benchvm{i}", size) for i in range(max(1, args.images))]
            volumes = [disk_volume(sim, d) for d in disks]
        finally:
            sim.stop()
        print(
            f"{len(disks)} VMs with a {size / MiB:.0f} MiB qcow2 disk of random data "
            f"(prepared in {time.monotonic() - t0:.0f}s)",
            flush=True,
        )
        # results[latency][reader] = seconds per repetition; busy: the host's busy fraction
        results: dict[int, dict[str, list[float]]] = {lat: {} for lat in latencies}
        busy: dict[int, dict[str, list[float]]] = {lat: {} for lat in latencies}
        # fair[reader]: per repetition, when the first of the parallel images was done,
        # as a fraction of when the last one was (1.0: all ended together)
        fair: dict[str, list[float]] = {}
        # cpu_runs[reader]: per repetition at the first latency, CPU seconds per group
        cpu_runs: dict[str, list[dict[str, tuple[float, float]]]] = {}
        peak_rss = 0
        for rep in range(args.repeat):
            for lat in latencies:
                phase = Phase(state, work, lat)
                try:
                    times, busy_by, ends, cpu_by = run_phase(
                        phase, disks, volumes, size, parallel=lat == latencies[0] == 0
                    )
                finally:
                    phase.close()
                peak_rss = max(peak_rss, phase.peak_rss)
                for name, secs in times.items():
                    if lat == latencies[0]:
                        cpu_runs.setdefault(name, []).append(cpu_by[name])
                    results[lat].setdefault(name, []).append(secs)
                    busy[lat].setdefault(name, []).append(busy_by[name])
                    if name.startswith("mount parallel"):
                        fair.setdefault(name, []).append(min(ends[name]) / max(ends[name]))
                print(
                    f"  run {rep + 1} latency {lat:2d} ms: "
                    + ", ".join(f"{k} {v:.2f}s" for k, v in times.items())
                    + f"  (load {load_average()})",
                    flush=True,
                )

    def bytes_read(reader: str) -> int:
        return size * (len(disks) if " parallel" in reader else 1)

    mbs = {
        lat: {k: bytes_read(k) / median(v) / 1e6 for k, v in r.items() if k != "mount first MiB"}
        for lat, r in results.items()
    }
    print(f"\nreads of a {size / MiB:.0f} MiB image, MB/s (median of {args.repeat}):")
    print(
        f"  {'latency':>8s} {'mount':>8s} {'ovirt-img':>10s} {'curl x4':>8s}"
        f" {'mount/curl':>11s} {'mount/ovirt-img':>16s}"
    )
    for lat in latencies:
        m = mbs[lat]
        r = results[lat]
        ratio_curl = median([c / t for c, t in zip(r["curl x4"], r["mount"], strict=True)])
        ratio_img = median([c / t for c, t in zip(r["ovirt-img"], r["mount"], strict=True)])
        print(
            f"  {lat:6d}ms {m['mount']:8.0f} {m['ovirt-img']:10.0f} {m['curl x4']:8.0f}"
            f" {ratio_curl:10.2f}x {ratio_img:15.2f}x"
        )
    print("  targets: mount/curl >= 0.8, mount/ovirt-img >= 1.5 (no latency)")
    for lat in latencies:
        first = median(results[lat]["mount first MiB"])
        print(
            f"  mount with {lat} ms: first MiB of a new read after {first:.2f} s"
            " (snapshot and image transfer; included in the mount's time, not in curl's)"
        )
    if 0 in mbs:
        base = mbs[0]["mount"]
        for lat in latencies:
            if lat:
                target = 0.5 if lat <= 5 else 0.25
                print(
                    f"  mount with {lat} ms: {mbs[lat]['mount'] / base:.0%} of no-latency"
                    f"   target >= {target:.0%}"
                )
        if "mount parallel" in mbs[0]:
            par = mbs[0]["mount parallel"]
            print(
                f"  {len(disks)} images in parallel: {par:.0f} MB/s total ="
                f" {par / base:.2f}x one image   target >= 1.0"
            )
            for label, one_key, par_key in (
                (
                    "dd iflag=direct, no page cache on the mount",
                    "mount direct",
                    "mount parallel direct",
                ),
                ("output to /dev/null", "mount to null", "mount parallel to null"),
            ):
                if par_key in mbs[0]:
                    pk, ok = mbs[0][par_key], mbs[0][one_key]
                    print(
                        f"  ({label}: one image {ok:.0f} MB/s, {len(disks)} in parallel"
                        f" {pk:.0f} MB/s = {pk / ok:.2f}x, {pk / base:.2f}x one image read with dd)"
                    )
            if "curl parallel" in mbs[0]:
                cpar, cone = mbs[0]["curl parallel"], mbs[0]["curl x4"]
                print(
                    f"  (the data plane alone: {len(disks)} tickets by curl x4 at once"
                    f" {cpar:.0f} MB/s = {cpar / cone:.2f}x one ticket;"
                    f" mount parallel / curl parallel {par / cpar:.2f}x)"
                )
    for name, fractions in fair.items():
        print(
            f"  {name}: the first image done at {median(fractions):.0%} of the last one's time"
            f" (median; worst {min(fractions):.0%})"
        )
    print(f"  mount peak RSS: {peak_rss / MiB:.0f} MiB   target <= 300 MiB")
    # On a host whose cores also run the data plane (imageio, qemu-nbd) a reader near
    # 100% busy is bound by the CPU: there a ratio of speeds is the inverse ratio of
    # what each whole pipeline costs per GiB, the tool, the kernel and the data plane.
    ncpu, lat0 = os.cpu_count() or 1, latencies[0]
    print(
        f"host CPU while each reader ran, {lat0} ms latency ({ncpu} CPUs; median of {args.repeat}):"
    )
    for name, runs in results[lat0].items():
        if name == "mount first MiB":
            continue
        frac = median(busy[lat0][name])
        gib = bytes_read(name) / GiB
        cost = median([b * ncpu * t / gib for b, t in zip(busy[lat0][name], runs, strict=True)])
        print(f"  {name:24s} busy {frac:4.0%}   {cost:5.1f} CPU-seconds per GiB read")
    # Where those CPU-seconds went: per group of processes, user + system (the kernel's
    # share in brackets: page cache, copies, sockets, FUSE).
    print(f"CPU-seconds per GiB read by group, {lat0} ms latency (user+system [system]; median):")
    print("  " + " " * 24 + "".join(f"{g:>15s}" for g in _GROUPS))
    for name, samples in cpu_runs.items():
        if name == "mount first MiB":
            continue
        gib = bytes_read(name) / GiB
        cells = []
        for g in _GROUPS:
            total = median([sum(r[g]) / gib for r in samples])
            system = median([r[g][1] / gib for r in samples])
            cells.append(f"{total:6.2f} [{system:4.2f}]")
        print(f"  {name:24s}" + "".join(f"{c:>15s}" for c in cells))
    print(f"load average at end: {load_average()}")
    print(
        json.dumps(
            {
                "size": size,
                "seconds": {str(k): v for k, v in results.items()},
                "host_busy": {str(k): v for k, v in busy.items()},
                "peak_rss": peak_rss,
                "cpu_seconds": cpu_runs,
            }
        )
    )


if __name__ == "__main__":
    main()
