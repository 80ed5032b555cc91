"""Synthesize a qcow2 v3 delta image on the fly, and parse the ones we wrote.

Owns: the byte layout of an incremental/differential delta file — header with a
relative backing file name and ``backing_fmt`` extension, refcount table and
blocks, L1 and L2 tables (metadata, all kept in memory or built on demand),
then the data clusters of changed guest ranges in ascending guest order.
Changed zero ranges become L2 entries with the "reads as zero" flag so they
override the backing file; unchanged clusters stay unallocated and fall
through to the backing file. Also owns :func:`read_allocation`, the parser the
restore side uses to apply such a delta onto its backing image.

Must not: talk to imageio or the engine (guest bytes come from the caller's
``fetch_data``), know about sessions, inodes or FUSE.

Layout (every region cluster aligned, file clusters numbered from 0)::

    [header + extensions + backing name][refcount table][refcount blocks]
    [L1 table][L2 tables, ascending L1 index][data clusters, ascending guest]

Every allocated cluster has refcount 1, so L1/L2 entries carry the COPIED flag.
Format reference: qemu docs/interop/qcow2.txt.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Literal

from rhvfs.intervals import Intervals

__all__ = [
    "CLUSTER_SIZE",
    "Change",
    "Qcow2Delta",
    "Qcow2Header",
    "Allocation",
    "Qcow2FormatError",
    "Qcow2Truncated",
    "FetchData",
    "ReadAt",
    "read_header",
    "iter_allocation",
    "read_allocation",
    "apply_allocation",
]

#: Default cluster size of delta images, bytes (qemu's and oVirt's default).
CLUSTER_SIZE = 65536

MAGIC = b"QFI\xfb"
VERSION = 3
HEADER_LENGTH = 104  # v3 header without the optional compression-type byte
REFCOUNT_ORDER = 4  # 16-bit refcounts, what qemu-img create uses
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
MAX_BACKING_NAME_BYTES = 1023  # qcow2.txt: "must not be longer than 1023 bytes"

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55

#: ``await fetch_data(guest_offset, length)`` -> exactly ``length`` guest bytes.
FetchData = Callable[[int, int], Awaitable[bytes]]
#: ``read_at(file_offset, length)`` -> bytes (short only at end of file).
ReadAt = Callable[[int, int], bytes]

Kind = Literal["data", "zero"]


class Qcow2FormatError(ValueError):
    """Raised by the parser when a file is not a qcow2 image this module can read
    (bad magic, unsupported version or feature, compressed or encrypted clusters,
    truncated tables, sizes or offsets out of bounds). The message says which."""


class Qcow2Truncated(Qcow2FormatError):
    """Raised by the parser when the file ends before a table or cluster it names."""


@dataclasses.dataclass(frozen=True)
class Change:
    """A changed guest range, bytes: ``zero`` means it now reads as zeroes."""

    start: int
    length: int
    zero: bool = False

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclasses.dataclass(frozen=True)
class Allocation:
    """A guest range [start, start+length) that a delta overrides.

    ``kind == "data"``: the bytes are at ``file_offset`` in the delta file,
    contiguous. ``kind == "zero"``: reads as zeroes (``file_offset`` is None).
    """

    start: int
    length: int
    kind: Kind
    file_offset: int | None


@dataclasses.dataclass(frozen=True)
class Qcow2Header:
    """The parts of a qcow2 header a chain needs."""

    version: int
    virtual_size: int
    cluster_size: int
    backing_file: str | None
    backing_format: str | None
    l1_size: int
    l1_table_offset: int


@dataclasses.dataclass(frozen=True)
class _Run:
    """Consecutive guest clusters of one kind; data runs own consecutive file clusters."""

    guest_cluster: int
    count: int
    zero: bool
    file_cluster: int  # first file cluster of a data run; -1 for zero runs


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def classify_clusters(
    changes: Iterable[Change], *, virtual_size: int, cluster_size: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split changed guest ranges into (data cluster intervals, zero cluster intervals).

    Ranges are clipped to ``virtual_size`` and aligned out to clusters. A cluster
    is a zero cluster only when changed zero ranges cover all of it (up to the
    end of the disk); any other cluster touched by a change is a data cluster,
    read whole from the guest (its unchanged parts equal the backing file's).
    Intervals are half-open, in cluster indexes, sorted, disjoint.
    """
    data_bytes: list[tuple[int, int]] = []
    zero_bytes: list[tuple[int, int]] = []
    for change in changes:
        start, end = max(0, change.start), min(virtual_size, change.end)
        if end <= start:
            continue
        (zero_bytes if change.zero else data_bytes).append((start, end))
    cs = cluster_size
    data = Intervals((s // cs, _ceil_div(e, cs)) for s, e in Intervals(data_bytes))
    zero_full = Intervals()
    for s, e in Intervals(zero_bytes):
        first = _ceil_div(s, cs)
        last = _ceil_div(e, cs) if e == virtual_size else e // cs
        zero_full.add(first, last)
        # partial clusters at either edge hold unchanged bytes: read them as data
        if s % cs:
            data.add(s // cs, s // cs + 1)
        if e % cs and e != virtual_size:
            data.add(e // cs, e // cs + 1)
    return data.ranges(), (zero_full - data).ranges()


class Qcow2Delta:
    """A read-only qcow2 v3 file synthesized from changed guest ranges.

    Only metadata is held (header, refcount table/blocks and L1 in memory, L2
    tables built on demand); data clusters are read through ``fetch_data`` at
    the matching guest offsets. ``size`` is the exact file size in bytes.
    """

    def __init__(
        self,
        *,
        virtual_size: int,
        changes: Iterable[Change],
        backing_file: str | None,
        backing_format: str | None = "qcow2",
        cluster_size: int = CLUSTER_SIZE,
    ) -> None:
        if (
            cluster_size < 512
            or cluster_size > 2 * 1024 * 1024
            or cluster_size & (cluster_size - 1)
        ):
            raise ValueError(f"cluster_size must be a power of two in [512, 2 MiB]: {cluster_size}")
        if virtual_size < 0:
            raise ValueError(f"virtual_size must be >= 0: {virtual_size}")
        self.virtual_size = virtual_size
        self.cluster_size = cs = cluster_size
        self.cluster_bits = cs.bit_length() - 1
        self.backing_file = backing_file
        self.backing_format = backing_format if backing_file else None
        self._header_bytes = self._build_header_prefix()

        data, zero = classify_clusters(changes, virtual_size=virtual_size, cluster_size=cs)
        self.l2_entries = cs // 8
        self.l1_size = _ceil_div(_ceil_div(virtual_size, cs), self.l2_entries)
        l1_clusters = _ceil_div(self.l1_size * 8, cs)
        # L1 indexes that need an L2 table, ascending
        used_l1: set[int] = set()
        for s, e in data + zero:
            used_l1.update(range(s // self.l2_entries, (e - 1) // self.l2_entries + 1))
        self._l2_indexes = sorted(used_l1)
        data_clusters = sum(e - s for s, e in data)

        header_clusters = _ceil_div(len(self._header_bytes), cs)
        rb_entries = cs * 8 // (1 << REFCOUNT_ORDER)
        rt_clusters, rb_count = 1, 1
        while True:
            total = header_clusters + rt_clusters + rb_count + l1_clusters
            total += len(self._l2_indexes) + data_clusters
            new_rb = _ceil_div(total, rb_entries)
            new_rt = _ceil_div(new_rb * 8, cs)
            if new_rb <= rb_count and new_rt <= rt_clusters:
                break
            rb_count, rt_clusters = max(rb_count, new_rb), max(rt_clusters, new_rt)
        self.total_clusters = total
        self.refcount_block_entries = rb_entries
        self.rt_cluster = header_clusters
        self.rt_clusters = rt_clusters
        self.rb_cluster = self.rt_cluster + rt_clusters
        self.rb_count = rb_count
        self.l1_cluster = self.rb_cluster + rb_count
        self.l1_clusters = l1_clusters
        self.l2_cluster = self.l1_cluster + l1_clusters
        self.first_data_cluster = self.l2_cluster + len(self._l2_indexes)
        self.size = total * cs
        #: guest bytes stored as data clusters (includes the tail past virtual_size)
        self.data_size = data_clusters * cs
        self.metadata_size = self.first_data_cluster * cs

        runs: list[_Run] = []
        next_file = self.first_data_cluster
        for s, e, is_zero in sorted(
            [(s, e, False) for s, e in data] + [(s, e, True) for s, e in zero]
        ):
            runs.append(_Run(s, e - s, is_zero, -1 if is_zero else next_file))
            if not is_zero:
                next_file += e - s
        assert next_file == total
        self._runs = runs
        self._run_starts = [r.guest_cluster for r in runs]
        self._data_runs = [r for r in runs if not r.zero]
        self._data_file_starts = [r.file_cluster for r in self._data_runs]
        self._l2_pos = {l1: i for i, l1 in enumerate(self._l2_indexes)}
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._fixed = self._build_fixed_metadata()

    # ---- layout facts -------------------------------------------------------

    def changed_ranges(self) -> list[Allocation]:
        """The guest ranges this delta overrides, clipped to the virtual size."""
        cs = self.cluster_size
        out = []
        for r in self._runs:
            start = r.guest_cluster * cs
            end = min(self.virtual_size, (r.guest_cluster + r.count) * cs)
            out.append(
                Allocation(
                    start,
                    end - start,
                    "zero" if r.zero else "data",
                    None if r.zero else r.file_cluster * cs,
                )
            )
        return out

    # ---- metadata -----------------------------------------------------------

    def _build_header_prefix(self) -> bytes:
        """Header, extensions and backing name; offsets to tables patched later."""
        ext = b""
        name = b""
        if self.backing_file:
            name = self.backing_file.encode()
            if len(name) > MAX_BACKING_NAME_BYTES:
                raise ValueError(f"backing file name longer than {MAX_BACKING_NAME_BYTES} bytes")
            if self.backing_format:
                fmt = self.backing_format.encode()
                ext += struct.pack(">II", EXT_BACKING_FORMAT, len(fmt)) + fmt
                ext += b"\0" * (-len(fmt) % 8)
        ext += struct.pack(">II", EXT_END, 0)
        return b"\0" * HEADER_LENGTH + ext + name

    def _build_fixed_metadata(self) -> bytes:
        """Header cluster(s), refcount table and L1 (small, kept in memory)."""
        cs = self.cluster_size
        prefix = bytearray(self._header_bytes)
        name_len = len(self.backing_file.encode()) if self.backing_file else 0
        struct.pack_into(
            ">4sIQIIQIIQQIIQQQQII",
            prefix,
            0,
            MAGIC,
            VERSION,
            len(prefix) - name_len if name_len else 0,  # backing_file_offset
            name_len,
            self.cluster_bits,
            self.virtual_size,
            0,  # crypt_method
            self.l1_size,
            self.l1_cluster * cs,
            self.rt_cluster * cs,
            self.rt_clusters,
            0,  # nb_snapshots
            0,  # snapshots_offset
            0,  # incompatible_features
            0,  # compatible_features
            0,  # autoclear_features
            REFCOUNT_ORDER,
            HEADER_LENGTH,
        )
        header = bytes(prefix) + b"\0" * (self.rt_cluster * cs - len(prefix))
        rt = bytearray(self.rt_clusters * cs)
        for i in range(self.rb_count):
            struct.pack_into(">Q", rt, i * 8, (self.rb_cluster + i) * cs)
        l1 = bytearray(self.l1_clusters * cs)
        for pos, l1_index in enumerate(self._l2_indexes):
            struct.pack_into(">Q", l1, l1_index * 8, ((self.l2_cluster + pos) * cs) | OFLAG_COPIED)
        self._l1 = bytes(l1)
        return header + bytes(rt)

    def _refcount_block(self, index: int) -> bytes:
        first = index * self.refcount_block_entries
        used = max(0, min(self.refcount_block_entries, self.total_clusters - first))
        return b"\x00\x01" * used + b"\0" * ((self.refcount_block_entries - used) * 2)

    def _l2_table(self, l1_index: int) -> bytes:
        n = self.l2_entries
        first, last = l1_index * n, (l1_index + 1) * n
        table = bytearray(self.cluster_size)
        i = max(0, bisect.bisect_right(self._run_starts, first) - 1)
        cs = self.cluster_size
        while i < len(self._runs) and self._runs[i].guest_cluster < last:
            run = self._runs[i]
            lo = max(first, run.guest_cluster)
            hi = min(last, run.guest_cluster + run.count)
            i += 1
            if hi <= lo:  # the run found by bisect may end before this table
                continue
            if run.zero:
                entry = struct.pack(">Q", OFLAG_ZERO)
                table[(lo - first) * 8 : (hi - first) * 8] = entry * (hi - lo)
            else:
                base = run.file_cluster - run.guest_cluster
                for g in range(lo, hi):
                    struct.pack_into(">Q", table, (g - first) * 8, ((base + g) * cs) | OFLAG_COPIED)
        return bytes(table)

    def metadata_cluster(self, index: int) -> bytes:
        """The bytes of metadata file cluster ``index`` (< first_data_cluster)."""
        cs = self.cluster_size
        if index < self.rb_cluster:
            return self._fixed[index * cs : (index + 1) * cs]
        if index < self.l1_cluster:
            return self._refcount_block(index - self.rb_cluster)
        if index < self.l2_cluster:
            off = (index - self.l1_cluster) * cs
            return self._l1[off : off + cs]
        if index < self.first_data_cluster:
            cached = self._cache.get(index)
            if cached is None:
                cached = self._l2_table(self._l2_indexes[index - self.l2_cluster])
                self._cache[index] = cached
                if len(self._cache) > 16:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(index)
            return cached
        raise IndexError(f"cluster {index} is not metadata")

    # ---- reading ------------------------------------------------------------

    def data_ranges(self, offset: int, size: int) -> list[tuple[int, int, int]]:
        """Data pieces of file range [offset, offset+size): (file_offset, guest_offset, length).

        Guest offsets may reach past the virtual size in the last cluster (those
        bytes read as zeroes). Metadata parts of the range are not listed.
        """
        cs = self.cluster_size
        start = max(offset, self.metadata_size)
        end = min(offset + size, self.size)
        out = []
        pos = start
        while pos < end:
            fc = pos // cs
            i = bisect.bisect_right(self._data_file_starts, fc) - 1
            run = self._data_runs[i]
            run_end = (run.file_cluster + run.count) * cs
            n = min(end, run_end) - pos
            guest = (run.guest_cluster - run.file_cluster) * cs + pos
            out.append((pos, guest, n))
            pos += n
        return out

    async def read(self, offset: int, size: int, fetch_data: FetchData) -> bytes:
        """File bytes [offset, offset+size), short only at end of file.

        Metadata comes from memory; data from ``fetch_data(guest_offset, length)``
        (never called past ``virtual_size``: the tail of the last cluster is zero).
        """
        if offset < 0 or size < 0:
            raise ValueError(f"bad read range: offset={offset} size={size}")
        end = min(offset + size, self.size)
        parts: list[bytes] = []
        pos = offset
        cs = self.cluster_size
        while pos < end and pos < self.metadata_size:
            fc = pos // cs
            chunk = self.metadata_cluster(fc)
            take = min(end, (fc + 1) * cs) - pos
            parts.append(chunk[pos - fc * cs : pos - fc * cs + take])
            pos += take
        for _, guest, n in self.data_ranges(pos, end - pos):
            want = max(0, min(n, self.virtual_size - guest))
            data = await fetch_data(guest, want) if want else b""
            if len(data) != want:
                raise OSError(f"fetch_data({guest}, {want}) returned {len(data)} bytes")
            parts.append(data)
            if want < n:
                parts.append(bytes(n - want))
        return b"".join(parts)


# ---- parsing ----------------------------------------------------------------
#
# The parser reads files a restore received: untrusted. Every size and offset it
# takes from the file is checked before it is used (qcow2.txt, and qemu's own
# limits), no single read is larger than ``_READ_CHUNK`` or a cluster, and the
# total it reads is bounded by the file's size: L2 tables and data clusters
# together cannot add up to more than the file (each cluster of a delta is used
# once), so a crafted header cannot make it read, allocate or loop more than the
# file it was given. ``iter_allocation`` streams, so memory stays constant.

#: qemu's implementation limit on the active L1 table: 32 MiB.
MAX_L1_BYTES = 32 * 1024 * 1024
#: The largest virtual size the L1/L2 layout can populate (qcow2.txt: 56 bits).
MAX_VIRTUAL_SIZE = 1 << 56
#: qemu refuses a backing format name of 16 bytes or more.
MAX_BACKING_FORMAT_BYTES = 15
#: The L1 table is read in pieces of at most this many bytes.
_READ_CHUNK = 1024 * 1024
_L1_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55 (L1 and standard L2 entries alike)
_MAX_OFFSET = 1 << 56


def _reader(
    source: str | os.PathLike[str] | ReadAt, file_size: int | None = None
) -> tuple[ReadAt, int | None, Callable[[], None]]:
    """``(read_at, size of the file or None, close)`` for a path or a ``read_at`` callable."""
    if callable(source):
        return source, file_size, lambda: None
    f = open(Path(source), "rb")  # noqa: SIM115 - closed by the returned closer
    size = os.fstat(f.fileno()).st_size if file_size is None else file_size

    def read_at(offset: int, length: int) -> bytes:
        return os.pread(f.fileno(), length, offset)

    return read_at, size, f.close


def _read_exact(read_at: ReadAt, offset: int, length: int, what: str) -> bytes:
    if offset < 0 or length < 0 or offset + length > _MAX_OFFSET:
        raise Qcow2FormatError(f"{what} at {offset} ({length} bytes) is outside any qcow2 file")
    data = read_at(offset, length)
    if len(data) != length:
        raise Qcow2Truncated(f"truncated qcow2 file: {what} at {offset} needs {length} bytes")
    return data


def _text(raw: bytes, what: str) -> str:
    """A name stored in the header: UTF-8 without control characters."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Qcow2FormatError(f"the {what} is not UTF-8 text") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise Qcow2FormatError(f"the {what} holds control characters")
    return text


def _parse_header(read_at: ReadAt) -> Qcow2Header:
    raw = read_at(0, 104)
    if len(raw) < 72 or raw[:4] != MAGIC:
        raise Qcow2FormatError("not a qcow2 image (bad magic)")
    version, bf_off, bf_size, cluster_bits, vsize, crypt, l1_size, l1_off = struct.unpack_from(
        ">IQIIQIIQ", raw, 4
    )
    rt_off, _rt_clusters, nb_snapshots, _snap_off = struct.unpack_from(">QIIQ", raw, 48)
    if version not in (2, 3):
        raise Qcow2FormatError(f"unsupported qcow2 version {version}")
    if crypt:
        raise Qcow2FormatError("encrypted qcow2 images are not supported")
    if not 9 <= cluster_bits <= 21:
        raise Qcow2FormatError(f"bad cluster_bits {cluster_bits} (9 to 21)")
    cs = 1 << cluster_bits
    if vsize > MAX_VIRTUAL_SIZE:
        raise Qcow2FormatError(f"virtual size {vsize} is larger than qcow2 can address")
    l1_needed = _ceil_div(_ceil_div(vsize, cs), cs // 8)
    if l1_size < l1_needed:
        raise Qcow2FormatError(
            f"L1 table of {l1_size} entries is too small for a {vsize}-byte disk"
        )
    if l1_size * 8 > MAX_L1_BYTES:
        raise Qcow2FormatError(f"L1 table of {l1_size} entries is larger than 32 MiB")
    if l1_off % cs or l1_off >= _MAX_OFFSET or (l1_size and not l1_off):
        raise Qcow2FormatError(f"L1 table offset {l1_off} is not a cluster of the file")
    if rt_off % cs or rt_off >= _MAX_OFFSET:
        raise Qcow2FormatError(f"refcount table offset {rt_off} is not a cluster of the file")
    header_length = 72
    backing_format = None
    if version == 3:
        if len(raw) < 104:
            raise Qcow2FormatError("truncated qcow2 v3 header")
        (incompatible,) = struct.unpack_from(">Q", raw, 72)
        # tolerated: bit 0 "dirty" (refcounts only), bit 3 compression type (we
        # refuse compressed clusters anyway); refused: corrupt, external data
        # file, extended L2 entries, and anything newer
        if incompatible & ~0x9:
            raise Qcow2FormatError(f"unsupported incompatible features 0x{incompatible:x}")
        refcount_order, header_length = struct.unpack_from(">II", raw, 96)
        if refcount_order > 6:
            raise Qcow2FormatError(f"bad refcount_order {refcount_order} (at most 6)")
        if header_length < 104 or header_length % 8 or header_length > cs:
            raise Qcow2FormatError(f"bad header_length {header_length}")
    # The header, its extensions and the backing file name live in the first cluster.
    if bf_off or bf_size:
        if bf_size > MAX_BACKING_NAME_BYTES:
            raise Qcow2FormatError(
                f"backing file name of {bf_size} bytes (at most {MAX_BACKING_NAME_BYTES})"
            )
        if bf_off < header_length or bf_off + bf_size > cs:
            raise Qcow2FormatError(f"backing file name at {bf_off} is outside the first cluster")
    if version == 3:
        ext_end = bf_off if bf_off and bf_size else cs
        area = read_at(header_length, max(0, ext_end - header_length))
        short = len(area) < ext_end - header_length  # the file ends inside the first cluster
        pos = 0
        seen: set[int] = set()
        while True:
            if pos + 8 > len(area):
                raise (Qcow2Truncated if short else Qcow2FormatError)(
                    "truncated qcow2 file: header extensions"
                    if short
                    else "header extensions run past the first cluster"
                )
            ext_type, ext_len = struct.unpack_from(">II", area, pos)
            if ext_type == EXT_END:
                break
            if ext_len > len(area) - pos - 8:
                raise (Qcow2Truncated if short else Qcow2FormatError)(
                    f"truncated qcow2 file: header extension 0x{ext_type:08x}"
                    if short
                    else f"header extension 0x{ext_type:08x} of {ext_len} bytes runs past "
                    "the first cluster"
                )
            if ext_type in seen:
                raise Qcow2FormatError(f"header extension 0x{ext_type:08x} appears twice")
            seen.add(ext_type)
            if ext_type == EXT_BACKING_FORMAT:
                if ext_len > MAX_BACKING_FORMAT_BYTES:
                    raise Qcow2FormatError(f"backing format name of {ext_len} bytes")
                backing_format = _text(area[pos + 8 : pos + 8 + ext_len], "backing format")
            pos += 8 + ext_len + (-ext_len % 8)
    backing_file = None
    if bf_off and bf_size:
        backing_file = _text(
            _read_exact(read_at, bf_off, bf_size, "backing file name"), "backing file name"
        )
    del nb_snapshots  # internal snapshots are ignored: only the active L1 table is read
    return Qcow2Header(
        version=version,
        virtual_size=vsize,
        cluster_size=cs,
        backing_file=backing_file,
        backing_format=backing_format,
        l1_size=l1_size,
        l1_table_offset=l1_off,
    )


def read_header(source: str | os.PathLike[str] | ReadAt) -> Qcow2Header:
    """Parse the header of a qcow2 file (a path, or a ``read_at(offset, length)`` callable)."""
    read_at, _, close = _reader(source)
    try:
        return _parse_header(read_at)
    finally:
        close()


def iter_allocation(
    source: str | os.PathLike[str] | ReadAt, *, file_size: int | None = None
) -> Generator[Allocation, None, None]:
    """What a qcow2 layer overrides, as merged ascending guest ranges (a generator).

    Unallocated clusters (which fall through to the backing file) are not
    listed; "reads as zero" clusters are ``kind="zero"``; allocated clusters
    are ``kind="data"`` with their file offset (runs merged only while both
    guest and file offsets are contiguous). Ranges are clipped to the virtual
    size. Internal snapshots are ignored; compressed clusters are refused.

    ``file_size`` (taken from the file for a path; pass it with a ``read_at``
    callable) bounds the work: L1, L2 tables and data clusters must fit in it
    together, else ``Qcow2FormatError``. Without it (a trusted caller's
    callable) only the per-read and L1 limits apply.
    """
    read_at, size, close = _reader(source, file_size)
    try:
        header = _parse_header(read_at)
        cs = header.cluster_size
        n = cs // 8
        guest_clusters = _ceil_div(header.virtual_size, cs)
        l1_entries = _ceil_div(guest_clusters, n)  # entries past the disk's end map nothing
        budget = size  # bytes of the file that tables and data clusters may still use
        if size is not None and budget is not None:
            if header.l1_table_offset + l1_entries * 8 > size:
                raise Qcow2Truncated(
                    f"truncated qcow2 file: the L1 table at {header.l1_table_offset} "
                    f"needs {l1_entries * 8} bytes"
                )
            budget -= l1_entries * 8
        last: Allocation | None = None
        per_chunk = _READ_CHUNK // 8
        for chunk_start in range(0, l1_entries, per_chunk):
            count = min(per_chunk, l1_entries - chunk_start)
            l1_raw = _read_exact(
                read_at, header.l1_table_offset + chunk_start * 8, count * 8, "L1 table"
            )
            for j, (l1_entry,) in enumerate(struct.iter_unpack(">Q", l1_raw)):
                l1_index = chunk_start + j
                l2_off = l1_entry & _L1_OFFSET_MASK
                if not l2_off:
                    continue
                if l2_off % cs:
                    raise Qcow2FormatError(f"L2 table offset {l2_off} is not cluster aligned")
                if size is not None and budget is not None:
                    if l2_off + cs > size:
                        raise Qcow2Truncated(
                            f"truncated qcow2 file: L2 table at {l2_off} is past its end"
                        )
                    budget -= cs
                    if budget < 0:
                        raise Qcow2FormatError(
                            "the L2 tables and data clusters add up to more than the file"
                        )
                l2_raw = _read_exact(read_at, l2_off, cs, "L2 table")
                for i, (entry,) in enumerate(struct.iter_unpack(">Q", l2_raw)):
                    guest = (l1_index * n + i) * cs
                    if guest >= header.virtual_size:
                        break
                    length = min(cs, header.virtual_size - guest)
                    if entry & OFLAG_COMPRESSED:
                        raise Qcow2FormatError(f"compressed cluster at guest offset {guest}")
                    host = entry & OFFSET_MASK
                    if header.version == 3 and entry & OFLAG_ZERO:
                        kind: Kind = "zero"
                        file_offset = None
                    elif host:
                        if host % cs:
                            raise Qcow2FormatError(
                                f"data cluster offset {host} is not cluster aligned"
                            )
                        if size is not None and budget is not None:
                            if host + length > size:
                                raise Qcow2Truncated(
                                    f"truncated qcow2 file: data cluster at {host} is past its end"
                                )
                            budget -= cs
                            if budget < 0:
                                raise Qcow2FormatError(
                                    "the L2 tables and data clusters add up to more than the file"
                                )
                        kind, file_offset = "data", host
                    else:
                        continue
                    if (
                        last is not None
                        and last.kind == kind
                        and last.start + last.length == guest
                        and (
                            kind == "zero"
                            or (
                                last.file_offset is not None
                                and last.file_offset + last.length == host
                            )
                        )
                    ):
                        last = dataclasses.replace(last, length=last.length + length)
                    else:
                        if last is not None:
                            yield last
                        last = Allocation(guest, length, kind, file_offset)
        if last is not None:
            yield last
    finally:
        close()


def read_allocation(
    source: str | os.PathLike[str] | ReadAt, *, file_size: int | None = None
) -> list[Allocation]:
    """``iter_allocation`` as a list (see there)."""
    return list(iter_allocation(source, file_size=file_size))


def apply_allocation(
    delta: str | os.PathLike[str] | ReadAt,
    allocation: Sequence[Allocation],
    write_at: Callable[[int, bytes], None],
    *,
    chunk_bytes: int = 4 * 1024 * 1024,
) -> int:
    """Copy a delta's overrides onto a raw image through ``write_at(guest_offset, data)``.

    Data ranges are copied from the delta file, zero ranges written as zeroes
    (in chunks of at most ``chunk_bytes``). Returns the guest bytes written.
    Use with :func:`read_allocation` to roll a raw full image forward through
    a chain of deltas, oldest first.
    """
    read_at, _, close = _reader(delta)
    total = 0
    try:
        for a in allocation:
            pos = 0
            while pos < a.length:
                n = min(chunk_bytes, a.length - pos)
                if a.kind == "zero":
                    data = bytes(n)
                else:
                    assert a.file_offset is not None
                    data = _read_exact(read_at, a.file_offset + pos, n, "data cluster")
                write_at(a.start + pos, data)
                pos += n
                total += n
        return total
    finally:
        close()
