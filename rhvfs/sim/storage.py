"""Volumes of the simulator's storage domains, kept the way vdsm keeps file domains.

Owns the files under ``root/<sd_id>/<disk_id>/``: one file per volume named by
its volume id (raw or qcow2 v3; a qcow2 overlay names its parent by the
parent's volume id, relative, with ``-F``), and a ``<vol_id>.meta`` file per
volume recording its format, since a raw volume's guest data may look like any
format. All work on images goes through qemu-img and qemu-io, so qcow2 chains
and persistent dirty bitmaps behave exactly as on a host. Everything here is
private to the simulator's user: directories 0700, volumes and metadata 0600
(the qemu tools run with umask 077, ``_proc``).

It must not decide policy (which volume is active, whether a volume is in use by
a transfer): the engine does. It must not import anything from the client side
of rhvfs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rhvfs.sim import _proc

log = logging.getLogger(__name__)

Format = Literal["raw", "cow"]

_QEMU_FMT: dict[str, str] = {"raw": "raw", "cow": "qcow2"}
_HASH_CHUNK = 4 * 1024 * 1024
_IO_CHUNK = 32 * 1024 * 1024
_ZEROES = bytes(_HASH_CHUNK)
_META_SUFFIX = ".meta"


class StorageError(Exception):
    """A volume operation failed: missing volume, bad arguments, or a failed qemu tool."""


class VolumeNotFound(StorageError):
    """The volume (or its disk directory) does not exist."""


class ImageLockedError(StorageError):
    """Another process (typically a qemu-nbd export) holds the image lock of the volume."""


class BitmapError(StorageError):
    """A dirty bitmap is missing, in use, or inconsistent along the volume chain."""


@dataclass(frozen=True)
class VolumeInfo:
    """Sizes in bytes; ``fmt`` is "raw" or "cow"; ``backing_vol_id`` names the parent volume;
    ``sparse`` is False for volumes created preallocated."""

    virtual_size: int
    actual_size: int
    file_size: int
    fmt: Format
    backing_vol_id: str | None
    sparse: bool = True


@dataclass(frozen=True)
class EmptyVolume:
    """One volume for ``Storage.create_empty_volumes``: sparse, no parent, no data."""

    sd_id: str
    disk_id: str
    vol_id: str
    fmt: Format
    size: int


@dataclass(frozen=True)
class BitmapInfo:
    """A persistent qcow2 bitmap; ``granularity`` in bytes; ``enabled`` = qemu's "auto" flag."""

    name: str
    granularity: int
    enabled: bool
    in_use: bool


class Storage:
    """All storage domains of the simulator under one root directory.

    Thread safe: operations on one disk are serialized by a per-disk lock;
    different disks proceed in parallel.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        _proc.private_dir(self.root)
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._qemu_img = _proc.find_tool("qemu-img")
        self._qemu_io = _proc.find_tool("qemu-io")

    # --- paths and locking -------------------------------------------------

    def disk_dir(self, sd_id: str, disk_id: str) -> Path:
        return self.root / _safe(sd_id) / _safe(disk_id)

    def volume_path(self, sd_id: str, disk_id: str, vol_id: str) -> Path:
        return self.disk_dir(sd_id, disk_id) / _safe(vol_id)

    def _meta_path(self, sd_id: str, disk_id: str, vol_id: str) -> Path:
        return self.disk_dir(sd_id, disk_id) / (_safe(vol_id) + _META_SUFFIX)

    @contextmanager
    def _disk_lock(self, sd_id: str, disk_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault((sd_id, disk_id), threading.RLock())
        with lock:
            yield

    @contextmanager
    def _disk_change(self, sd_id: str, disk_id: str) -> Iterator[None]:
        """``_disk_lock`` for an operation that writes the disk's volumes: when it ends,
        every volume is written through (``_settle``), as vdsm's operations leave them."""
        with self._disk_lock(sd_id, disk_id):
            try:
                yield
            finally:
                self._settle(self.disk_dir(sd_id, disk_id))

    @staticmethod
    def _settle(disk_dir: Path) -> None:
        """fsync every file of a disk, so that its allocation (``st_blocks``, which the
        engine reports as ``actual_size``) is final when the operation returns. vdsm writes
        images with O_DIRECT (``qemu-img -t none``); the qemu tools here write through the
        page cache, and the filesystem would otherwise allocate (e.g. ext4's extent blocks)
        seconds later, changing a down VM's disk with no operation on it."""
        try:
            names = os.listdir(disk_dir)
        except FileNotFoundError:
            return
        for name in names:
            try:
                fd = os.open(disk_dir / name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # --- metadata ----------------------------------------------------------

    def _write_meta(
        self, sd_id: str, disk_id: str, vol_id: str, fmt: Format, *, sparse: bool
    ) -> None:
        path = self._meta_path(sd_id, disk_id, vol_id)
        tmp = path.with_name(path.name + ".tmp")
        kind = "SPARSE" if sparse else "PREALLOCATED"
        with os.fdopen(_proc.private_file(tmp), "w") as f:
            f.write(f"FORMAT={fmt.upper()}\nTYPE={kind}\nEOF\n")
        os.replace(tmp, path)

    def _read_meta(self, sd_id: str, disk_id: str, vol_id: str) -> dict[str, str]:
        path = self._meta_path(sd_id, disk_id, vol_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise VolumeNotFound(f"volume {sd_id}/{disk_id}/{vol_id} does not exist") from None
        meta = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                meta[key.strip()] = value.strip()
        return meta

    def volume_format(self, sd_id: str, disk_id: str, vol_id: str) -> Format:
        """The volume's format as recorded at creation ("raw" or "cow")."""
        value = self._read_meta(sd_id, disk_id, vol_id).get("FORMAT", "").lower()
        if value == "raw":
            return "raw"
        if value == "cow":
            return "cow"
        raise StorageError(f"volume {sd_id}/{disk_id}/{vol_id}: no valid FORMAT in its metadata")

    def volume_sparse(self, sd_id: str, disk_id: str, vol_id: str) -> bool:
        """False for volumes created preallocated (their growth is preallocated too)."""
        return self._read_meta(sd_id, disk_id, vol_id).get("TYPE", "SPARSE") != "PREALLOCATED"

    def _existing(self, sd_id: str, disk_id: str, vol_id: str) -> tuple[Path, Format]:
        fmt = self.volume_format(sd_id, disk_id, vol_id)
        path = self.volume_path(sd_id, disk_id, vol_id)
        if not path.exists():
            raise VolumeNotFound(f"volume {sd_id}/{disk_id}/{vol_id} does not exist")
        return path, fmt

    # --- running qemu tools ------------------------------------------------

    def _run(
        self, argv: list[str], *, cwd: Path | None = None, input: bytes | None = None
    ) -> bytes:
        try:
            return _proc.run(argv, cwd=cwd, input=input)
        except _proc.CommandFailed as e:
            if "lock" in e.stderr and (
                "Failed to get" in e.stderr or "another process" in e.stderr
            ):
                raise ImageLockedError(
                    f"image is in use by another process: {e.stderr.strip()}"
                ) from e
            raise StorageError(str(e)) from e

    def _info(self, path: Path, fmt: Format) -> dict[str, Any]:
        out = self._run(
            [self._qemu_img, "info", "--output=json", "-U", "-f", _QEMU_FMT[fmt], str(path)]
        )
        info: dict[str, Any] = json.loads(out)
        return info

    # --- volumes -----------------------------------------------------------

    def list_volumes(self, sd_id: str, disk_id: str) -> list[str]:
        """Ids of all volumes of a disk (any order); empty if the disk has none."""
        d = self.disk_dir(sd_id, disk_id)
        if not d.is_dir():
            return []
        return sorted(p.name[: -len(_META_SUFFIX)] for p in d.glob("*" + _META_SUFFIX))

    def volume_exists(self, sd_id: str, disk_id: str, vol_id: str) -> bool:
        return self._meta_path(sd_id, disk_id, vol_id).exists()

    def create_volume(
        self,
        sd_id: str,
        disk_id: str,
        vol_id: str,
        *,
        fmt: Format,
        size: int,
        parent_vol_id: str | None = None,
        sparse: bool = True,
        stale: bool = False,
    ) -> None:
        """Create a volume of ``size`` bytes (virtual).

        raw + sparse: an empty sparse file; raw + not sparse: fully allocated;
        cow: qcow2 v3 (preallocated metadata when not sparse); with a parent
        (cow only): an overlay naming the parent by its volume id. ``stale``
        (raw, not sparse: a new LV on a block domain): the volume starts with
        non-zero garbage, as an LV shows the old contents of its extents.
        """
        if fmt not in _QEMU_FMT:
            raise StorageError(f"unknown volume format {fmt!r}")
        if size < 0:
            raise StorageError(f"negative size {size}")
        with self._disk_change(sd_id, disk_id):
            if self.volume_exists(sd_id, disk_id, vol_id):
                raise StorageError(f"volume {sd_id}/{disk_id}/{vol_id} already exists")
            d = self.disk_dir(sd_id, disk_id)
            _proc.private_dir(d)
            path = self.volume_path(sd_id, disk_id, vol_id)
            argv = [self._qemu_img, "create", "-q", "-f", _QEMU_FMT[fmt]]
            if fmt == "raw":
                if parent_vol_id is not None:
                    raise StorageError("a raw volume cannot have a parent")
                if not sparse:
                    argv += ["-o", "preallocation=falloc"]
            else:
                opts = "compat=1.1"
                if not sparse and parent_vol_id is None:
                    opts += ",preallocation=metadata"
                argv += ["-o", opts]
                if parent_vol_id is not None:
                    _, parent_fmt = self._existing(sd_id, disk_id, parent_vol_id)
                    argv += ["-b", _safe(parent_vol_id), "-F", _QEMU_FMT[parent_fmt]]
            argv += [path.name, str(size)]
            self._run(argv, cwd=d)
            if stale and fmt == "raw" and not sparse:
                _fill_stale(path, size)
            self._write_meta(sd_id, disk_id, vol_id, fmt, sparse=sparse)
        log.info(
            "created volume %s/%s/%s fmt=%s size=%d parent=%s",
            sd_id,
            disk_id,
            vol_id,
            fmt,
            size,
            parent_vol_id,
        )

    def create_empty_volumes(self, volumes: Iterable[EmptyVolume]) -> None:
        """Create many empty base volumes cheaply (thousands per second).

        Each one is what ``create_volume`` (sparse, no parent) makes: a raw
        volume is a sparse file; a qcow2 volume is a sparse copy of the bytes
        ``qemu-img create`` wrote once per distinct size (its data clusters
        are all unallocated, so the copy is the same image). For seeding large
        inventories; a volume that already exists is an error.
        """
        templates: dict[int, list[tuple[int, bytes]]] = {}
        sizes: dict[int, int] = {}
        with tempfile.TemporaryDirectory(prefix=".empty-", dir=self.root) as tmp:
            for v in volumes:
                if v.fmt not in _QEMU_FMT:
                    raise StorageError(f"unknown volume format {v.fmt!r}")
                if v.size < 0:
                    raise StorageError(f"negative size {v.size}")
                blocks: list[tuple[int, bytes]] = []
                length = v.size
                if v.fmt == "cow":
                    if v.size not in templates:
                        path = Path(tmp) / str(v.size)
                        argv = [self._qemu_img, "create", "-q", "-f", "qcow2", "-o", "compat=1.1"]
                        self._run([*argv, str(path), str(v.size)])
                        templates[v.size], sizes[v.size] = _nonzero_blocks(path)
                    blocks, length = templates[v.size], sizes[v.size]
                with self._disk_change(v.sd_id, v.disk_id):
                    if self.volume_exists(v.sd_id, v.disk_id, v.vol_id):
                        raise StorageError(
                            f"volume {v.sd_id}/{v.disk_id}/{v.vol_id} already exists"
                        )
                    _proc.private_dir(self.disk_dir(v.sd_id, v.disk_id))
                    path = self.volume_path(v.sd_id, v.disk_id, v.vol_id)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        for offset, data in blocks:
                            os.pwrite(fd, data, offset)
                        os.ftruncate(fd, length)
                    finally:
                        os.close(fd)
                    self._write_meta(v.sd_id, v.disk_id, v.vol_id, v.fmt, sparse=True)

    def import_raw(
        self,
        sd_id: str,
        disk_id: str,
        vol_id: str,
        src: Path,
        *,
        fmt: Format,
        sparse: bool = True,
    ) -> None:
        """Create a base volume holding the bytes of the raw image ``src`` (holes stay holes)."""
        if fmt not in _QEMU_FMT:
            raise StorageError(f"unknown volume format {fmt!r}")
        with self._disk_change(sd_id, disk_id):
            if self.volume_exists(sd_id, disk_id, vol_id):
                raise StorageError(f"volume {sd_id}/{disk_id}/{vol_id} already exists")
            d = self.disk_dir(sd_id, disk_id)
            _proc.private_dir(d)
            path = self.volume_path(sd_id, disk_id, vol_id)
            argv = [self._qemu_img, "convert", "-q", "-f", "raw", "-O", _QEMU_FMT[fmt]]
            if fmt == "cow":
                argv += ["-o", "compat=1.1"]
            elif not sparse:
                argv += ["-S", "0", "-o", "preallocation=falloc"]
            argv += [str(src), str(path)]
            self._run(argv)
            self._write_meta(sd_id, disk_id, vol_id, fmt, sparse=sparse or fmt == "cow")
        log.info("imported %s into %s/%s/%s fmt=%s", src, sd_id, disk_id, vol_id, fmt)

    def delete_volume(self, sd_id: str, disk_id: str, vol_id: str) -> None:
        """Delete one volume (idempotent). Does not check for children."""
        with self._disk_lock(sd_id, disk_id):
            self.volume_path(sd_id, disk_id, vol_id).unlink(missing_ok=True)
            self._meta_path(sd_id, disk_id, vol_id).unlink(missing_ok=True)
        log.info("deleted volume %s/%s/%s", sd_id, disk_id, vol_id)

    def delete_disk(self, sd_id: str, disk_id: str) -> None:
        """Delete all volumes of a disk and its directory (idempotent)."""
        with self._disk_lock(sd_id, disk_id):
            shutil.rmtree(self.disk_dir(sd_id, disk_id), ignore_errors=True)
        log.info("deleted disk %s/%s", sd_id, disk_id)

    def volume_info(self, sd_id: str, disk_id: str, vol_id: str) -> VolumeInfo:
        with self._disk_lock(sd_id, disk_id):
            path, fmt = self._existing(sd_id, disk_id, vol_id)
            info = self._info(path, fmt)
            backing = info.get("backing-filename") if fmt == "cow" else None
            return VolumeInfo(
                virtual_size=int(info["virtual-size"]),
                actual_size=int(info.get("actual-size", 0)),
                file_size=path.stat().st_size,
                fmt=fmt,
                backing_vol_id=os.path.basename(backing) if backing else None,
                sparse=self.volume_sparse(sd_id, disk_id, vol_id),
            )

    def chain(self, sd_id: str, disk_id: str, vol_id: str) -> list[str]:
        """Volume ids from ``vol_id`` down to the base volume (``vol_id`` first)."""
        result = [vol_id]
        with self._disk_lock(sd_id, disk_id):
            while True:
                parent = self.volume_info(sd_id, disk_id, result[-1]).backing_vol_id
                if parent is None:
                    return result
                if parent in result:
                    raise StorageError(f"backing chain loop at {parent}")
                result.append(parent)

    def resize(self, sd_id: str, disk_id: str, vol_id: str, new_size: int) -> None:
        """Grow the volume's virtual size to ``new_size`` bytes (shrinking is refused)."""
        with self._disk_change(sd_id, disk_id):
            path, fmt = self._existing(sd_id, disk_id, vol_id)
            current = self.volume_info(sd_id, disk_id, vol_id).virtual_size
            if new_size < current:
                raise StorageError(f"cannot shrink {vol_id} from {current} to {new_size}")
            if new_size == current:
                return
            argv = [self._qemu_img, "resize", "-q", "-f", _QEMU_FMT[fmt]]
            if fmt == "raw" and not self.volume_sparse(sd_id, disk_id, vol_id):
                argv.append("--preallocation=falloc")
            self._run([*argv, str(path), str(new_size)])
        log.info("resized %s/%s/%s to %d", sd_id, disk_id, vol_id, new_size)

    # --- snapshots and merges ----------------------------------------------

    def snapshot(self, sd_id: str, disk_id: str, top_vol_id: str, new_vol_id: str) -> None:
        """Create a qcow2 overlay ``new_vol_id`` on ``top_vol_id``.

        The overlay gets empty bitmaps with the names, granularity and enabled
        state of every bitmap on ``top_vol_id``.
        """
        with self._disk_change(sd_id, disk_id):
            size = self.volume_info(sd_id, disk_id, top_vol_id).virtual_size
            bitmaps = self.list_bitmaps(sd_id, disk_id, top_vol_id)
            self.create_volume(
                sd_id, disk_id, new_vol_id, fmt="cow", size=size, parent_vol_id=top_vol_id
            )
            new_path = self.volume_path(sd_id, disk_id, new_vol_id)
            try:
                for bm in bitmaps:
                    argv = [self._qemu_img, "bitmap", "--add", "-g", str(bm.granularity)]
                    if not bm.enabled:
                        argv.append("--disable")
                    self._run([*argv, "-f", "qcow2", str(new_path), bm.name])
            except StorageError:
                self.delete_volume(sd_id, disk_id, new_vol_id)
                raise
        log.info(
            "snapshot %s/%s: %s -> %s (bitmaps: %s)",
            sd_id,
            disk_id,
            top_vol_id,
            new_vol_id,
            [b.name for b in bitmaps],
        )

    def merge(self, sd_id: str, disk_id: str, base_vol_id: str, top_vol_id: str) -> None:
        """Backward merge: commit ``top_vol_id`` into its parent ``base_vol_id`` and delete it.

        Bitmaps of the top are added to the base if missing and merged into it;
        children of the top are rebased (unsafe, same data) onto the base.
        """
        with self._disk_change(sd_id, disk_id):
            top_path, top_fmt = self._existing(sd_id, disk_id, top_vol_id)
            base_path, base_fmt = self._existing(sd_id, disk_id, base_vol_id)
            top_info = self.volume_info(sd_id, disk_id, top_vol_id)
            if top_info.backing_vol_id != base_vol_id:
                raise StorageError(
                    f"cannot merge {top_vol_id} into {base_vol_id}: "
                    f"its parent is {top_info.backing_vol_id}"
                )
            base_size = self.volume_info(sd_id, disk_id, base_vol_id).virtual_size
            if top_info.virtual_size > base_size:
                self.resize(sd_id, disk_id, base_vol_id, top_info.virtual_size)
            top_bitmaps = self.list_bitmaps(sd_id, disk_id, top_vol_id)
            children = [
                v
                for v in self.list_volumes(sd_id, disk_id)
                if v not in (top_vol_id, base_vol_id)
                and self.volume_info(sd_id, disk_id, v).backing_vol_id == top_vol_id
            ]

            self._run(
                [self._qemu_img, "commit", "-q", "-f", _QEMU_FMT[top_fmt], "-d", str(top_path)]
            )
            if base_fmt == "cow":
                base_bitmaps = {b.name for b in self.list_bitmaps(sd_id, disk_id, base_vol_id)}
                for bm in top_bitmaps:
                    if bm.name not in base_bitmaps:
                        argv = [self._qemu_img, "bitmap", "--add", "-g", str(bm.granularity)]
                        if not bm.enabled:
                            argv.append("--disable")
                        self._run([*argv, "-f", "qcow2", str(base_path), bm.name])
                    self._run(
                        [
                            self._qemu_img,
                            "bitmap",
                            "--merge",
                            bm.name,
                            "-b",
                            str(top_path),
                            "-F",
                            "qcow2",
                            "-f",
                            "qcow2",
                            str(base_path),
                            bm.name,
                        ]
                    )
            elif top_bitmaps:
                log.warning(
                    "merge %s/%s: raw base %s cannot keep bitmaps %s",
                    sd_id,
                    disk_id,
                    base_vol_id,
                    [b.name for b in top_bitmaps],
                )
            d = self.disk_dir(sd_id, disk_id)
            for child in children:
                self._run(
                    [
                        self._qemu_img,
                        "rebase",
                        "-q",
                        "-u",
                        "-f",
                        "qcow2",
                        "-b",
                        _safe(base_vol_id),
                        "-F",
                        _QEMU_FMT[base_fmt],
                        self.volume_path(sd_id, disk_id, child).name,
                    ],
                    cwd=d,
                )
            self.delete_volume(sd_id, disk_id, top_vol_id)
        log.info(
            "merged %s/%s: %s into %s (rebased %s)",
            sd_id,
            disk_id,
            top_vol_id,
            base_vol_id,
            children,
        )

    # --- bitmaps -----------------------------------------------------------

    def add_bitmap(
        self, sd_id: str, disk_id: str, vol_id: str, name: str, *, granularity: int | None = None
    ) -> None:
        """Add an enabled persistent bitmap ``name`` to a qcow2 volume."""
        with self._disk_change(sd_id, disk_id):
            path, fmt = self._existing(sd_id, disk_id, vol_id)
            if fmt != "cow":
                raise BitmapError(f"volume {vol_id} is raw: bitmaps need qcow2")
            argv = [self._qemu_img, "bitmap", "--add"]
            if granularity is not None:
                argv += ["-g", str(granularity)]
            try:
                self._run([*argv, "-f", "qcow2", str(path), name])
            except ImageLockedError:
                raise
            except StorageError as e:
                raise BitmapError(f"cannot add bitmap {name} to {vol_id}: {e}") from e
        log.info("added bitmap %s to %s/%s/%s", name, sd_id, disk_id, vol_id)

    def remove_bitmap(self, sd_id: str, disk_id: str, vol_id: str, name: str) -> None:
        """Remove bitmap ``name`` from a volume; a missing bitmap is not an error."""
        with self._disk_change(sd_id, disk_id):
            path, fmt = self._existing(sd_id, disk_id, vol_id)
            if fmt != "cow":
                return
            if name not in {b.name for b in self.list_bitmaps(sd_id, disk_id, vol_id)}:
                return
            self._run([self._qemu_img, "bitmap", "--remove", "-f", "qcow2", str(path), name])
        log.info("removed bitmap %s from %s/%s/%s", name, sd_id, disk_id, vol_id)

    def list_bitmaps(self, sd_id: str, disk_id: str, vol_id: str) -> list[BitmapInfo]:
        with self._disk_lock(sd_id, disk_id):
            path, fmt = self._existing(sd_id, disk_id, vol_id)
            if fmt != "cow":
                return []
            info = self._info(path, fmt)
        data = info.get("format-specific", {}).get("data", {})
        return [
            BitmapInfo(
                name=b["name"],
                granularity=int(b["granularity"]),
                enabled="auto" in b.get("flags", []),
                in_use="in-use" in b.get("flags", []),
            )
            for b in data.get("bitmaps", [])
        ]

    # --- guest I/O ---------------------------------------------------------

    def guest_write(
        self,
        sd_id: str,
        disk_id: str,
        vol_id: str,
        *,
        offset: int,
        data: bytes | None = None,
        pattern: int | None = None,
        size: int | None = None,
    ) -> None:
        """Write as the guest would, with qemu-io on the (active) volume ``vol_id``.

        Exactly one of ``data`` (bytes to write) or ``pattern`` (a byte value,
        with ``size``) must be given; ``pattern=0`` writes zeroes (``write -z``),
        which enabled bitmaps record as dirty. Raises ``ImageLockedError`` if a
        qemu-nbd export holds the volume.
        """
        if (data is None) == (pattern is None):
            raise StorageError("guest_write needs exactly one of data or pattern")
        if offset < 0:
            raise StorageError(f"negative offset {offset}")
        with self._disk_change(sd_id, disk_id):
            path, fmt = self._existing(sd_id, disk_id, vol_id)
            vsize = self.volume_info(sd_id, disk_id, vol_id).virtual_size
            length = len(data) if data is not None else size
            if length is None or length <= 0:
                raise StorageError("guest_write needs a positive size")
            if offset + length > vsize:
                raise StorageError(
                    f"write {offset}+{length} beyond the end of {vol_id} ({vsize} bytes)"
                )
            if pattern is not None and not 0 <= pattern <= 255:
                raise StorageError(f"pattern {pattern} is not a byte value")
            # qemu-io splits commands on whitespace, so the data file must not
            # live under a path with spaces.
            tmp_parent = None if any(c.isspace() for c in str(self.root)) else self.root
            with tempfile.TemporaryDirectory(dir=tmp_parent, prefix=".guest-write-") as tmp:
                cmds: list[str] = []
                # qemu-io allocates a buffer per command: keep each one bounded.
                for start in range(0, length, _IO_CHUNK):
                    n = min(_IO_CHUNK, length - start)
                    off = offset + start
                    if data is not None:
                        src = Path(tmp) / f"data-{start}"
                        src.write_bytes(data[start : start + n])
                        cmds.append(f"write -q -s {src} {off} {n}")
                    elif pattern == 0:
                        cmds.append(f"write -q -z {off} {n}")
                    else:
                        cmds.append(f"write -q -P {pattern} {off} {n}")
                argv = [self._qemu_io, "-f", _QEMU_FMT[fmt]]
                for cmd in cmds:
                    argv += ["-c", cmd]
                out = self._run([*argv, str(path)])
            # Old qemu-io versions report command errors on stdout and exit 0.
            text = out.decode(errors="replace")
            if "error" in text.lower() or "failed" in text.lower():
                raise StorageError(f"qemu-io write on {vol_id}: {text.strip()}")
        log.info("guest write %s/%s/%s offset=%d size=%d", sd_id, disk_id, vol_id, offset, length)

    def content_sha256(self, sd_id: str, disk_id: str, vol_id: str) -> str:
        """sha256 hex of the guest-visible bytes of the chain ending at ``vol_id``."""
        with self._disk_lock(sd_id, disk_id):
            path, fmt = self._existing(sd_id, disk_id, vol_id)
            if fmt == "raw":
                return _sha256_sparse(path)
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".sha256-") as tmp:
                flat = Path(tmp) / "flat.raw"
                self._run(
                    [
                        self._qemu_img,
                        "convert",
                        "-q",
                        "-U",
                        "-f",
                        "qcow2",
                        "-O",
                        "raw",
                        str(path),
                        str(flat),
                    ]
                )
                return _sha256_sparse(flat)

    # --- dirty overlay for incremental backup ------------------------------

    def prepare_dirty_overlay(
        self, sd_id: str, disk_id: str, vol_id: str, checkpoint: str, workdir: Path
    ) -> Path:
        """Create a temporary qcow2 overlay on ``vol_id`` holding bitmap ``checkpoint``.

        The bitmap is merged from every volume of the chain that has it; it must
        be present on ``vol_id`` and on a contiguous run of volumes below it,
        enabled and not in use. Raises ``BitmapError`` otherwise. The caller deletes the
        overlay file (once qemu-nbd has opened it, or on unexport).
        """
        with self._disk_lock(sd_id, disk_id):
            vol_path, vol_fmt = self._existing(sd_id, disk_id, vol_id)
            chain = self.chain(sd_id, disk_id, vol_id)
            run: list[tuple[str, BitmapInfo]] = []
            ended = False
            for v in chain:
                found = {b.name: b for b in self.list_bitmaps(sd_id, disk_id, v)}.get(checkpoint)
                if found is None:
                    ended = True
                    continue
                if ended:
                    raise BitmapError(
                        f"bitmap {checkpoint} has a gap in the chain of {vol_id} (present on {v})"
                    )
                if found.in_use:
                    raise BitmapError(f"bitmap {checkpoint} on {v} is in use (inconsistent)")
                if not found.enabled:
                    raise BitmapError(f"bitmap {checkpoint} on {v} is disabled")
                run.append((v, found))
            if not run:
                raise BitmapError(f"bitmap {checkpoint} is missing on volume {vol_id}")

            _proc.private_dir(workdir)
            overlay = workdir / f"{vol_id}.dirty-{uuid.uuid4().hex[:8]}.qcow2"
            granularity = run[0][1].granularity
            try:
                self._run(
                    [
                        self._qemu_img,
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        "compat=1.1",
                        "-b",
                        str(vol_path.resolve()),
                        "-F",
                        _QEMU_FMT[vol_fmt],
                        str(overlay),
                    ]
                )
                self._run(
                    [
                        self._qemu_img,
                        "bitmap",
                        "--add",
                        "--disable",
                        "-g",
                        str(granularity),
                        "-f",
                        "qcow2",
                        str(overlay),
                        checkpoint,
                    ]
                )
                for v, _ in run:
                    self._run(
                        [
                            self._qemu_img,
                            "bitmap",
                            "--merge",
                            checkpoint,
                            "-b",
                            str(self.volume_path(sd_id, disk_id, v)),
                            "-F",
                            "qcow2",
                            "-f",
                            "qcow2",
                            str(overlay),
                            checkpoint,
                        ]
                    )
            except BaseException:
                overlay.unlink(missing_ok=True)
                raise
        log.info(
            "dirty overlay %s for %s/%s/%s checkpoint %s over %s",
            overlay,
            sd_id,
            disk_id,
            vol_id,
            checkpoint,
            [v for v, _ in run],
        )
        return overlay


#: What a new "LV" of a block domain holds before anything is written (never zero).
STALE_PATTERN = b"old LV extent data "


def _fill_stale(path: Path, size: int) -> None:
    """Fill ``path`` with ``STALE_PATTERN`` (a new LV's leftover contents)."""
    chunk = (STALE_PATTERN * (_IO_CHUNK // len(STALE_PATTERN) + 1))[:_IO_CHUNK]
    with open(path, "r+b") as f:
        for pos in range(0, size, _IO_CHUNK):
            f.write(chunk[: min(_IO_CHUNK, size - pos)])


def _safe(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise StorageError(f"invalid id {name!r}")
    return name


def _sha256_sparse(path: Path) -> str:
    """sha256 of a file's bytes, skipping reads of holes (hashed as zeroes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data_start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data_start = size  # ENXIO: only a hole remains
            _hash_zeroes(h, data_start - pos)
            if data_start >= size:
                break
            hole_start = os.lseek(fd, data_start, os.SEEK_HOLE)
            f.seek(data_start)
            remaining = hole_start - data_start
            while remaining:
                chunk = f.read(min(_HASH_CHUNK, remaining))
                if not chunk:
                    raise StorageError(f"{path}: short read")
                h.update(chunk)
                remaining -= len(chunk)
            pos = hole_start
    return h.hexdigest()


def _hash_zeroes(h: Any, count: int) -> None:
    view = memoryview(_ZEROES)
    while count > 0:
        n = min(count, _HASH_CHUNK)
        h.update(view[:n])
        count -= n


_BLOCK = 4096


def _nonzero_blocks(path: Path) -> tuple[list[tuple[int, bytes]], int]:
    """(offset, bytes) of every 4 KiB block of a file that is not all zeroes, and its length."""
    data = path.read_bytes()
    zero = bytes(_BLOCK)
    blocks = [
        (off, data[off : off + _BLOCK])
        for off in range(0, len(data), _BLOCK)
        if data[off : off + _BLOCK] != zero[: len(data[off : off + _BLOCK])]
    ]
    return blocks, len(data)
