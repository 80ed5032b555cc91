"""Where a restore's heavy, blocking work on untrusted input runs: off the event loop.

Parsing what a restore received (a manifest, an OVF, a qcow2 delta's tables)
is synchronous. Small inputs are parsed inline (a worker thread costs more
than they do); bigger ones (``OFFLOAD_BYTES`` of text, ``DELTA_OFFLOAD_BYTES``
of delta) in a worker thread, so the mount keeps answering while it runs. Parsers of untrusted input run one at a time
(``parse``: one capacity limiter per trio run), which also bounds the memory
their transient structures take.

Must not: parse anything itself, or know what the work is for.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from trio.lowlevel import RunVar

T = TypeVar("T")

#: Parsing text (JSON, XML) smaller than this (bytes) runs inline on the event loop.
OFFLOAD_BYTES = 256 * 1024
#: Parsing a qcow2 delta smaller than this runs inline (its cost is one read per table:
#: a file this size holds at most 64 tables of 64 KiB clusters).
DELTA_OFFLOAD_BYTES = 4 * 1024 * 1024

_PARSERS: RunVar[trio.CapacityLimiter] = RunVar("rhvfs_restore_parsers")


def _parser_limiter() -> trio.CapacityLimiter:
    try:
        return _PARSERS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(1)
        _PARSERS.set(limiter)
        return limiter


async def parse(
    fn: Callable[..., T], *args: Any, size: int, inline_below: int = OFFLOAD_BYTES, **kwargs: Any
) -> T:
    """``fn(*args, **kwargs)``: inline for an input of fewer than ``inline_below`` bytes,
    else in a worker thread, one parser at a time."""
    call = functools.partial(fn, *args, **kwargs)
    if size < inline_below:
        return call()
    return await trio.to_thread.run_sync(call, limiter=_parser_limiter())


def parser_for(size: int, inline_below: int = DELTA_OFFLOAD_BYTES) -> Callable[..., Awaitable[Any]]:
    """A ``run_sync(fn, *args)`` coroutine function for parsing a file of ``size`` bytes
    (``apply_delta``'s ``run_sync``): inline when it is small, in a worker thread otherwise."""

    async def run_sync(fn: Callable[..., T], *args: Any) -> T:
        return await parse(fn, *args, size=size, inline_below=inline_below)

    return run_sync
