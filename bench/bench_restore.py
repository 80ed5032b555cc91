"""Restore upload throughput vs ``ovirt-img upload-disk``, and bytes PUT vs allocated bytes.

Runs everything itself: a fresh simulator (``rhvfs sim serve``), a real rhvfs
mount of it, and two images:

- ``random``: SIZE MiB of random data (throughput: ``cp --preserve=timestamps``,
  ``tar -xf`` and ``tar -b 2048 -xf`` of an archive of it into
  ``restore/<name>/`` until ``.status`` says done, VM created, against
  ``ovirt-img upload-disk`` of the same file to the same storage domain; the
  timestamps are what tells rhvfs the image is complete, as tar/cp -a/rsync do;
  ``--repeat`` rounds, medians of each round's ratio);
- ``sparse``: SIZE MiB, about 3 % data in scattered extents, the rest holes
  (``cp --sparse=always``: bytes PUT by the restore vs the image's allocated
  bytes).

Usage: ``.venv/bin/python bench/bench_restore.py [--size-mib 512] [--repeat 3] [--workdir DIR]``.
Prints one line per measurement and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

RHVFS = [sys.executable, "-m", "rhvfs.cli"]
MiB = 1024 * 1024
BIN = Path(sys.executable).parent


def start_sim(state: Path) -> subprocess.Popen[str]:
    state.mkdir(parents=True, exist_ok=True)
    argv = [*RHVFS, "sim", "serve", "--state-dir", str(state), "--port", "0", "--delay", "0"]
    proc = subprocess.Popen(
        [*argv, "--sample"],
        stdout=subprocess.PIPE,
        stderr=open(state / "serve.err", "wb"),
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("rhvfs-sim ready"):
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc


def make_images(work: Path, size: int) -> tuple[Path, Path]:
    rnd = random.Random(7)
    rand = work / "random.img"
    with open(rand, "wb") as f:
        for _ in range(size // MiB):
            f.write(rnd.randbytes(MiB))
    sparse = work / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            extent = rnd.choice([4096, 65536, 1 * MiB])
            f.seek(pos)
            f.write(rnd.randbytes(min(extent, size - pos)))
            pos += extent + rnd.randrange(16, 64) * MiB // 2
    return rand, sparse


def make_set(dir_: Path, name: str, image: Path) -> str:
    """manifest.json + vm.ovf of a one-disk VM whose image is ``image``; returns the file name."""
    vm_id, disk_id = str(uuid.uuid4()), str(uuid.uuid4())
    size = image.stat().st_size
    file_name = f"{name}_disk--{disk_id}.raw"
    manifest = {
        "format": "rhvfs-backup-set",
        "format_version": 1,
        "kind": "vm",
        "set_type": "full",
        "vm": {"id": vm_id, "name": name, "cluster": {"id": None, "name": "Default"}},
        "disks": [
            {
                "id": disk_id,
                "alias": f"{name}_disk",
                "file": file_name,
                "size": size,
                "format": "raw",
                "sparse": True,
                "interface": "virtio_scsi",
                "bootable": True,
                "active": True,
                "storage_domain": {"id": None, "name": "mydata"},
            }
        ],
        "nics": [],
    }
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "manifest.json").write_text(json.dumps(manifest))
    (dir_ / "vm.ovf").write_text(
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>{name}</Name>'
        f'<Section ovf:id="{vm_id}" xsi:type="ovf:OperatingSystemSection_Type">'
        "<Description>other_linux</Description></Section></Content></ovf:Envelope>\n"
    )
    return file_name


def wait_done(status_path: Path, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = json.loads(status_path.read_bytes())
        if status["settled"] or time.monotonic() > deadline:
            return status  # type: ignore[no-any-return]
        time.sleep(0.05)


def restore(mnt: Path, work: Path, name: str, image: Path, tool: list[str]) -> dict[str, Any]:
    """Restore ``image`` as the one disk of VM ``name`` with ``tool``: a ``cp`` command
    line (the image is its source, the set's file its target), or a ``tar -x`` one (it
    extracts an archive of the image, made first with ``tar -cf`` as a backup would be).
    The seconds count from the tool's start until ``.status`` says done."""
    set_dir = work / f"set-{name}"
    file_name = make_set(set_dir, name, image)
    target = mnt / "restore" / name
    target.mkdir()
    for cfg in ("vm.ovf", "manifest.json"):
        (target / cfg).write_bytes((set_dir / cfg).read_bytes())
    if tool[0] == "tar":
        archive = work / f"{name}.tar"
        subprocess.run(
            ["tar", "-cf", str(archive), "-C", str(image.parent),
             f"--transform=s,^{image.name}$,{file_name},", image.name],
            check=True,
        )  # fmt: skip
        argv = [*tool, str(archive), "-C", str(target)]
    else:
        argv = [*tool, str(image), str(target / file_name)]
    os.sync()  # the writeback of earlier uploads (and of the archive) stays out of the timing
    t0 = time.monotonic()
    subprocess.run(argv, check=True)
    t_copy = time.monotonic() - t0
    status = wait_done(target / ".status")
    t_done = time.monotonic() - t0
    if tool[0] == "tar":
        archive.unlink()
    if status["phase"] != "done":
        raise SystemExit(f"restore {name} failed: {status['error']}")
    disk = status["disks"][0]
    return {
        "copy_s": round(t_copy, 2),
        "done_s": round(t_done, 2),
        "bytes_put": disk["bytes_uploaded"],
        "put_requests": disk["put_requests"],
        "zero_requests": disk["zero_requests"],
    }


def ovirt_img_upload(state: Path, image: Path) -> float:
    env = dict(os.environ, XDG_CONFIG_HOME=str(state))
    argv = [str(BIN / "ovirt-img"), "upload-disk", "-c", "sim", "-s", "mydata", "-f", "raw"]
    os.sync()  # as before each restore
    t0 = time.monotonic()
    subprocess.run([*argv, str(image)], check=True, env=env, capture_output=True)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are printed)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    own_work = args.workdir is None  # a directory of our own goes when the bench ends
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-restore-"))
    work.mkdir(parents=True, exist_ok=True)
    state, mnt = work / "sim", work / "mnt"
    mnt.mkdir(exist_ok=True)
    sim = start_sim(state)
    mounted = False
    try:
        conf = state / "ovirt-img.conf"
        subprocess.run(
            [*RHVFS, "mount", "-c", "sim", "--config-file", str(conf), "--state-dir",
             str(work / "mstate"), str(mnt)],
            check=True, timeout=120,
        )  # fmt: skip
        mounted = True
        rand, sparse = make_images(work, size)
        mb = size / 1e6
        # One round: ovirt-img, then each tool, so a busy moment slows a whole round.
        tools = {
            "cp": ["cp", "--preserve=timestamps"],
            "tar -x": ["tar", "-xf"],
            "tar -b 2048 -x": ["tar", "-b", "2048", "-xf"],
        }
        secs: dict[str, list[float]] = {"ovirt-img": [], **{k: [] for k in tools}}
        puts = 0
        for rep in range(args.repeat):
            secs["ovirt-img"].append(ovirt_img_upload(state, rand))
            for i, (label, argv) in enumerate(tools.items()):
                ours = restore(mnt, work, f"bench-random-{rep}-{i}", rand, argv)
                secs[label].append(ours["done_s"])
                puts = ours["put_requests"]
            print(
                f"  run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in secs.items()),
                flush=True,
            )
        ref_s = statistics.median(secs["ovirt-img"])
        print(
            f"ovirt-img upload-disk {args.size_mib} MiB random: {ref_s:.2f} s,"
            f" {mb / ref_s:.0f} MB/s (median of {args.repeat})"
        )
        ratios = {}
        for label in tools:
            # the ratio of each round, then their median: rounds share the machine's moods
            ratios[label] = statistics.median(
                [r / t for r, t in zip(secs["ovirt-img"], secs[label], strict=True)]
            )
            t = statistics.median(secs[label])
            print(
                f"rhvfs restore ({label}) {args.size_mib} MiB random: VM done {t:.2f} s,"
                f" {mb / t:.0f} MB/s, {ratios[label]:.2f}x ovirt-img (target >= 1.2)"
            )
        print(f"  ({puts} PUTs per restore)")
        sp = restore(
            mnt, work, "bench-sparse", sparse, ["cp", "--sparse=always", "--preserve=timestamps"]
        )
        allocated = sparse.stat().st_blocks * 512
        print(
            f"mostly-empty {args.size_mib} MiB image: allocated {allocated} bytes, PUT "
            f"{sp['bytes_put']} bytes ({sp['bytes_put'] / allocated:.3f}x), "
            f"{sp['put_requests']} PUTs, {sp['zero_requests']} zero requests, done {sp['done_s']} s"
        )
        summary = {
            "size_mib": args.size_mib,
            "seconds": secs,
            "ratio_vs_ovirt_img": {k: round(v, 2) for k, v in ratios.items()},
            "sparse_allocated_bytes": allocated,
            "sparse_bytes_put": sp["bytes_put"],
            "put_vs_allocated": round(sp["bytes_put"] / allocated, 3),
        }
        print(json.dumps(summary))
    finally:
        if mounted:
            subprocess.run([*RHVFS, "umount", str(mnt)], check=False, timeout=300)
        sim.terminate()
        sim.wait(timeout=60)
        if own_work and not os.path.ismount(mnt):
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
