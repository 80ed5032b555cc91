"""Subcommands of ``rhvfs`` (mount, umount, status, ls, gc); ``rhvfs.cli`` dispatches to them."""
