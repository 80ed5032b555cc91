"""What every kind of session shares: ports, lifecycle, transfer channel, cleanup, journal, gc.

Must not import from ``full``, ``incremental`` or ``restore`` (they build on it).
"""

from rhvfs.sessions.core._events import EngineEvents
from rhvfs.sessions.core._journal import Journal, JournalEntry, default_journal_path
from rhvfs.sessions.core._limits import EngineLimits, Limiter, Slot
from rhvfs.sessions.core._model import Owner, SetEntry

__all__ = [
    "EngineEvents",
    "EngineLimits",
    "Journal",
    "JournalEntry",
    "Limiter",
    "Owner",
    "SetEntry",
    "Slot",
    "default_journal_path",
]
