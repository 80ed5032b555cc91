"""rhvfs.vfs — the filesystem tree without FUSE.

``Vfs`` (tree.py) is the whole tree over an engine inventory and the backup
sessions: lazy directories cached for ``listing_ttl`` seconds (layout.py says
what each directory holds, inventory.py caches the engine's list calls), inode
numbers derived from engine ids (names.py, with the reversible name escaping),
and open handles. ``rhvfs.fs`` adapts it to pyfuse3; ``rhvfs ls`` walks it
directly. ``rhvfs.vfs.restore`` is the writable ``restore/`` subtree.
"""

from rhvfs.vfs.names import derive_inode, escape, unescape
from rhvfs.vfs.nodes import Kind, Node
from rhvfs.vfs.tree import Vfs

__all__ = ["Kind", "Node", "Vfs", "derive_inode", "escape", "unescape"]
