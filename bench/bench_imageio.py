"""Micro-benchmark of the bulk GET path against the real ovirt-imageio daemon. Not a test.

Serves a 1 GiB random raw image (file backend) through ``ovirt-imageio``
without and with TLS and reads it sequentially:

- through ``ImageReader`` (4 streams, 8 MiB chunks, 128 KiB reads like the
  kernel's) with the raw-socket bulk path and with the httpx bulk path;
- with ``ovirt_imageio.client.download(..., fmt="raw", max_workers=4)`` into a
  scratch file (the upstream reference), in the same run.

Then a 1 GiB mostly-empty qcow2 (qemu-nbd export, ~3 % allocated in scattered
extents) read through ``ImageReader``: HTTP bytes vs allocated bytes.

Run: ``.venv/bin/python bench/bench_imageio.py [--size-mib N] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rhvfs.cache import ImageReader  # noqa: E402
from rhvfs.imageio import BulkMode, open_imageio  # noqa: E402
from rhvfs.retry import RetryPolicy  # noqa: E402
from tests.component.test_imageio_client import Daemon, nbd_export, run_daemon  # noqa: E402

MiB = 1024 * 1024


async def read_with_reader(
    url: str,
    *,
    cafile: str | None,
    bulk: BulkMode,
    verify: bool,
    streams: int = 4,
    read_size: int = 128 * 1024,
) -> tuple[float, str, int, int]:
    """Sequential read through ImageReader; returns (seconds, sha256, bytes fetched, allocated).

    The checksum is computed only when ``verify`` (hashing costs this process as
    much CPU as the reads, so timed runs skip it).
    """
    async with open_imageio(url, cafile=cafile, bulk=bulk, connections=streams) as client:
        extents = await client.extents()
        size = await client.size()
        reader = ImageReader(
            client,
            size=size,
            extents=extents,
            memory_budget=128 * MiB,
            streams=streams,
            chunk_size=8 * MiB,
            retry=RetryPolicy(tries=3, interval_s=0.5, timeout_s=30),
        )
        allocated = sum(e.length for e in extents if not e.reads_as_zero)
        digest = hashlib.sha256()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await nursery.start(reader.run)
            pos = 0
            while pos < size:
                data = await reader.read(pos, read_size, handle_id=1)
                if verify:
                    digest.update(data)
                pos += len(data)
            await reader.aclose()
        elapsed = time.perf_counter() - start
        return elapsed, digest.hexdigest(), reader.statistics().bytes_fetched, allocated


async def read_direct(url: str, *, cafile: str | None, bulk: BulkMode, streams: int = 4) -> float:
    """``streams`` tasks doing 8 MiB ranged GETs into their own buffers: the client alone."""
    async with open_imageio(url, cafile=cafile, bulk=bulk, connections=streams) as client:
        size = await client.size()
        offsets = iter(range(0, size, 8 * MiB))

        async def worker() -> None:
            buf = bytearray(8 * MiB)
            for off in offsets:
                n = min(8 * MiB, size - off)
                await client.read_into(off, memoryview(buf)[:n])

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(worker)
        return time.perf_counter() - start


def upstream_download(url: str, *, cafile: str | None, scratch: Path) -> float:
    from ovirt_imageio import client

    dst = scratch / "download.raw"
    start = time.perf_counter()
    client.download(url, str(dst), cafile, fmt="raw", max_workers=4)
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def make_random_image(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(64 * MiB, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def make_sparse_qcow2(path: Path, size_mib: int) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"], check=True
    )
    cmds = []
    for i in range(0, size_mib, 8):  # every 8 MiB: 192 KiB of data at a shifting offset
        cmds += ["-c", f"write -P {i % 250 + 1} {i * MiB + (i * 4096) % MiB} 192k"]
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(path)], check=True, capture_output=True)
    return path


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def bench_daemon(
    d: Daemon, image: Path, size: int, want: str, scratch: Path, repeat: int, label: str
) -> None:
    url = d.add_ticket(url=f"file://{image}", size=size, ops=["read"])
    modes: tuple[BulkMode, ...] = ("raw", "httpx")
    for bulk in modes:
        _, got, fetched, _ = trio.run(
            functools.partial(read_with_reader, url, cafile=d.cafile, bulk=bulk, verify=True)
        )
        assert got == want, f"{bulk}: checksum mismatch"
        assert fetched == size
    best: dict[str, float] = {}

    def note(name: str, secs: float) -> None:
        best[name] = min(best.get(name, 1e9), secs)

    for _ in range(repeat):
        for bulk in modes:
            note(
                f"ImageReader bulk={bulk}",
                trio.run(
                    functools.partial(
                        read_with_reader, url, cafile=d.cafile, bulk=bulk, verify=False
                    )
                )[0],
            )
            note(
                f"client only, bulk={bulk}",
                trio.run(functools.partial(read_direct, url, cafile=d.cafile, bulk=bulk)),
            )
        note(
            "ovirt_imageio.client.download",
            upstream_download(url, cafile=d.cafile, scratch=scratch),
        )
    ref = mbps(size, best["ovirt_imageio.client.download"])
    print(f"\n== {label}: {size // MiB} MiB random raw image, best of {repeat}")
    for name, secs in best.items():
        rate = mbps(size, secs)
        print(f"  {name:34s} {rate:8.0f} MB/s   ratio vs download {rate / ref:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="bench-iio-") as tmp:
        scratch = Path(tmp)
        image = scratch / "random.raw"
        want = make_random_image(image, size)
        with run_daemon(tls=False) as d:
            bench_daemon(d, image, size, want, scratch, args.repeat, "no TLS")
        with run_daemon(tls=True) as d:
            bench_daemon(d, image, size, want, scratch, args.repeat, "TLS")
        image.unlink()

        qcow2 = make_sparse_qcow2(scratch / "sparse.qcow2", args.size_mib)
        ref = scratch / "sparse.raw"
        subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(ref)], check=True
        )
        want_sparse = hashlib.sha256(ref.read_bytes()).hexdigest()
        with run_daemon(tls=False) as d, nbd_export(qcow2, fmt="qcow2") as nbd_url:
            url = d.add_ticket(url=nbd_url, size=size, ops=["read"])
            elapsed, got, fetched, allocated = trio.run(
                functools.partial(read_with_reader, url, cafile=None, bulk="raw", verify=True)
            )
        assert got == want_sparse, "sparse: checksum mismatch"
        print(
            f"\n== mostly-empty qcow2 ({args.size_mib} MiB virtual, {allocated / MiB:.1f} MiB allocated), no TLS"
        )
        print(f"  HTTP bytes {fetched}  allocated {allocated}  ratio {fetched / allocated:.3f}")
        print(
            f"  read {args.size_mib} MiB in {elapsed:.2f} s ({mbps(size, elapsed):.0f} MB/s virtual)"
        )


if __name__ == "__main__":
    main()
