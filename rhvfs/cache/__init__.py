"""Block cache and prefetch for image reads (does not know about the engine).

See rhvfs/imageio/CONTRACT.md. Public names are re-exported here; modules
starting with an underscore are private.
"""

from rhvfs.cache._extents import ExtentMap
from rhvfs.cache._reader import BlockSource, ImageReader, ReaderStats
from rhvfs.cache._shared import SharedBudget

# The reader's retry policy, re-exported so ``rhvfs.cache`` callers need one import.
from rhvfs.retry import RetryPolicy

__all__ = [
    "BlockSource",
    "ExtentMap",
    "ImageReader",
    "ReaderStats",
    "RetryPolicy",
    "SharedBudget",
]
