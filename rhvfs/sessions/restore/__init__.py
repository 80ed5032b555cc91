"""Restore sessions: a backup set written into ``restore/<name>/`` becomes a VM again."""

from rhvfs.sessions.restore._session import (
    STATUS_FILE,
    RestoreFile,
    RestoreManager,
    RestoreSession,
)

__all__ = ["STATUS_FILE", "RestoreFile", "RestoreManager", "RestoreSession"]
