"""Subcommands of ``rhvfs`` (mount, umount, status, ls, gc, ca); ``rhvfs.cli`` dispatches to them."""
