"""Backup and restore sessions. See CONTRACT.md.

- ``core``: what every session shares (ports, lifecycle, transfer channel,
  journal, garbage collection);
- ``full``: ``BackupManager``, full sets from one snapshot per owner;
- ``incremental``: ``IncrementalManager``, sets from engine VM backups;
- ``restore``: ``RestoreManager``, sets written into ``restore/``;
- ``SetRouter``: one face over full and incremental sets for the VFS.
"""

from rhvfs.sessions._router import SetRouter
from rhvfs.sessions.core import Journal, JournalEntry, Owner, SetEntry, default_journal_path
from rhvfs.sessions.full import BackupManager

__all__ = [
    "BackupManager",
    "Journal",
    "JournalEntry",
    "Owner",
    "SetEntry",
    "SetRouter",
    "default_journal_path",
]
