"""Restoring chains: order the sets copied into ``restore/<name>/`` and roll disks forward.

A chain is a full set followed by incremental sets (each naming the previous
one as its parent), or a full set and one differential set. Their manifests
(``manifest--<set>.json``, a ``Manifest`` with a ``lineage``) say the set id,
set type, parent set and full set id, and per disk the file, its format
(``raw`` full data or a ``qcow2`` delta) and the delta's backing file. This
module:

- ``link_from_manifest(name, manifest)``: a set's place in its chain;
- ``order_chain(links)``: full set first, newest last, or a ``ChainError`` with
  one clear sentence (a missing link, two branches, a set of another VM, a
  delta whose backing file is not the previous set's file);
- ``disk_plan(chain, disk_id)``: which file of which set to start from (the
  newest full-data file of that disk) and which deltas to apply after it;
- ``apply_delta(path, write=..., zero=...)``: writes a delta's changed ranges
  (data with ``write``, "reads as zero" clusters with ``zero``) at their guest
  offsets -- onto an upload transfer that already received the full image, or
  onto a staged raw file.

Restore recipe (for the restore session): stream the chain's full image of a
disk as usual; stage each delta (they are small); once every manifest of the
directory is in, ``order_chain`` them, and for each disk apply its deltas from
``disk_plan`` oldest first with ``apply_delta``, then finalize the upload. The
newest manifest describes the VM (its OVF file is ``config_files.ovf``).

Must not: talk to the engine or imageio, decide restore options.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rhvfs.backupset._manifest import Manifest
from rhvfs.backupset._names import SetType
from rhvfs.backupset._qcow2 import (
    Allocation,
    Qcow2FormatError,
    Qcow2Truncated,
    ReadAt,
    iter_allocation,
    read_header,
)
from rhvfs.errors import RestoreError


class ChainError(RestoreError):
    """Raised when the sets in a restore directory do not form one chain: a missing
    or out-of-order link, two branches, sets of different VMs, or a delta file
    that does not continue the previous set. The message says which, in one line."""


@dataclasses.dataclass(frozen=True)
class DiskLink:
    disk_id: str
    file: str
    file_format: str  # raw | qcow2
    backing_file: str | None
    size: int


@dataclasses.dataclass(frozen=True)
class SetLink:
    """What a manifest says about a set's place in its chain."""

    manifest: str  # the manifest's file name
    set_id: str
    set_type: SetType
    owner_id: str
    parent_set_id: str | None
    full_set_id: str
    disks: Mapping[str, DiskLink]


def link_from_manifest(name: str, manifest: Manifest) -> SetLink:
    """A ``SetLink`` from the manifest in file ``name`` (a full set from ``@rhv/`` has no set
    id: its ``checkpoint_id`` or session stands in)."""
    lineage = manifest.lineage
    parent = lineage.parent if lineage is not None else None
    set_id = (
        (lineage.set_id if lineage is not None else None)
        or manifest.checkpoint_id
        or manifest.session_id
        or name
    )
    disks = {}
    for d in manifest.disks:
        fmt = d.image_format
        disks[d.id] = DiskLink(
            disk_id=d.id,
            file=d.file,
            file_format=fmt,
            backing_file=d.backing_file if fmt == "qcow2" else None,
            size=d.size,
        )
    return SetLink(
        manifest=name,
        set_id=set_id,
        set_type=manifest.set_type,
        owner_id=manifest.owner.id,
        parent_set_id=parent.set_id if parent is not None else None,
        full_set_id=(lineage.full_set_id if lineage is not None else None) or set_id,
        disks=disks,
    )


def order_chain(links: Sequence[SetLink]) -> list[SetLink]:
    """The sets as one chain, full first and newest last; ``ChainError`` otherwise."""
    if not links:
        raise ChainError("no manifest in the directory")
    owners = {x.owner_id for x in links}
    if len(owners) > 1:
        raise ChainError(f"the sets belong to {len(owners)} different VMs: copy one VM's sets")
    by_id: dict[str, SetLink] = {}
    for x in links:
        if x.set_id in by_id:
            raise ChainError(
                f"set {x.set_id} is in the directory twice ({by_id[x.set_id].manifest}, {x.manifest})"
            )
        by_id[x.set_id] = x
    for x in links:
        if x.parent_set_id is not None and x.parent_set_id not in by_id:
            raise ChainError(
                f"missing link: set {x.parent_set_id} (the parent of {x.manifest}) "
                "is not in the directory"
            )
    parents = {x.parent_set_id for x in links if x.parent_set_id}
    newest = [x for x in links if x.set_id not in parents]
    if len(newest) > 1:
        names = ", ".join(sorted(x.manifest for x in newest))
        raise ChainError(
            f"the sets do not form one chain ({names} are each the newest of a branch): "
            "copy a full set with its incrementals, or a full set with one differential"
        )
    if not newest:
        raise ChainError("the sets' parent links form a loop")
    chain = [newest[0]]
    while chain[-1].parent_set_id is not None:
        child = chain[-1]
        parent = by_id.get(child.parent_set_id or "")
        if parent is None:
            raise ChainError(
                f"missing link: set {child.parent_set_id} (the parent of {child.manifest}) "
                "is not in the directory"
            )
        chain.append(parent)
    chain.reverse()
    if chain[0].set_type != SetType.FULL:
        raise ChainError(
            f"the chain starts at {chain[0].manifest}, a {chain[0].set_type} set, not a full one"
        )
    for x in chain[1:]:
        if x.set_type == SetType.FULL:
            raise ChainError(f"{x.manifest} is a full set but names a parent set")
        if x.full_set_id != chain[0].set_id:
            raise ChainError(
                f"{x.manifest} belongs to the chain of full set {x.full_set_id}, not {chain[0].set_id}"
            )
    extra = sorted(set(by_id) - {x.set_id for x in chain})
    if extra:
        raise ChainError(
            f"{', '.join(by_id[s].manifest for s in extra)} do not belong to the chain of {chain[-1].manifest}"
        )
    return chain


@dataclasses.dataclass(frozen=True)
class DiskPlan:
    """How to rebuild one disk: upload ``base`` (full data), then apply ``deltas`` in order."""

    disk_id: str
    base: DiskLink
    deltas: tuple[DiskLink, ...]
    size: int  # the virtual size in the newest set


def disk_plan(chain: Sequence[SetLink], disk_id: str) -> DiskPlan:
    """The newest full-data file of ``disk_id`` in the chain and the deltas after it."""
    newest = chain[-1].disks.get(disk_id)
    if newest is None:
        raise ChainError(f"disk {disk_id} is not in the newest set {chain[-1].manifest}")
    base: DiskLink | None = None
    deltas: list[DiskLink] = []
    for link in chain:
        d = link.disks.get(disk_id)
        if d is None:
            continue
        if d.file_format == "raw":
            base, deltas = d, []
        else:
            prev = deltas[-1].file if deltas else (base.file if base else None)
            if prev is None or d.backing_file != prev:
                raise ChainError(
                    f"{d.file} continues {d.backing_file!r}, but the previous file of disk "
                    f"{disk_id} in the chain is {prev!r}: a link is missing or out of order"
                )
            deltas.append(d)
    if base is None:
        raise ChainError(f"no set of the chain holds the full data of disk {disk_id}")
    return DiskPlan(disk_id=disk_id, base=base, deltas=tuple(deltas), size=newest.size)


def flatten_manifest(newest: Manifest, chain: Sequence[SetLink]) -> Manifest:
    """The newest set's manifest rewritten as a plain full set of the chain's state.

    Each disk's ``file`` becomes the file holding its full data (from
    ``disk_plan``), and ``chain_deltas`` lists the delta files to apply after
    that image was uploaded, oldest first. A restore that understands full sets
    can upload the ``file`` images as usual and apply ``chain_deltas`` (with
    ``apply_delta``) before finalizing each disk's transfer.
    """
    disks = []
    for d in newest.disks:
        plan = disk_plan(chain, d.id)
        disks.append(
            dataclasses.replace(
                d,
                file=plan.base.file,
                file_format="raw",
                backing_file=None,
                chain_deltas=tuple(x.file for x in plan.deltas),
            )
        )
    return dataclasses.replace(
        newest,
        set_type=SetType.FULL,
        disks=tuple(disks),
        chain=tuple(x.set_id for x in chain),
    )


#: ``await run_sync(fn, *args)``: where blocking work of ``apply_delta`` runs (a
#: worker thread for a restore on an event loop; inline by default).
RunSync = Callable[..., Awaitable[Any]]


async def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def check_delta(path: str | os.PathLike[str] | ReadAt, link: DiskLink) -> None:
    """The staged ``path`` (or ``read_at(offset, length)`` callable) is the qcow2 delta
    ``link`` describes (format, backing file, virtual size). Reads the first cluster only."""
    try:
        header = read_header(path)
    except Qcow2FormatError as e:
        raise ChainError(f"{link.file}: {e}") from None
    except OSError as e:
        raise ChainError(f"{link.file}: {e.strerror}") from None
    if header.backing_file != link.backing_file:
        raise ChainError(
            f"{link.file} names {_clip(header.backing_file)!r} as its backing file, "
            f"the manifest {_clip(link.backing_file)!r}"
        )
    if header.virtual_size != link.size:
        raise ChainError(
            f"{link.file} is {header.virtual_size} bytes of disk, the manifest says {link.size}"
        )


def _clip(text: str | None, limit: int = 80) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "..."


def max_delta_size(virtual_size: int) -> int:
    """The largest file a qcow2 delta of a ``virtual_size`` disk can be: every cluster
    allocated, plus its tables (L2 entries, refcounts and L1 for 512-byte clusters are
    under 1/16 of the data) and a header; a bigger file is not such a delta."""
    return virtual_size + virtual_size // 16 + 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class DeltaStats:
    data_bytes: int
    zero_bytes: int


def delta_end(
    path: str | os.PathLike[str] | ReadAt, link: DiskLink, *, file_size: int | None = None
) -> int:
    """The file size the delta needs: the end of its last data cluster (a shorter copy is
    truncated). ``ChainError`` when it does not parse. Reads every L2 table of the file:
    bounded by ``file_size`` (see ``iter_allocation``), blocking -- run it off the loop."""
    try:
        return max(
            (
                a.file_offset + a.length
                for a in iter_allocation(path, file_size=file_size)
                if a.file_offset is not None
            ),
            default=0,
        )
    except Qcow2Truncated as e:
        raise ChainError(f"{link.file} is truncated ({e})") from None
    except Qcow2FormatError as e:
        raise ChainError(f"{link.file}: {e}") from None
    except OSError as e:
        raise ChainError(f"{link.file}: {e.strerror}") from None


async def apply_delta(
    path: str | os.PathLike[str] | ReadAt,
    *,
    write: Callable[[int, bytes], Awaitable[None]],
    zero: Callable[[int, int], Awaitable[None]],
    chunk_bytes: int = 8 * 1024 * 1024,
    file_size: int | None = None,
    run_sync: RunSync = _inline,
) -> DeltaStats:
    """Write the guest ranges a qcow2 delta overrides: data with ``write(offset, bytes)``
    (at most ``chunk_bytes`` each), zero clusters with ``zero(offset, length)``.

    ``path`` is a file or a ``read_at(offset, length)`` callable (a staged file's
    reader, with its ``file_size``). The tables are parsed as they are applied
    (constant memory); every blocking step -- parsing a batch of tables, reading
    a chunk of data -- goes through ``run_sync`` (a worker thread for a restore).
    """
    label = "delta" if callable(path) else Path(path).name
    if callable(path):
        read_at: ReadAt = path
        fd = -1
    else:
        fd = os.open(path, os.O_RDONLY)

        def read_at(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        if file_size is None:
            file_size = os.fstat(fd).st_size
    runs = iter_allocation(read_at, file_size=file_size)

    def batch() -> list[Allocation]:
        try:
            return list(itertools.islice(runs, 1024))
        except Qcow2FormatError as e:
            raise ChainError(f"{label}: {e}") from None

    data_bytes = zero_bytes = 0
    try:
        while allocation := await run_sync(batch):
            for a in allocation:
                if a.kind == "zero":
                    await zero(a.start, a.length)
                    zero_bytes += a.length
                    continue
                assert a.file_offset is not None
                pos = 0
                while pos < a.length:
                    n = min(chunk_bytes, a.length - pos)
                    data = await run_sync(read_at, a.file_offset + pos, n)
                    if len(data) != n:
                        raise ChainError(f"{label} is truncated at {a.file_offset + pos}")
                    await write(a.start + pos, data)
                    pos += n
                data_bytes += a.length
    finally:
        runs.close()
        if fd >= 0:
            os.close(fd)
    return DeltaStats(data_bytes=data_bytes, zero_bytes=zero_bytes)
