"""rhvfs.vfs — the filesystem tree without FUSE.

``Vfs`` (tree.py) is the one object the filesystem calls go to: it owns the
two parts of the tree, dispatches each call to the part owning the inode,
and keeps the one table of open handles. The parts are ``Subtree``s
(subtree.py): ``ReadOnlyTree`` (readonly.py), the whole tree over an engine
inventory and the backup sessions, with lazy directories cached for
``listing_ttl`` seconds (layout.py says what each directory holds,
inventory.py caches the engine's list calls) and inode numbers derived from
engine ids (names.py, with the reversible name escaping); and
``RestoreTree`` (restore.py), the writable ``restore/`` in front of the
restore sessions. ``rhvfs.fs`` adapts ``Vfs`` to pyfuse3; ``rhvfs ls`` walks
it directly.

Errors are ``rhvfs.errors`` classes; no module here imports pyfuse3 or
knows an errno value (``rhvfs.fs`` owns that table).
"""

from rhvfs.vfs.names import derive_inode, escape, unescape
from rhvfs.vfs.nodes import Attributes, Kind, Node
from rhvfs.vfs.tree import Vfs

__all__ = ["Attributes", "Kind", "Node", "Vfs", "derive_inode", "escape", "unescape"]
