"""``rhvfs ls [PATH]``: print the mount's tree without mounting (same VFS code).

Listing never starts a backup session, and ``-R`` does not descend into
directories whose listing starts an engine backup (``@rhv-incremental/`` and
friends; name them as PATH to list them). Output, one entry per line (for scripts):
``<path>/`` for directories, ``<path> -> <target>`` for symlinks, ``<path>``
for files; ``-l`` adds size and mtime columns; ``-R`` recurses (not through
symlinks). ``--json`` prints one JSON document instead: ``{"path", "entries",
"errors"}``, each entry ``{"path", "type" (directory|file|symlink), "size",
"mtime" (UTC, ISO 8601), "mtime_ns"}`` plus ``"target"`` for a symlink, and
``"engine": {"name", "version"}`` (the engine's product and version, null when
it does not say). A plain listing of ``/`` starts with one comment line naming
them: ``# engine: oVirt Engine 4.5.5-1.el8``.

Exit status: 0 when everything listed, 1 when the engine can't be reached or
refuses the credentials (checked first, with the same listing a mount makes
before it mounts: ``/vms``), when PATH does not exist, or when a directory of a
``-R`` listing failed (reported on stderr, the rest is still printed).

Must not: mount anything or read image data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rhvfs.commands.common import (
    add_connection_args,
    config_from_args,
    prepare_state_dir,
    run_trio,
    setup_logging,
)
from rhvfs.config import Config
from rhvfs.errors import RhvfsError
from rhvfs.redact import redact
from rhvfs.vfs.nodes import Kind, Node
from rhvfs.vfs.tree import Vfs

_JSON_TYPES = {Kind.DIR: "directory", Kind.FILE: "file", Kind.LINK: "symlink"}


def _utc(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_entry(path: str, node: Node) -> dict[str, Any]:
    """One entry of ``rhvfs ls --json``."""
    entry: dict[str, Any] = {
        "path": path,
        "type": _JSON_TYPES[node.kind],
        "size": node.size,
        "mtime": _utc(node.mtime_ns),
        "mtime_ns": node.mtime_ns,
    }
    if node.kind is Kind.LINK:
        entry["target"] = node.target
    return entry


def format_node(path: str, node: Node, *, long: bool) -> str:
    if node.kind is Kind.DIR:
        text = path.rstrip("/") + "/"
    elif node.kind is Kind.LINK:
        text = f"{path} -> {node.target}"
    else:
        text = path
    if long:
        when = _utc(node.mtime_ns)
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
    entries: list[dict[str, Any]] | None = None,
) -> None:
    """Append the listing of ``path`` to ``out`` (and, with ``entries``, its ``--json``
    entries there); with ``errors``, a directory that fails to list is reported there
    and skipped (as ``ls -R`` does) instead of raising."""

    def add(entry_path: str, entry: Node) -> None:
        out.append(format_node(entry_path, entry, long=long))
        if entries is not None:
            entries.append(json_entry(entry_path, entry))

    node = await vfs.resolve(path)
    base = "/" + path.strip("/")
    if node.kind is not Kind.DIR:
        add(base, node)
        return
    pending = [(base, node)]
    while pending:
        dir_path, dir_node = pending.pop(0)
        try:
            children = await vfs.listdir(dir_node.ino)
        except RhvfsError as e:
            if errors is None or dir_path == base:
                raise
            errors.append(f"cannot list {dir_path}: {e}")
            continue
        for child in children:
            child_path = f"{dir_path.rstrip('/')}/{child.name}"
            add(child_path, child)
            # Listing an incremental set starts an engine backup: inspect, don't act.
            if recursive and child.kind is Kind.DIR and not child.lists_with_side_effects:
                pending.append((child_path, child))


async def _run(
    config: Config,
    args: argparse.Namespace,
    out: list[str],
    errors: list[str],
    entries: list[dict[str, Any]],
    engine: dict[str, Any],
) -> None:
    from rhvfs.mount import MountOptions, open_backend

    options = MountOptions(mountpoint="", state_dir=args.state_dir)
    async with open_backend(config, options, gc_on_start=False) as backend:
        vfs = Vfs(
            backend.engine,
            backend.backups,
            listing_ttl_s=config.listing_ttl,
            owner_factory=backend.owner_factory,
        )
        # The top of the tree is static: fail here, as a mount does, when the engine
        # can't be reached or refuses us, not with a listing that looks fine.
        await vfs.listdir((await vfs.resolve("/vms")).ino)
        product = await vfs.inventory.engine_product()
        engine.update(name=product.name if product else None)
        engine.update(version=product.version if product else None)
        await list_tree(
            vfs,
            args.path,
            recursive=args.recursive,
            long=args.long,
            out=out,
            errors=errors,
            entries=entries,
        )


def cmd_ls(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rhvfs ls", description="Print the rhvfs tree without mounting."
    )
    add_connection_args(p)
    p.add_argument("-R", "--recursive", action="store_true")
    p.add_argument("-l", "--long", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    p.add_argument("path", nargs="?", default="/")
    args = p.parse_args(list(argv))
    setup_logging(debug=args.debug)
    if not args.debug:
        logging.getLogger().setLevel(logging.WARNING)
    prepare_state_dir(args.state_dir)
    config = config_from_args(args)
    out: list[str] = []
    errors: list[str] = []
    entries: list[dict[str, Any]] = []
    engine: dict[str, Any] = {}
    run_trio(_run, config, args, out, errors, entries, engine)
    errors = [redact(line) for line in errors]  # an engine error may quote a URL
    if args.json:
        doc = {"path": "/" + args.path.strip("/"), "entries": entries, "errors": errors}
        doc["engine"] = engine or None
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        if engine and args.path.strip("/") == "" and not errors:
            what = " ".join(str(v) for v in (engine["name"], engine["version"]) if v)
            out.insert(0, f"# engine: {what or 'unknown'}")
        sys.stdout.write("".join(line + "\n" for line in out))
    sys.stderr.write("".join(f"rhvfs: {line}\n" for line in errors))
    return 1 if errors else 0
