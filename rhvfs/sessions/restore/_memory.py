"""The one memory budget of every restore of a mount: configuration files held in RAM.

Configuration files (manifests, OVFs, API XMLs, the options file and their
rsync temporary names) are kept in memory while a restore receives them, up
to ``CONFIG_MAX_BYTES`` each (``rhvfs.sessions.restore._files``). Their number
is the tool's choice, so all of them together -- across every restore of the
mount -- are bounded by ``staging_memory`` (``Config``): a write that would
pass it raises ``RestoreMemoryFull`` (ENOSPC; the restore fails and its
``.status`` says so, naming the setting). The budget counts the memory the
files really take (``sys.getsizeof`` of each buffer, with its growth
reserve), and keeps ``IN_FLIGHT_RESERVE`` of it for the writes on their way
in (pyfuse3 serves up to 99 requests at once, each holding its 128 KiB
request buffer and a copy of the data), so the mount's resident size stays
under ``staging_memory`` plus its baseline however many files are written at
once. A failed restore gives its files' memory back at once (it needs them no
more); a finished one when its directory is removed.

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


#: Part of the budget kept for write requests in flight (99 requests x 2 x 132 KiB, rounded
#: up): configuration files hold at most ``staging_memory`` minus this.
IN_FLIGHT_RESERVE = 32 * 1024 * 1024
#: The smallest ``staging_memory`` that leaves room for files (``Config`` checks it).
MIN_LIMIT_BYTES = 2 * IN_FLIGHT_RESERVE


class ConfigMemory:
    """The budget; files register on their first charge and drop out when they are gone."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        #: what the files may hold (the rest is for requests in flight)
        self.files_limit = max(0, limit_bytes - IN_FLIGHT_RESERVE)
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
        if used + need > self.files_limit:
            raise RestoreMemoryFull(
                f"{f.name!r}: {used + need} bytes of configuration files in memory would "
                f"exceed what staging_memory {self.limit_bytes} leaves them ({self.files_limit}; "
                "a set's configuration files take a few KiB: remove finished restore "
                "directories, or raise staging_memory)"
            )
