"""``SetDates``: the dates a mount gave down VMs' and templates' sets, kept for the next mount.

A change the engine does not date (``Announcement.date_down``: the data
fingerprint moved while the stop time stayed) is dated when a mount notices
it. Kept only in memory, that date would be forgotten by the next mount, and a
change made while no mount ran would only move the fraction of a second that
whole-second tools (Bacula) never see. This file keeps, per owner, the data
fingerprint and the date the last mount showed, so the next mount goes on from
them: the same data keeps its date, changed data gets a new one.

The file is ``<journal name>.dates.json`` next to the journal (0600, replaced
atomically). Records are written in batches: at most once a minute while the
mount runs, and when the manager stops; a crash loses at most the last
minute's records (the next mount then dates those sets as a first mount would).

Must not: talk to the engine, raise on an unreadable or foreign file (it is a
hint: a broken file is logged and ignored), block the trio loop for long (it is
small: one short JSON record per owner).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path

from rhvfs.private import write_private

log = logging.getLogger(__name__)

#: Seconds between two writes of the file while records change.
FLUSH_INTERVAL_S = 60.0
_FORMAT = "rhvfs-set-dates-1"


@dataclasses.dataclass(frozen=True)
class SetDate:
    """What a mount last showed for an owner's set: for ``data_fp`` (``data_fingerprint``),
    times resting on ``second_s``, while the engine's own date was ``base_s``."""

    data_fp: str
    second_s: int
    base_s: int


class SetDates:
    """Owner id -> ``SetDate``, loaded once from ``path`` and written back in batches."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        """``path`` None: nothing is kept (tests, and mounts without a state directory)."""
        self.path = Path(path) if path is not None else None
        self._dates: dict[str, SetDate] | None = None
        self._dirty = False
        self._flushed_at = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def beside(cls, journal_path: str | os.PathLike[str]) -> SetDates:
        """The dates file next to a journal: ``<stem>.dates.json``."""
        journal = Path(journal_path)
        return cls(journal.with_name(f"{journal.stem}.dates.json"))

    def get(self, owner_id: str) -> SetDate | None:
        return self._load().get(owner_id)

    def put(self, owner_id: str, date: SetDate) -> None:
        """Remember ``date``; the file is written when a minute passed since the last write."""
        dates = self._load()
        if dates.get(owner_id) == date:
            return
        dates[owner_id] = date
        self._dirty = True
        if time.monotonic() - self._flushed_at >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Write the records if any changed since the last write (errors are logged)."""
        if self.path is None or not self._dirty or self._dates is None:
            return
        with self._lock:
            doc = {
                "format": _FORMAT,
                "sets": {k: dataclasses.asdict(v) for k, v in sorted(self._dates.items())},
            }
            try:
                write_private(self.path, json.dumps(doc, separators=(",", ":")) + "\n")
            except OSError as e:
                log.warning("could not keep set dates in %s: %s", self.path, e)
                return
            self._dirty = False
            self._flushed_at = time.monotonic()

    def _load(self) -> dict[str, SetDate]:
        if self._dates is not None:
            return self._dates
        self._dates = {}
        if self.path is None:
            return self._dates
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            if doc.get("format") != _FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            for owner_id, rec in doc["sets"].items():
                self._dates[str(owner_id)] = SetDate(
                    data_fp=str(rec["data_fp"]),
                    second_s=int(rec["second_s"]),
                    base_s=int(rec["base_s"]),
                )
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("ignoring set dates in %s: %s", self.path, e)
            self._dates = {}
        return self._dates
