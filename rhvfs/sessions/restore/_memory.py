"""The one memory budget of every restore of a mount: configuration files held in RAM.

Configuration files (manifests, OVFs, API XMLs, the options file and their
rsync temporary names) are kept in memory while a restore receives them, up
to ``CONFIG_MAX_BYTES`` each (``rhvfs.sessions.restore._files``). Their number
is the tool's choice, so all of them together -- across every restore of the
mount -- are bounded by ``staging_memory`` (``Config``): a write that would
pass it raises ``RestoreMemoryFull`` (ENOSPC; the restore fails and its
``.status`` says so, naming the setting). The budget counts the memory the
files really take (``sys.getsizeof`` of each buffer, with its growth
reserve), so the mount's resident size stays under the budget plus its
baseline. A failed restore gives its files' memory back at once (it needs
them no more); a finished one when its directory is removed.

Must not: hold file data itself, or know about sessions or the engine.
"""

from __future__ import annotations

import sys
import weakref
from typing import Protocol

from rhvfs.errors import RestoreMemoryFull


class _Holder(Protocol):
    """A file whose bytes are held in memory (``RestoreFile``)."""

    name: str
    mem: bytearray | None


class ConfigMemory:
    """The budget; files register on their first charge and drop out when they are gone."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._files: weakref.WeakSet[_Holder] = weakref.WeakSet()

    @property
    def used_bytes(self) -> int:
        """The memory the configuration files of every restore take now (bytes)."""
        return sum(sys.getsizeof(m) for f in list(self._files) if (m := f.mem) is not None)

    def charge(self, f: _Holder, end: int) -> None:
        """``f``'s buffer is about to grow to ``end`` bytes: refused if that would pass the
        budget. A write that does not grow the buffer is always allowed."""
        mem = f.mem
        if mem is None or end <= len(mem):
            return
        self._files.add(f)
        grow = end - len(mem)
        need = grow + grow // 8 + 64  # a bytearray keeps up to 1/8 spare when it grows
        used = self.used_bytes
        if used + need > self.limit_bytes:
            raise RestoreMemoryFull(
                f"{f.name!r}: {used + need} bytes of configuration files in memory would "
                f"exceed staging_memory {self.limit_bytes} (a set's configuration files take "
                "a few KiB: remove finished restore directories, or raise staging_memory)"
            )
