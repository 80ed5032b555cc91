"""What a restore directory says about its set: the options, the manifest, the OVF.

Owns the configuration state of one restore: the options (frozen at the
first write of set data: the ``rhvfs-restore.conf`` file of the directory
over the mount defaults, ``_options``), the parsed manifest and OVF (checked
against each other), the name to restore to and the VM an overwrite
replaces. ``read_manifest`` runs every check before any engine change
(``_preflight``) and only then adopts the manifest and returns the disk
records the session keeps; a chain later swaps in its newest set
(``adopt_newest``).

Invariants (between awaits): ``options`` are set once and never change;
``manifest`` is set once by ``read_manifest`` (under its lock, after the
checks passed, in the same step that makes the disk records), then only
replaced by ``adopt_newest``.

Every file it reads is untrusted: the options file is bounded
(``OPTIONS_MAX_BYTES``), the manifest and OVF go through ``rhvfs.backupset``'s
bounded parsers, off the event loop when they are big (``_offload``).

Must not: change anything on the engine; touch files' data or uploads; know
when the set is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from rhvfs.backupset import (
    OVF_NAME,
    Manifest,
    OvfInfo,
    check_consistent,
    parse_manifest,
    parse_ovf,
)
from rhvfs.engine.types import Vm
from rhvfs.errors import RestoreBusy, RestoreError, RestoreInputError, RestoreTooLarge
from rhvfs.sessions.restore._files import RestoreDisk, RestoreFile
from rhvfs.sessions.restore._offload import parse
from rhvfs.sessions.restore._options import (
    OPTIONS_FILE,
    OPTIONS_MAX_BYTES,
    RestoreOptions,
    build_options,
    parse_lines,
)
from rhvfs.sessions.restore._ports import RestoreServices
from rhvfs.sessions.restore._preflight import check_options, preflight, target_name
from rhvfs.sessions.restore._state import DiskState


def is_options_file(f: RestoreFile) -> bool:
    return f.name == OPTIONS_FILE and f.disk is None


def _options_text(mem: bytearray) -> str:
    """The options file as text; one larger than ``OPTIONS_MAX_BYTES`` (written under a
    temporary name, then renamed) is refused before it is read."""
    if len(mem) > OPTIONS_MAX_BYTES:
        raise RestoreTooLarge(f"{OPTIONS_FILE} is larger than {OPTIONS_MAX_BYTES} bytes")
    return bytes(mem).decode("utf-8", "replace")


class SetConfig:
    """The configuration of one restore (see the module docstring)."""

    def __init__(
        self, services: RestoreServices, *, directory: str, note: Callable[[str], None]
    ) -> None:
        self._services = services
        self._directory = directory
        self._note = note
        self.options: RestoreOptions | None = None
        self.manifest: Manifest | None = None
        self.ovf: bytes | None = None
        self.ovf_info: OvfInfo | None = None
        self.target_name: str | None = None  # set once the manifest's checks begin
        self.overwrite_vm: Vm | None = None
        self._manifest_lock = trio.Lock()

    # -- options ---------------------------------------------------------------------

    def check_options_write(self, end: int) -> None:
        """A write into the options file, up to byte ``end``: only before they froze."""
        if self.options is not None:
            raise RestoreBusy(
                f"{OPTIONS_FILE} must be written before the set's data; the options are frozen"
            )
        if end > OPTIONS_MAX_BYTES:
            raise RestoreTooLarge(f"{OPTIONS_FILE} is larger than {OPTIONS_MAX_BYTES} bytes")

    def options_closed(self, f: RestoreFile) -> None:
        """The options file was closed: refused once frozen, else checked now (errors in
        it are plain ``RestoreError``s: the close fails with EIO, as it always did)."""
        assert f.mem is not None
        if self.options is not None:
            raise RestoreBusy(f"{OPTIONS_FILE} written after the set's data: too late")
        parse_lines(_options_text(f.mem), source=OPTIONS_FILE)

    def freeze_options(self, files: Iterable[RestoreFile]) -> None:
        """Fix the options (idempotent): the first write of set data calls this."""
        if self.options is not None:
            return
        file_values: dict[str, str] = {}
        for f in files:
            if is_options_file(f) and f.mem is not None:
                file_values = parse_lines(_options_text(f.mem), source=OPTIONS_FILE)
        try:
            self.options = build_options(
                defaults=self._services.restore_defaults, file_values=file_values
            )
        except RestoreError as e:
            raise RestoreInputError(e.detail) from None
        self._note("options frozen")

    # -- the OVF -------------------------------------------------------------------------

    def is_ovf(self, name: str) -> bool:
        return name == (self.manifest.ovf_file if self.manifest else OVF_NAME)

    async def ovf_closed(self, f: RestoreFile) -> None:
        """The OVF was closed: parse it (off the loop when big) and check it."""
        assert f.mem is not None
        ovf = bytes(f.mem)
        try:
            info = await parse(parse_ovf, ovf, size=len(ovf))
            if self.manifest is not None:
                check_consistent(self.manifest, info)
        except RestoreError as e:
            raise RestoreInputError(e.detail) from None
        self.ovf, self.ovf_info = ovf, info
        self._note(f"vm.ovf read: {self.ovf_info.name} ({self.ovf_info.vm_id})")

    # -- the manifest ----------------------------------------------------------------------

    async def read_manifest(
        self, f: RestoreFile, files: Iterable[RestoreFile]
    ) -> dict[str, RestoreDisk] | None:
        """Parse ``f`` as the set's manifest, freeze the options and run every check
        before any engine change; then adopt it and return its disk records (None when
        a manifest was adopted already). The caller installs the records before it awaits."""
        async with self._manifest_lock:
            if self.manifest is not None:
                return None
            assert f.mem is not None
            data = bytes(f.mem)
            try:
                manifest = await parse(parse_manifest, data, size=len(data))
                if self.ovf_info is not None:
                    check_consistent(manifest, self.ovf_info)
            except RestoreError as e:
                raise RestoreInputError(e.detail) from None
            self.freeze_options(files)
            opts = self.options
            assert opts is not None
            check_options(manifest, opts)
            self._note(
                f"manifest read: {manifest.kind} {manifest.owner_name} ({manifest.owner_id}), "
                f"{len(manifest.disks)} disk(s), {len(manifest.nics)} nic(s)"
            )
            self.target_name = target_name(manifest, opts, self._directory)
            self.overwrite_vm = await preflight(
                self._services.engine, manifest, opts, name=self.target_name, note=self._note
            )
            self.manifest = manifest
            disks: dict[str, RestoreDisk] = {}
            for d in manifest.disks:
                disk = RestoreDisk(set_disk=d, selected=opts.selects(d.id, d.alias))
                if not disk.selected:
                    disk.state = DiskState.SKIPPED
                disks[d.id] = disk
            return disks

    def adopt_newest(
        self,
        manifest: Manifest,
        ovf: bytes,
        ovf_info: OvfInfo,
        disks: Iterable[RestoreDisk],
    ) -> None:
        """A settled chain: the VM is made from its newest set (the disks keep their files)."""
        by_id = {d.id: d for d in manifest.disks}
        for disk in disks:
            disk.set_disk = by_id[disk.set_disk.id]
        self.manifest, self.ovf, self.ovf_info = manifest, ovf, ovf_info
