"""Restoring a chain: a full set plus its incrementals (or one differential) in one directory.

Owns the chain side of a ``restore/<name>/`` session (``RestoreSession.chain``):
which manifests arrived, when the chain counts as complete, and rolling each
disk's upload forward with the deltas before it is finalized. The ordering
rules and the delta parser are ``rhvfs.backupset``'s.

Recognition. Every ``manifest--<set>.json`` (and a ``manifest.json`` that has
a ``set_id`` or ``checkpoint_id``, i.e. a full ``@rhv/`` set that started a
chain) is a chain manifest; ``vm--<set>.ovf``/``.xml`` are configuration. All
are held in memory. The first full set's manifest (no parent) is the
**root**: it is parsed and checked like a plain full set, its disks are
created and its raw images stream to the engine exactly as for a full
restore. Every other file (the ``.qcow2`` deltas; ``.raw`` full-data files
of later sets, for raw or backup=none disks) is kept in the bounded staging
area (``staging_limit``; a bigger file fails the restore with ENOSPC).

**The chain is complete** when, all at once: no file of the directory is
open; every chain manifest was closed and parsed; every selected disk's image
of the root set is complete (the full-restore rules: closed at its size with
times set, or not reopened for ``close_grace_s``); and nothing happened in
the directory (no create, open, write or close) for ``close_grace_s``
seconds. The quiet period is needed because a full set does not name the
sets that follow it: copy the sets in one go (one tar/cp/rsync of a
directory holding them all, or successive extractions without a pause).
Then the manifests must form one chain (``order_chain``: the root first, each
set naming the previous one as its parent, newest last), every delta named by
the chain's sets must be in the directory and continue the previous file of
its disk (its qcow2 backing file, virtual size), and be complete (its
metadata parses and its last data cluster was written). A **differential**
names the full set as its parent, so full + one differential is a two-set
chain; full + two differentials are two branches and are refused (so is an
incremental whose parent is missing, a set of another VM or of another full
set's chain). Any refusal fails the session with one line in ``.status``
(phase ``failed``) and rolls back everything it created (uploads cancelled,
disks removed); the VM is never created and the original VM is not touched.

Then each disk applies its chain files oldest first onto its upload (a
delta's data clusters are written as data, its "reads as zero" clusters as
zero runs that the stream sends as PATCH zero; a later raw full-data file
replaces the whole disk) and finalizes it; the VM is created from the newest
set (its OVF, NICs and disk flags) as for a full restore. Disks must be the
same in the root and the newest set (added, removed or resized disks are
refused: restore the newest full set instead).

The chain gets what it needs from its session through ``ChainHost`` (the
directory's files and disks, the root manifest, the session's log and
failure) and from the manager through ``RestoreServices`` (the nursery and
``close_grace_s``); the disk uploads ask it ``gate_open``/``wait_gate`` and
call ``apply``.

Invariants (between awaits): ``decided`` is set once, either by ``_settle``
right after the session adopted the newest set (so a disk woken by it sees
the final manifest), or by ``stop`` when the session fails; ``chain`` and
``steps`` are set only together with ``decided``.

Untrusted input. Every file here came from the tool: manifests and the OVF
are parsed by ``rhvfs.backupset``'s bounded parsers, deltas by its bounded
qcow2 parser (a delta larger than ``max_delta_size`` of its disk is refused
before it is read; the parser reads no more than the file holds); parsing
and reading big files runs in worker threads (``_offload``), so the mount
keeps answering. A file that changes while it is being checked is checked
again later (the settle is retried, not decided on stale checks).

Must not: talk to the engine (the session does), decide restore options.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import trio

from rhvfs.backupset import (
    MANIFEST_NAME,
    ChainError,
    DiskLink,
    Manifest,
    OvfInfo,
    SetLink,
    SetType,
    apply_delta,
    check_consistent,
    check_delta,
    delta_end,
    disk_plan,
    link_from_manifest,
    max_delta_size,
    order_chain,
    parse_ovf,
)
from rhvfs.errors import RestoreInputError, RhvfsError, SetFormatError
from rhvfs.sessions.restore._files import RestoreDisk, RestoreFile
from rhvfs.sessions.restore._offload import DELTA_OFFLOAD_BYTES, parse, parser_for
from rhvfs.sessions.restore._ports import RestoreServices
from rhvfs.sessions.restore._state import Phase
from rhvfs.sessions.restore._upload import UploadStream

log = logging.getLogger(__name__)

_STEP_BYTES = 8 * 1024 * 1024


@functools.lru_cache(maxsize=2)
def _zeros(n: int) -> bytes:
    return bytes(n)


def is_chain_manifest(name: str, manifest: Manifest | None) -> bool:
    """A manifest that takes part in a chain (see the module docstring)."""
    if manifest is None:
        return False
    set_id = manifest.lineage.set_id if manifest.lineage is not None else None
    return name != MANIFEST_NAME or bool(set_id or manifest.checkpoint_id)


class ChainHost(Protocol):
    """What the chain needs from its restore session."""

    @property
    def files(self) -> Mapping[int, RestoreFile]: ...
    @property
    def disks(self) -> Mapping[str, RestoreDisk]: ...
    @property
    def manifest(self) -> Manifest | None:
        """The root set's manifest once parsed and checked (then the newest set's)."""
        ...

    @property
    def phase(self) -> Phase: ...
    def note(self, text: str) -> None: ...
    def fail(self, exc: BaseException | str) -> None: ...
    async def read_manifest(self, f: RestoreFile) -> None:
        """Parse, check and adopt a single set's (or the chain root's) manifest."""
        ...

    def adopt_newest(self, manifest: Manifest, ovf: bytes, ovf_info: OvfInfo) -> None:
        """The chain is settled: the VM is made from the newest set (synchronous)."""
        ...

    async def check_complete(self) -> None:
        """Start making the VM if the set is complete now."""
        ...


class ChainAssembly:
    """The chain state of one restore session."""

    def __init__(self, host: ChainHost, services: RestoreServices) -> None:
        self.host = host
        self.services = services
        self.active = False  # a chain manifest arrived: disks wait for ``decided``
        self.links: dict[str, tuple[SetLink, Manifest]] = {}
        self.root: str | None = None
        self.decided = trio.Event()  # the chain was settled (or the session failed)
        self.chain: list[SetLink] = []
        self.steps: dict[str, list[tuple[DiskLink, RestoreFile]]] = {}
        self._last_activity = 0.0

    def stop(self) -> None:
        """The session failed: release every disk waiting at the gate."""
        self.decided.set()

    # -- activity and the gate -------------------------------------------------------

    def touch(self) -> None:
        try:
            self._last_activity = trio.current_time()
        except RuntimeError:  # outside trio (a synchronous caller in a test)
            pass

    def gate_open(self) -> bool:
        """False while a chain restore is not settled: disks must not be finalized yet."""
        return not self.active or self.decided.is_set()

    async def wait_gate(self) -> None:
        if self.active:
            await self.decided.wait()

    def status(self) -> dict[str, Any] | None:
        if not self.active:
            return None
        return {
            "manifests": sorted(self.links),
            "root": self.root,
            "complete": self.decided.is_set() and bool(self.chain),
            "order": [f"{x.set_type} {x.set_id}" for x in self.chain],
        }

    # -- manifests -----------------------------------------------------------------------

    async def manifest_closed(self, f: RestoreFile) -> None:
        """A manifest was closed: a plain full set goes the single-set way, a chain
        manifest is recorded (the root one also starts the disks' uploads)."""
        s = self.host
        assert f.mem is not None
        data = bytes(f.mem)
        try:
            manifest: Manifest | None = await parse(
                Manifest.from_json, data, name=f.name, size=len(data)
            )
            error = None
        except SetFormatError as e:
            manifest, error = None, e
        if f.name == MANIFEST_NAME and not is_chain_manifest(f.name, manifest):
            await s.read_manifest(f)
            return
        if manifest is None:
            assert error is not None
            raise error
        link = link_from_manifest(f.name, manifest)
        self.links[f.name] = (link, manifest)
        s.note(
            f"chain manifest {f.name}: {link.set_type} set {link.set_id}"
            + (f" after {link.parent_set_id}" if link.parent_set_id else "")
        )
        if not self.active:
            self.active = True
            self.touch()
            self.services.spawn(self._watch)
        if link.set_type == SetType.FULL and link.parent_set_id is None and self.root is None:
            self.root = f.name
            await s.read_manifest(f)

    # -- settling ------------------------------------------------------------------------

    async def _watch(self) -> None:
        s = self.host
        grace = self.services.close_grace_s
        step = max(0.01, min(0.5, grace / 4))
        while not self.decided.is_set() and not s.phase.final:
            await trio.sleep(step)
            if not self._inputs_ready() or trio.current_time() - self._last_activity < grace:
                continue
            if s.phase.final:
                return
            try:
                await self._settle()
            except RhvfsError as e:
                s.fail(RestoreInputError(e.detail or str(e)))
                return
            if self.decided.is_set():
                await s.check_complete()

    def _inputs_ready(self) -> bool:
        s = self.host
        if any(f.opens > 0 for f in s.files.values()):
            return False
        if self.root is not None and s.manifest is None:
            return False  # the root's checks are still running
        return all(d.finish.is_set() for d in s.disks.values() if d.selected)

    async def _settle(self) -> None:
        """Order the chain and check every file it needs; sets ``decided`` or raises. Leaves
        ``decided`` unset (to be retried) when the directory changed during the checks."""
        s = self.host
        activity = self._last_activity
        chain = order_chain([link for link, _ in self.links.values()])
        if s.manifest is None or chain[0].manifest != self.root:
            raise ChainError(f"the chain starts at {chain[0].manifest}, whose data is not here")
        newest, newest_manifest = self.links[chain[-1].manifest]
        root_ids = {d.id for d in s.manifest.disks}
        if set(newest.disks) != root_ids:
            raise ChainError(
                f"the disks of {newest.manifest} differ from the full set's "
                f"({len(newest.disks)} vs {len(root_ids)}): restore a newer full set instead"
            )
        files = {f.name: f for f in s.files.values()}
        steps: dict[str, list[tuple[DiskLink, RestoreFile]]] = {}
        for d in s.disks.values():
            sd = d.set_disk
            disk_plan(chain, sd.id)  # each delta continues the previous file of its disk
            if newest.disks[sd.id].size != sd.size:
                raise ChainError(
                    f"disk {sd.alias} is {newest.disks[sd.id].size} bytes in {newest.manifest}, "
                    f"{sd.size} in the full set: resized disks are not restored from a chain"
                )
            if not d.selected:
                continue
            seq: list[tuple[DiskLink, RestoreFile]] = []
            for link in chain[1:]:
                dl = link.disks.get(sd.id)
                if dl is None:
                    continue
                f = files.get(dl.file)
                if f is None or f.staged is None:
                    raise ChainError(
                        f"missing link: {dl.file} (disk {sd.alias} of {link.manifest}) "
                        "is not in the directory"
                    )
                if dl.file_format == "qcow2":
                    need = await self._check_delta(f, dl)
                    if f.staged is None or f.size < need or f.staged.end < need:
                        raise ChainError(
                            f"{dl.file} is truncated: {f.size} bytes, its data ends at {need}"
                        )
                elif f.size != dl.size:
                    raise ChainError(f"{dl.file} is {f.size} bytes, the disk {dl.size}")
                seq.append((dl, f))
            steps[sd.id] = seq
        ovf_name = newest_manifest.ovf_file
        ovf_file = files.get(ovf_name)
        if ovf_file is None or ovf_file.mem is None:
            raise ChainError(
                f"{ovf_name}, the configuration of the newest set {newest.manifest}, "
                "is not in the directory"
            )
        ovf = bytes(ovf_file.mem)
        info = await parse(parse_ovf, ovf, size=len(ovf))
        if s.phase.final or self.decided.is_set() or self._last_activity != activity:
            return  # failed meanwhile, or a file changed while it was checked: check again
        # the newest set describes the VM; the disks keep the root's file names
        root_files = {d.id: d.file for d in s.manifest.disks}
        manifest = dataclasses.replace(
            newest_manifest,
            set_type=SetType.FULL,
            disks=tuple(
                dataclasses.replace(d, file=root_files[d.id]) for d in newest_manifest.disks
            ),
        )
        try:
            check_consistent(manifest, info)
        except RhvfsError as e:
            raise ChainError(f"{newest.manifest}: {e.detail}") from None
        s.adopt_newest(manifest, ovf, info)
        self.chain, self.steps = chain, steps
        s.note(
            "chain complete: "
            + " -> ".join(f"{x.set_type} {x.set_id}" for x in chain)
            + f"; {sum(len(v) for v in steps.values())} file(s) to apply"
        )
        self.decided.set()

    async def _check_delta(self, f: RestoreFile, dl: DiskLink) -> int:
        """Check the staged delta ``f`` against ``dl``; the file size its data needs."""
        staged = f.staged
        assert staged is not None
        if f.size > max_delta_size(dl.size):
            raise ChainError(
                f"{dl.file} is {f.size} bytes: larger than any qcow2 delta of a {dl.size}-byte disk"
            )
        with staged.reading(f.size) as read_at:
            check_delta(read_at, dl)  # the header: the first cluster only
            return await parse(
                delta_end,
                read_at,
                dl,
                file_size=f.size,
                size=f.size,
                inline_below=DELTA_OFFLOAD_BYTES,
            )

    # -- applying -----------------------------------------------------------------------

    async def apply(self, d: RestoreDisk, stream: UploadStream) -> None:
        """Roll ``d``'s upload forward with the chain's files, oldest first."""
        if not self.active:
            return
        steps = self.steps.get(d.set_disk.id, [])
        if not steps:
            return
        await stream.drain()

        async def zero(offset: int, length: int) -> None:
            end = offset + length
            for pos in range(offset, end, _STEP_BYTES):
                await stream.write(pos, _zeros(min(_STEP_BYTES, end - pos)))

        for dl, f in steps:
            staged = f.staged
            if staged is None:
                raise ChainError(f"{dl.file} was removed before it was applied")
            if dl.file_format == "qcow2":
                with staged.reading(f.size) as read_at:
                    stats = await apply_delta(
                        read_at,
                        write=stream.write,
                        zero=zero,
                        chunk_bytes=_STEP_BYTES,
                        file_size=f.size,
                        run_sync=parser_for(f.size),
                    )
                text = f"{stats.data_bytes} bytes of data, {stats.zero_bytes} zeroed"
            else:
                pos = 0
                with staged.reading(dl.size) as read_at:
                    for start, end in [*staged.ranges(), (dl.size, dl.size)]:
                        end = min(end, dl.size)
                        if start > pos:
                            await zero(pos, start - pos)
                        for p in range(start, end, _STEP_BYTES):
                            await stream.write(p, read_at(p, min(_STEP_BYTES, end - p)))
                        pos = max(pos, end)
                text = "whole disk replaced"
            await stream.drain()
            self.host.note(f"applied {dl.file} to {d.set_disk.alias}: {text}")
