"""One disk of an incremental set: its plan and its image transfer.

``SetDiskPlan`` says how a disk appears in the set (delta or full data, file
name, backing file, the snapshot volume it is read from, and whether only that
volume's own layer is read); ``IncrementalDiskChannel`` is
the disk's ``TransferChannel`` (shared with the full-backup session) plus what
only an incremental set does: opening with retries of transient failures, and
a reader over the disk or over its delta. It sees its session only through
``ChannelSession`` (the session module imports this one, never the reverse).

Must not: decide a disk's mode or size (the session plans that), touch the
engine backup, the snapshot or the chain state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol, cast

import trio

from rhvfs.backupset import Qcow2Delta
from rhvfs.engine.types import Disk
from rhvfs.errors import (
    SessionClosed,
)
from rhvfs.retry import RetryPolicy, retry
from rhvfs.sessions.core._ports import BlockSource
from rhvfs.sessions.core._transfer_channel import ChannelDeps, TransferChannel

log = logging.getLogger(__name__)

OPEN_TRIES = 3


class DirtyClient(Protocol):
    """The imageio client calls a set needs (``rhvfs.imageio.ImageioClient``)."""

    @property
    def capabilities(self) -> Any: ...
    async def extents(self, context: Literal["zero", "dirty"] = "zero") -> Sequence[Any]: ...
    async def read_into(self, offset: int, buf: memoryview) -> None: ...


class ChannelSession(Protocol):
    """What a channel uses of its ``IncrementalSession``."""

    @property
    def deps(self) -> ChannelDeps: ...
    @property
    def session_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def set_id(self) -> str: ...
    @property
    def backup_id(self) -> str: ...
    def note(self, message: str, *, error: bool) -> None: ...
    def disk_budget(self) -> int: ...


@dataclasses.dataclass
class SetDiskPlan:
    """How one disk appears in a set."""

    disk: Disk
    mode: Literal["full", "incremental"]
    file: str
    key: str
    reason: str | None = None  # why full
    delta: Qcow2Delta | None = None
    backing_file: str | None = None
    snapshot_image_id: str | None = None  # read through a snapshot's volume
    #: read only that volume's own layer (a snapshot-chain delta), not the disk below it
    shallow: bool = False
    dirty_bytes: int = 0


class IncrementalDiskChannel(TransferChannel):
    """One disk's image transfer inside an incremental session; the reader's ``BlockSource``."""

    def __init__(self, session: ChannelSession, plan: SetDiskPlan) -> None:
        super().__init__(disk=plan.disk, deps=session.deps, session_id=session.session_id)
        self.session = session
        self.plan = plan

    def _check_serving(self) -> None:
        if self.session.state != "ready":
            raise SessionClosed(f"set {self.session.set_id} is {self.session.state}")

    def _transfer_target(self) -> dict[str, Any]:
        if self.plan.snapshot_image_id:
            target: dict[str, Any] = {"snapshot_image_id": self.plan.snapshot_image_id}
            if self.plan.shallow:
                target["shallow"] = True
            return target
        return {"disk_id": self.plan.disk.id, "backup_id": self.session.backup_id}

    def _transfer_label(self) -> str:
        return f"set {self.session.set_id or self.session.backup_id}"

    def _note_error(self, message: str) -> None:
        self.session.note(message, error=True)

    async def open(self) -> DirtyClient:
        """Start the transfer and open its imageio client; transient failures start a new one."""
        policy = RetryPolicy(
            tries=OPEN_TRIES,
            interval_s=max(self.session.deps.config.system_interval, 0.05),
            max_interval_s=10.0,
            timeout_s=math.inf,  # the tries alone bound it
        )
        await retry(
            lambda _: self._recreate(self.generation),
            policy=policy,
            what=f"opening the transfer of disk {self.plan.disk.id}",
        )
        assert self.client is not None
        return cast(DirtyClient, self.client)

    async def start_reader(
        self,
        extents: Sequence[Any],
        *,
        nursery: trio.Nursery,
        size: int | None = None,
        source: BlockSource | None = None,
    ) -> None:
        """The prefetching reader: over the disk (guest offsets), or for a delta over
        ``DeltaSource`` (delta-file offsets of ``size`` bytes)."""
        self.reader = await self._new_reader(
            source if source is not None else self,
            size=self.plan.disk.provisioned_size if size is None else size,
            extents=extents,
            memory_budget=self.session.disk_budget(),
            nursery=nursery,
        )

    def statistics(self) -> dict[str, Any]:
        stats = self.reader.statistics() if self.reader is not None else None
        return {
            "disk_id": self.plan.disk.id,
            "mode": self.plan.mode,
            "file": self.plan.file,
            "transfer_id": self.transfer.id if self.transfer else None,
            "dirty_bytes": self.plan.dirty_bytes,
            "bytes_fetched": getattr(stats, "bytes_fetched", None),
            "cache_hits": getattr(stats, "cache_hits", None),
            "cache_waits": getattr(stats, "cache_waits", None),
            "keepalives": self.keepalives,
        }
