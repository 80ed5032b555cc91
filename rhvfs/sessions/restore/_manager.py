"""Every restore of a mount, and the nursery their engine work runs in.

``RestoreManager`` maps ``restore/<name>`` directories to ``RestoreSession``s
(``mkdir`` creates one, ``rmdir`` forgets it, rolling back an unfinished one)
and is the ``RestoreServices`` every session uses: the engine, the upload
opener, the bounded staging area, the memory budget of configuration files
(``_memory``), the nursery (``run`` owns it until
cancelled; then every unfinished restore is rolled back, shielded), the
timer settings (seconds, on trio's clock; the outcome and partial-set timeouts
come from the ``Config`` unless given), and the mount's journal, where each
restore records what it creates until it ends (``_journal``).

Must not: hold per-restore logic (``_session`` and its parts do); know about
inodes or FUSE; carry errno values (``errno_for`` is the mount's table, given
by the caller, used only to name the errno in ``.status``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from rhvfs.config import Config
from rhvfs.errors import (
    NotFound,
    RestoreBusy,
    RestoreCancelled,
    RestoreFailed,
    RestoreInputError,
    RestoreNameClash,
)
from rhvfs.sessions.core._events import EngineEvents
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.restore._memory import ConfigMemory
from rhvfs.sessions.restore._ports import RestoreEngine, UploadOpener, default_upload_opener
from rhvfs.sessions.restore._session import RestoreSession
from rhvfs.sessions.restore._staging import StagingArea
from rhvfs.sessions.restore._state import Phase

#: An image whose every byte is accounted for (written, or a hole the tool made) is
#: finalized once it stayed closed this long (seconds); tools that set the file's times
#: after writing it (tar, cp -a, rsync, restic, Bacula) complete it at once with that call.
#: A chain restore is settled after this long without directory activity.
CLOSE_GRACE_S = 5.0
#: An idle upload sends a flush this often, so the engine does not time the transfer out.
KEEPALIVE_S = 20.0
#: The engine's inactivity timeout of an upload transfer is at least this (seconds).
MIN_INACTIVITY_TIMEOUT_S = 60


class RestoreManager:
    """All restores of a mount, and the nursery their engine work runs in."""

    def __init__(
        self,
        engine: RestoreEngine,
        config: Config,
        *,
        errno_for: Callable[[BaseException], int],
        opener: UploadOpener | None = None,
        staging: StagingArea | None = None,
        close_grace_s: float = CLOSE_GRACE_S,
        keepalive_s: float = KEEPALIVE_S,
        outcome_timeout_s: float | None = None,
        partial_set_timeout_s: float | None = None,
        journal: Journal | None = None,
        events: EngineEvents | None = None,
    ) -> None:
        self.events = events
        self.close_grace_s = close_grace_s
        self.outcome_timeout_s = (
            config.outcome_timeout if outcome_timeout_s is None else outcome_timeout_s
        )
        self.partial_set_timeout_s = (
            config.partial_set_timeout if partial_set_timeout_s is None else partial_set_timeout_s
        )
        self.keepalive_s = keepalive_s
        self.engine = engine
        self.config = config
        #: the mount's journal (shared with the backup managers); None: restores are not journaled
        self.journal = journal
        self._errno_for = errno_for
        self.opener = opener or default_upload_opener(config)
        self.staging = staging or StagingArea(config.staging_dir, limit_bytes=config.staging_limit)
        self.config_memory = ConfigMemory(config.staging_memory)
        self.sessions: dict[str, RestoreSession] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The service: owns the nursery of every upload and VM creation until cancelled."""
        if self.journal is not None:
            self.journal.installation.hold()  # gc leaves this mount's restore entries alone
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for session in self.sessions.values():
                    await session.abandon("rhvfs stopped before the restore finished")
            self.staging.close()
            if self.journal is not None:
                self.journal.installation.release()

    # -- RestoreServices ------------------------------------------------------------

    @property
    def restore_defaults(self) -> Mapping[str, str]:
        return self.config.restore_defaults

    @property
    def inactivity_timeout_s(self) -> int:
        return max(self.config.inactivity_timeout, MIN_INACTIVITY_TIMEOUT_S)

    def errno_for(self, exc: BaseException) -> int:
        return self._errno_for(exc)

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RestoreFailed("the restore service is not running")
        return self._nursery

    def spawn(self, fn: Callable[[], Awaitable[object]]) -> None:
        self._require_nursery().start_soon(fn)

    async def start(self, fn: Callable[..., Awaitable[object]], *args: Any) -> Any:
        return await self._require_nursery().start(fn, *args)

    # -- the directories --------------------------------------------------------------

    def create(self, name: str) -> RestoreSession:
        """``mkdir restore/<name>``."""
        if name in self.sessions:
            raise RestoreNameClash(f"restore/{name} exists")
        if not name or name.startswith(".") or "/" in name:
            raise RestoreInputError(f"{name!r} is not a usable restore name")
        session = RestoreSession(self, name)
        self.sessions[name] = session
        session.note("created")
        return session

    def get(self, name: str) -> RestoreSession:
        try:
            return self.sessions[name]
        except KeyError:
            raise NotFound(f"restore/{name}") from None

    def remove(self, name: str) -> None:
        """``rmdir restore/<name>``: forget a restore; an unfinished one is cancelled and rolled back.

        Refused (``RestoreBusy``) only while the VM is being created: that step is short and
        cancelling it half-way would leave more to undo.
        """
        session = self.get(name)
        if session.phase is Phase.CREATING_VM:
            raise RestoreBusy(f"restore/{name} is creating the VM; wait until it is done")
        if session.phase in (Phase.RECEIVING, Phase.UPLOADING):
            session.fail(RestoreCancelled("cancelled: the restore directory was removed"))
        session.drop_staged()
        for f in session.files.values():
            f.release_memory()  # the directory is gone: its configuration files too
        del self.sessions[name]

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, s in self.sessions.items():
            doc = s.status()
            out[name] = {
                "phase": s.phase.value,
                "vm_id": s.vm_id,
                "error": s.error,
                "progress": doc["progress"],
                "disks": [
                    {
                        "alias": d["alias"],
                        "file": d["file"],
                        "state": d["state"],
                        "progress": d["progress"],
                    }
                    for d in doc["disks"]
                    if d["selected"]
                ],
            }
        return out
