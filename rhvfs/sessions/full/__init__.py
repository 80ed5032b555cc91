"""Full backup sets read from one snapshot per owner: ``@rhv/`` and ``disks/``."""

from rhvfs.sessions.full._manager import BackupManager

__all__ = ["BackupManager"]
