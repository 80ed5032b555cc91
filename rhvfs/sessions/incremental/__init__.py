"""Incremental, differential and since-checkpoint sets read from engine VM backups."""

from rhvfs.sessions.incremental._chainstate import ChainState
from rhvfs.sessions.incremental._manager import IncrementalManager

__all__ = ["ChainState", "IncrementalManager"]
