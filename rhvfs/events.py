"""The mount's recent errors, warnings and retries, as they happen, for status.json.

``RecentErrors`` is a ``logging.Handler`` the mount keeps on the ``rhvfs``
logger: every record at WARNING or above, and every record marked as a retry
(``extra=RETRY_RECORD``: ``rhvfs.retry`` marks its "retrying in" lines, a transfer
its recreation), becomes an entry ``{"time", "level", "what", "message"}`` in
a bounded ring, oldest first. ``level`` is ``error``, ``warning`` or
``retry``; ``what`` is the record's ``what`` (``extra={"what": ...}``) or
the logging module that wrote it, without the ``rhvfs.`` prefix (``fs``: a
filesystem call that failed, such as ``ls`` or ``cat`` while the engine is
unreachable; ``engine._core``, ``cache._reader``, ...).

So status.json shows what the log shows at WARNING, with no second path
through the code that could forget a case. Messages are redacted (error
texts may quote a ticket URL).

Must not: decide anything, or keep more than ``maxlen`` entries.
"""

from __future__ import annotations

import collections
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from rhvfs.redact import redact
from rhvfs.retry import RETRY_RECORD

__all__ = ["RETRY_RECORD", "RecentErrors"]
#: Entries kept.
MAX_ENTRIES = 100


class RecentErrors(logging.Handler):
    """The newest ``maxlen`` errors, warnings and retries logged under ``rhvfs``."""

    def __init__(self, maxlen: int = MAX_ENTRIES) -> None:
        super().__init__(level=logging.NOTSET)
        self._ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=maxlen)
        self._ring_lock = threading.Lock()  # records arrive from worker threads too
        self._counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        retry = all(getattr(record, k, None) == v for k, v in RETRY_RECORD.items())
        if record.levelno < logging.WARNING and not retry:
            return
        try:
            message = redact(record.getMessage())
        except Exception:  # a bad format string must not break logging
            message = redact(str(record.msg))
        level = "error" if record.levelno >= logging.ERROR else "retry" if retry else "warning"
        what = getattr(record, "what", None) or record.name.removeprefix("rhvfs.")
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": level,
            "what": str(what),
            "message": message,
        }
        with self._ring_lock:
            self._ring.append(entry)
            self._counts[level] += 1

    def list(self) -> list[dict[str, Any]]:
        """The entries, oldest first."""
        with self._ring_lock:
            return list(self._ring)

    def counts(self) -> dict[str, int]:
        """How many entries of each level were recorded in all (also those dropped since)."""
        with self._ring_lock:
            return dict(self._counts)
