"""Backup (and, later, restore) sessions. See CONTRACT.md.

The backup half: ``BackupManager`` serves the files of a VM's or template's
``@rhv/`` and ``disks/`` from per-owner sessions (one snapshot, lazy transfers);
``Journal`` records what live sessions created so ``collect_garbage`` can clean
up after a killed process.
"""

from rhvfs.sessions.journal import Journal, JournalEntry, default_journal_path
from rhvfs.sessions.manager import BackupManager
from rhvfs.sessions.model import Owner, SetEntry

__all__ = ["BackupManager", "Journal", "JournalEntry", "Owner", "SetEntry", "default_journal_path"]
