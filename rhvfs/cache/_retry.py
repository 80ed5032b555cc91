"""Retry transient data-plane failures with exponential backoff.

Owns timing only: how many tries, how long to sleep, when to give up. It must
not swallow non-transient errors (``TicketGone`` goes straight to the caller,
who recreates the transfer) and must not know what is being retried.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from rhvfs.errors import is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried. Times are seconds.

    ``tries`` attempts in total; the sleep before retry n (1-based) is
    ``interval_s * 2**(n-1)`` capped at ``max_interval_s``; no retry starts
    after ``timeout_s`` from the first attempt.
    """

    tries: int = 5
    interval_s: float = 1.0
    timeout_s: float = 300.0
    max_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ValueError("tries must be at least 1")
        if self.interval_s < 0 or self.timeout_s < 0 or self.max_interval_s < 0:
            raise ValueError("retry times must not be negative")

    def delay_s(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (1-based)."""
        return min(self.interval_s * (2 ** (attempt - 1)), self.max_interval_s)


async def retry_transient(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    what: str,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Await ``fn()`` until it succeeds, fails permanently, or the policy is exhausted.

    Errors deriving from ``rhvfs.errors.Transient`` are retried; the last one
    is re-raised when tries or time run out. Anything else propagates at once.
    """
    deadline = trio.current_time() + policy.timeout_s
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            delay = policy.delay_s(attempt)
            if attempt >= policy.tries or trio.current_time() + delay > deadline:
                log.warning("%s: giving up after %d tries: %s", what, attempt, exc)
                raise
            log.info(
                "%s: %s (try %d/%d), retrying in %.2fs", what, exc, attempt, policy.tries, delay
            )
            if on_retry is not None:
                on_retry(exc)
            await trio.sleep(delay)
