"""Restore sessions: a backup set written into ``restore/<name>/`` becomes a VM again."""

from rhvfs.sessions.restore._containment import guard_session
from rhvfs.sessions.restore._files import RestoreFile
from rhvfs.sessions.restore._manager import RestoreManager
from rhvfs.sessions.restore._session import RestoreSession
from rhvfs.sessions.restore._state import DiskState, Phase
from rhvfs.sessions.restore._status import STATUS_FILE

__all__ = [
    "STATUS_FILE",
    "DiskState",
    "Phase",
    "RestoreFile",
    "RestoreManager",
    "RestoreSession",
    "guard_session",
]
