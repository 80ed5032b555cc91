"""``rhvfs ls [PATH]``: print the mount's tree without mounting (same VFS code).

Listing never starts a backup session, and ``-R`` does not descend into
directories whose listing starts an engine backup (``@rhv-incremental/`` and
friends; name them as PATH to list them). Output, one entry per line (for scripts):
``<path>/`` for directories, ``<path> -> <target>`` for symlinks, ``<path>``
for files; ``-l`` adds size and mtime columns; ``-R`` recurses (not through
symlinks).

Must not: mount anything or read image data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from rhvfs.commands.common import add_connection_args, config_from_args, run_trio, setup_logging
from rhvfs.config import Config
from rhvfs.errors import RhvfsError
from rhvfs.vfs.nodes import Kind, Node
from rhvfs.vfs.tree import Vfs


def format_node(path: str, node: Node, *, long: bool) -> str:
    if node.kind is Kind.DIR:
        text = path.rstrip("/") + "/"
    elif node.kind is Kind.LINK:
        text = f"{path} -> {node.target}"
    else:
        text = path
    if long:
        when = datetime.fromtimestamp(node.mtime_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        kind = {Kind.DIR: "d", Kind.LINK: "l", Kind.FILE: "-"}[node.kind]
        text = f"{kind} {node.size:>14} {when} {text}"
    return text


async def list_tree(
    vfs: Vfs,
    path: str,
    *,
    recursive: bool,
    long: bool,
    out: list[str],
    errors: list[str] | None = None,
) -> None:
    """Append the listing of ``path`` to ``out``; with ``errors``, a directory that
    fails to list is reported there and skipped (as ``ls -R`` does) instead of raising."""
    node = await vfs.resolve(path)
    base = "/" + path.strip("/")
    if node.kind is not Kind.DIR:
        out.append(format_node(base, node, long=long))
        return
    pending = [(base, node)]
    while pending:
        dir_path, dir_node = pending.pop(0)
        try:
            children = await vfs.listdir(dir_node.ino)
        except RhvfsError as e:
            if errors is None or dir_path == base:
                raise
            errors.append(f"rhvfs: cannot list {dir_path}: {e}")
            continue
        for child in children:
            child_path = f"{dir_path.rstrip('/')}/{child.name}"
            out.append(format_node(child_path, child, long=long))
            # Listing an incremental set starts an engine backup: inspect, don't act.
            if recursive and child.kind is Kind.DIR and not child.lists_with_side_effects:
                pending.append((child_path, child))


async def _run(config: Config, args: argparse.Namespace, out: list[str], errors: list[str]) -> None:
    from rhvfs.mount import MountOptions, open_backend

    options = MountOptions(mountpoint="", state_dir=args.state_dir)
    async with open_backend(config, options, gc_on_start=False) as backend:
        vfs = Vfs(
            backend.engine,
            backend.backups,
            listing_ttl_s=config.listing_ttl,
            owner_factory=backend.owner_factory,
        )
        await list_tree(
            vfs, args.path, recursive=args.recursive, long=args.long, out=out, errors=errors
        )


def cmd_ls(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rhvfs ls", description="Print the rhvfs tree without mounting."
    )
    add_connection_args(p)
    p.add_argument("-R", "--recursive", action="store_true")
    p.add_argument("-l", "--long", action="store_true")
    p.add_argument("path", nargs="?", default="/")
    args = p.parse_args(list(argv))
    setup_logging(debug=args.debug)
    if not args.debug:
        import logging

        logging.getLogger().setLevel(logging.WARNING)
    config = config_from_args(args)
    out: list[str] = []
    errors: list[str] = []
    run_trio(_run, config, args, out, errors)
    sys.stdout.write("".join(line + "\n" for line in out))
    sys.stderr.write("".join(line + "\n" for line in errors))
    return 1 if errors else 0
