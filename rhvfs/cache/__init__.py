"""Block cache and prefetch for image reads (does not know about the engine).

See rhvfs/imageio/CONTRACT.md. Public names are re-exported here; modules
starting with an underscore are private.
"""

from rhvfs.cache._extents import ExtentMap
from rhvfs.cache._reader import BlockSource, ImageReader, ReaderStats
from rhvfs.cache._retry import RetryPolicy, retry_transient

__all__ = [
    "BlockSource",
    "ExtentMap",
    "ImageReader",
    "ReaderStats",
    "RetryPolicy",
    "retry_transient",
]
