"""``gather``: run a few calls concurrently and get their results in order.

The first failure cancels the others and is raised as itself (not wrapped in
an ``ExceptionGroup``), so callers catch rhvfs errors as usual. Used to fetch
an owner's data and to prepare a set's disks side by side.

Must not: retry, log or swallow anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


async def gather(*fns: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run the calls concurrently; results in order; the first error cancels the rest."""
    results: list[Any] = [None] * len(fns)

    async def one(i: int, fn: Callable[[], Awaitable[Any]]) -> None:
        results[i] = await fn()

    try:
        async with trio.open_nursery() as nursery:
            for i, fn in enumerate(fns):
                nursery.start_soon(one, i, fn)
    except BaseExceptionGroup as group:
        # Report the first real error as itself, not wrapped, so callers catch rhvfs errors.
        for exc in group.exceptions:
            if isinstance(exc, Exception):
                raise exc from None
        raise
    return results
