"""Benchmark of incremental sets against a private simulator (issue 5). Not a test.

A 4 GiB qcow2 disk with incremental backup is attached to the sample VM
``myvm0`` of a fresh simulator and filled with ``--data-mib`` of guest data.
Then:

1. a full set (``@rhv-incremental`` with no base) is read completely;
2. ``--changed-mib`` are written by the guest, in ``--chunk-kib`` pieces spread
   over the disk;
3. the incremental set is read completely.

Printed: dirty bytes (the engine's dirty extents), the delta file size and
its ratio to the dirty bytes (target <= 1.1), the bytes that went over HTTP
for the delta and their ratio, the read times of both sets, and a check that
the qemu-img chain equals the simulator's own sha256 of the disk.

Run: ``.venv/bin/python bench/bench_incremental.py [--size-gib 4] [--changed-mib 64]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rhvfs.config import load_config  # noqa: E402
from rhvfs.engine import open_engine  # noqa: E402
from rhvfs.retry import RetryPolicy  # noqa: E402
from rhvfs.sessions.core._journal import Journal  # noqa: E402
from rhvfs.sessions.core._model import Owner, SetEntry  # noqa: E402
from rhvfs.sessions.incremental._chainstate import ChainState  # noqa: E402
from rhvfs.sessions.incremental._manager import IncrementalManager  # noqa: E402
from tests.conftest import start_sim  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
VM = "myvm0"


async def read_set(
    manager: IncrementalManager, owner: Owner, out: Path
) -> tuple[float, list[SetEntry], dict[str, Any], list[dict[str, Any]]]:
    """Read every file of the set sequentially (1 MiB reads); (seconds, entries, manifest, disk stats)."""
    started = time.monotonic()
    entries = await manager.list_set(owner, "incremental")
    print(f"  listing (backup ready, transfers, extents): {time.monotonic() - started:.2f}s")
    for e in entries:
        h = await manager.open(owner, e.key)
        with open(out / e.name, "wb") as f:  # noqa: ASYNC230 - a benchmark, not served code
            pos = 0
            while data := await manager.read(h, pos, MiB):
                f.write(data)
                pos += len(data)
        await manager.release(h)
    seconds = time.monotonic() - started
    stats = manager.status()["sessions"][0]["disks"]
    while manager.status()["sessions"]:  # noqa: ASYNC110 - wait for the backup to end
        await trio.sleep(0.05)
    name = next(e.name for e in entries if e.name.startswith("manifest--"))
    return seconds, entries, json.loads((out / name).read_bytes()), stats


def chain_sha(top: Path) -> str:
    out = top.with_name(top.name + ".converted")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(top), str(out)], check=True)
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    out.unlink()
    return digest.hexdigest()


async def bench(args: argparse.Namespace, work: Path) -> None:
    sim = start_sim(work / "sim", sample=True, delay_s=0.0)
    try:
        config = load_config(
            section=sim.section,
            config_file=sim.conf_file,
            overrides={"grace_period": 0.2, "listing_ttl": 0.0},
        )
        poll = RetryPolicy.for_polling(interval_s=0.05, max_interval_s=0.25, timeout_s=600.0)
        async with open_engine(config, poll=poll) as engine:
            vm = await engine.find_vm(VM)
            assert vm is not None
            sd = (await engine.disk_attachments(vm.id))[0].disk.storage_domain_id
            sds = {s.id: s.name for s in await engine.list_storage_domains()}
            disk = await engine.create_disk(
                alias="bench",
                provisioned_size=args.size_gib * GiB,
                format="cow",
                sparse=True,
                storage_domain=sds[sd or ""],
                backup="incremental",
            )
            await engine.attach_disk(vm.id, disk.id)
            size = args.size_gib * GiB
            t0 = time.monotonic()
            step = size // max(1, args.data_mib // 16)
            for i in range(args.data_mib // 16):
                sim.admin.guest_write(
                    vm=VM, disk=disk.id, offset=i * step, size=16 * MiB, pattern=0x40 + i % 64
                )
            print(f"filled {args.data_mib} MiB of guest data in {time.monotonic() - t0:.1f}s")

            manager = IncrementalManager(
                engine,
                config,
                chain=ChainState(work / "state" / "chain.json"),
                journal=Journal(work / "state" / "journal.json"),
                cleanup_on_start=False,
            )
            out = work / "out"
            out.mkdir()
            async with trio.open_nursery() as nursery:
                await nursery.start(manager.run)
                owner = Owner("vm", vm.id, vm.name)
                full_s, full_entries, m0, _ = await read_set(manager, owner, out)
                full_bytes = sum(e.size for e in full_entries if e.disk_id == disk.id)

                chunk = args.chunk_kib * 1024
                pieces = args.changed_mib * MiB // chunk
                stride = (size // pieces) // (64 * 1024) * (64 * 1024)
                t0 = time.monotonic()
                for i in range(pieces):
                    sim.admin.guest_write(
                        vm=VM,
                        disk=disk.id,
                        offset=i * stride + 4096 * (i % 16),
                        size=chunk,
                        pattern=0x11 + i % 200,
                    )
                print(
                    f"wrote {args.changed_mib} MiB in {pieces} pieces of {args.chunk_kib} KiB in {time.monotonic() - t0:.1f}s"
                )

                inc_s, inc_entries, m1, stats = await read_set(manager, owner, out)
                nursery.cancel_scope.cancel()
            d = next(x for x in m1["disks"] if x["id"] == disk.id)
            delta = next(e for e in inc_entries if e.disk_id == disk.id)
            fetched = next(s for s in stats if s["disk_id"] == disk.id)["bytes_fetched"]
            dirty = d["dirty_bytes"]
            ok = chain_sha(out / delta.name) == sim.admin.disk_sha256(disk.id)
            print(f"disk {args.size_gib} GiB, changed {args.changed_mib} MiB written")
            print(f"full set read: {full_bytes / GiB:.2f} GiB image in {full_s:.2f}s")
            print(f"dirty bytes (engine): {dirty / MiB:.2f} MiB")
            print(f"delta file: {delta.size / MiB:.2f} MiB = {delta.size / dirty:.3f} x dirty")
            print(
                f"HTTP bytes for the delta: {fetched / MiB:.2f} MiB = {fetched / dirty:.3f} x dirty"
            )
            print(f"incremental set read: {inc_s:.2f}s = {inc_s / full_s:.3f} x the full read time")
            print(f"qemu-img chain equals the disk: {ok}")
            assert ok and m0["set_type"] == "full" and m1["set_type"] == "incremental"
    finally:
        sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=4)
    parser.add_argument("--data-mib", type=int, default=512, help="guest data before the full set")
    parser.add_argument("--changed-mib", type=int, default=64)
    parser.add_argument("--chunk-kib", type=int, default=1024, help="size of each changed piece")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rhvfs-bench-inc-") as tmp:
        trio.run(bench, args, Path(tmp))


if __name__ == "__main__":
    main()
