"""Benchmark of backup reads through a real rhvfs mount of the simulator. Not a test.

In one run, against one ``rhvfs sim serve`` (engine delays 0, the real
ovirt-imageio daemon, TLS):

1. A VM ``benchvm`` with a raw disk of ``--size-gib`` GiB, filled with data
   (guest writes) except its last 8 MiB. Its image is read sequentially
   through ``MNT/vms/benchvm/@rhv/<image>`` (``dd bs=1M`` to /dev/null and to
   a file) and downloaded with ``ovirt-img download-disk -f raw`` (to a file).
   Before every timed run the page cache is dropped and the simulator's volume
   read once, so both sides start equal. Prints times, MB/s and the ratio
   ovirt-img time / rhvfs time (target >= 1.2).
2. A mostly-empty sample disk (``myvm0``): bytes rhvfs fetched over HTTP
   (status.json) vs the volume's allocated bytes (``qemu-img map``); target <= 1.05.
3. Peak RSS of the rhvfs mount process (VmHWM); target <= 300 MiB.
4. For reference, the same image read through ``BackupManager`` in this process
   (128 KiB reads, no FUSE): what the sessions, cache and imageio layers cost.

Run as root: ``.venv/bin/python bench/bench_backup_read.py [--size-gib 2] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import SimProcess, start_sim  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
RHVFS = [sys.executable, "-m", "rhvfs.cli"]


def sh(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kw)


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        print(f"(cannot drop caches: {e})")


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def make_bench_vm(sim: SimProcess, size: int) -> tuple[str, str]:
    """Create benchvm with one raw disk filled with data; return (vm id, disk id)."""
    import ovirtsdk4.types as types

    conn = sim.sdk_connection()
    try:
        system = conn.system_service()
        vm = system.vms_service().add(
            types.Vm(
                name="benchvm",
                cluster=types.Cluster(name="Default"),
                template=types.Template(name="Blank"),
            )
        )
        disks = system.disks_service()
        disk = disks.add(
            types.Disk(
                name="benchdisk",
                format=types.DiskFormat.RAW,
                provisioned_size=size,
                sparse=True,
                storage_domains=[types.StorageDomain(name="mydata")],
            )
        )
        disk_service = disks.disk_service(disk.id)
        deadline = time.monotonic() + 120
        while disk_service.get().status != types.DiskStatus.OK:
            if time.monotonic() > deadline:
                raise RuntimeError("benchdisk did not become ok")
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
    step = 256 * MiB
    end = size - 8 * MiB
    for i, offset in enumerate(range(0, end, step)):
        sim.admin.guest_write(
            vm="benchvm",
            disk=disk.id,
            offset=offset,
            size=min(step, end - offset),
            pattern=(i % 250) + 1,
        )
    return vm.id, disk.id


def disk_volume(sim: SimProcess, disk_id: str) -> tuple[Path, int]:
    """Path of the disk's active volume in the simulator's storage, and its allocated bytes."""
    conn = sim.sdk_connection()
    try:
        disk = conn.system_service().disks_service().disk_service(disk_id).get()
        image_id = disk.image_id
    finally:
        conn.close()
    (path,) = (sim.state_dir / "storage").glob(f"*/{disk_id}/{image_id}")
    fmt = json.loads(sh("qemu-img", "info", "--output=json", str(path)).stdout)["format"]
    extents = json.loads(sh("qemu-img", "map", "--output=json", "-f", fmt, str(path)).stdout)
    allocated = sum(e["length"] for e in extents if e.get("data"))
    return path, allocated


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

    def sessions(self) -> list[dict[str, Any]]:
        info = self.status()["sessions"]
        return list(info["sessions"] if isinstance(info, dict) else info)

    def wait_idle(self) -> None:
        deadline = time.monotonic() + 60
        while self.sessions():
            if time.monotonic() > deadline:
                raise RuntimeError("session did not end")
            time.sleep(0.2)

    def umount(self) -> None:
        subprocess.run([*RHVFS, "umount", str(self.mnt)], check=True, timeout=300)


def read_in_process(sim: SimProcess, journal_dir: Path, read_size: int = 128 * 1024) -> float:
    """Seconds to read benchvm's image through BackupManager directly (no FUSE), like the kernel."""
    import trio

    from rhvfs.config import load_config
    from rhvfs.engine import open_engine
    from rhvfs.sessions import BackupManager, Journal, Owner

    async def run() -> float:
        cfg = load_config(
            section=sim.section, config_file=sim.conf_file, overrides={"grace_period": 0.1}
        )
        async with open_engine(cfg) as engine:
            manager = BackupManager(
                engine, cfg, journal=Journal(journal_dir / "j.json"), gc_on_start=False
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(manager.run)
                vm = await engine.find_vm("benchvm")
                assert vm is not None
                owner = Owner("vm", vm.id, vm.name)
                entry = next(e for e in await manager.list_set(owner) if e.disk_id)
                start = time.monotonic()
                handle = await manager.open(owner, entry.key)
                offset = 0
                while data := await manager.read(handle, offset, read_size):
                    offset += len(data)
                elapsed = time.monotonic() - start
                assert offset == entry.size
                await manager.release(handle)
                nursery.cancel_scope.cancel()
        return elapsed

    return trio.run(run)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    size = int(args.size_gib * GiB)
    with tempfile.TemporaryDirectory(prefix="rhvfs-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        print(f"starting the simulator in {work} ...", flush=True)
        sim = start_sim(work / "sim")
        mount: Mount | None = None
        try:
            t0 = time.monotonic()
            _, disk_id = make_bench_vm(sim, size)
            volume, allocated = disk_volume(sim, disk_id)
            print(
                f"benchvm: {size / GiB:.1f} GiB raw disk, {allocated / MiB:.0f} MiB allocated (prepared in {time.monotonic() - t0:.1f}s)"
            )
            mount = Mount(sim, work / "mnt", work / "state")
            set_dir = mount.mnt / "vms" / "benchvm" / "@rhv"
            (image,) = [p for p in set_dir.iterdir() if p.suffix == ".raw"]
            env = dict(os.environ, XDG_CONFIG_HOME=str(sim.conf_file.parent))
            out = work / "out.raw"
            results: dict[str, list[float]] = {
                "rhvfs dd -> /dev/null": [],
                "rhvfs dd -> file": [],
                "ovirt-img download-disk -> file": [],
                "sessions in-process (no FUSE)": [],
            }
            for _ in range(args.repeat):
                for name, argv in (
                    ("rhvfs dd -> /dev/null", ["dd", f"if={image}", "of=/dev/null", "bs=1M"]),
                    ("rhvfs dd -> file", ["dd", f"if={image}", f"of={out}", "bs=1M"]),
                    (
                        "ovirt-img download-disk -> file",
                        [
                            str(Path(sys.executable).parent / "ovirt-img"),
                            "download-disk",
                            "-c",
                            sim.section,
                            "-f",
                            "raw",
                            disk_id,
                            str(out),
                        ],
                    ),
                ):
                    mount.wait_idle()
                    out.unlink(missing_ok=True)
                    drop_caches()
                    warm(volume)
                    results[name].append(timed(argv, env))
                mount.wait_idle()
                drop_caches()
                warm(volume)
                results["sessions in-process (no FUSE)"].append(read_in_process(sim, work))
            out.unlink(missing_ok=True)
            print(f"\nsequential read of {size / GiB:.1f} GiB (best of {args.repeat}):")
            best = {k: min(v) for k, v in results.items()}
            for name, secs in best.items():
                print(
                    f"  {name:34s} {secs:7.2f} s  {size / secs / 1e6:7.0f} MB/s   runs: {', '.join(f'{s:.2f}' for s in results[name])}"
                )
            ratio_file = best["ovirt-img download-disk -> file"] / best["rhvfs dd -> file"]
            ratio_null = best["ovirt-img download-disk -> file"] / best["rhvfs dd -> /dev/null"]
            print(
                f"  ratio ovirt-img / rhvfs: {ratio_file:.2f}x (both to a file), {ratio_null:.2f}x (rhvfs to /dev/null)   target >= 1.2"
            )

            mount.wait_idle()
            sample_dir = mount.mnt / "vms" / "myvm0" / "@rhv"
            manifest = json.loads((sample_dir / "manifest.json").read_bytes())
            d = manifest["disks"][0]
            _, sparse_alloc = disk_volume(sim, d["id"])
            with open(sample_dir / d["file"], "rb") as f:
                while f.read(4 * MiB):
                    pass
                sessions = mount.sessions()
            fetched = sum(
                x.get("bytes_fetched") or 0
                for s in sessions
                if s["owner"]["name"] == "myvm0"
                for x in s["disks"]
            )
            print(
                f"\nmostly-empty disk ({d['size'] / MiB:.0f} MiB, {sparse_alloc / MiB:.2f} MiB allocated):"
            )
            print(
                f"  fetched over HTTP {fetched / MiB:.2f} MiB -> {fetched / max(sparse_alloc, 1):.3f}x allocated   target <= 1.05"
            )
            print(f"\nrhvfs peak RSS: {mount.peak_rss() / MiB:.0f} MiB   target <= 300 MiB")
        finally:
            if mount is not None:
                mount.umount()
            sim.stop()


if __name__ == "__main__":
    main()
