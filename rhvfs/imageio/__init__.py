"""The ovirt-imageio data-plane client (the only package that imports httpx).

See CONTRACT.md. Public names are re-exported here; modules starting with an
underscore are private.
"""

from rhvfs.imageio._client import (
    BulkMode,
    ClientStats,
    ImageioClient,
    make_ssl_context,
    open_imageio,
)
from rhvfs.imageio._translate import DirtyUnsupported
from rhvfs.imageio.types import Capabilities, Extent, parse_extents, validate_extents

__all__ = [
    "BulkMode",
    "Capabilities",
    "ClientStats",
    "DirtyUnsupported",
    "Extent",
    "ImageioClient",
    "make_ssl_context",
    "open_imageio",
    "parse_extents",
    "validate_extents",
]
