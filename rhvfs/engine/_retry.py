"""Retry transient engine failures with backoff, and poll entities until a condition holds.

Owns timing only: how many tries, how long to sleep, when to give up. It must
not know about the SDK (callers pass plain async callables that already raise
``rhvfs.errors``) and must not swallow non-transient errors.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from rhvfs.errors import EngineError, EngineUnavailable, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried. Times are seconds."""

    tries: int = 5
    interval_s: float = 1.0
    timeout_s: float = 300.0
    max_interval_s: float = 30.0

    def delay_s(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (1-based): interval doubling, capped."""
        return min(self.interval_s * (2 ** (attempt - 1)), self.max_interval_s)


@dataclasses.dataclass(frozen=True)
class PollPolicy:
    """How entity waits poll: start at ``first_s``, grow by ``factor`` up to ``max_s``."""

    first_s: float = 0.1
    max_s: float = 1.0
    factor: float = 1.5
    timeout_s: float = 300.0


async def retry_transient(
    fn: Callable[[int], Awaitable[T]],
    *,
    policy: RetryPolicy,
    what: str,
) -> T:
    """Call ``fn(attempt)`` (attempt starts at 0) until it succeeds or fails permanently.

    Transient errors (``rhvfs.errors.Transient``) are retried up to
    ``policy.tries`` attempts in total and within ``policy.timeout_s``; the last
    transient error is re-raised. Anything else propagates at once.
    """
    deadline = trio.current_time() + policy.timeout_s
    attempt = 0
    while True:
        try:
            return await fn(attempt)
        except EngineError as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            delay = policy.delay_s(attempt)
            if attempt >= policy.tries or trio.current_time() + delay > deadline:
                log.warning("%s: giving up after %d tries: %s", what, attempt, exc)
                raise
            log.info(
                "%s: transient failure (try %d/%d), retrying in %.1fs: %s",
                what,
                attempt,
                policy.tries,
                delay,
                exc,
            )
            await trio.sleep(delay)


async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    policy: PollPolicy,
    what: str,
) -> T:
    """Poll ``probe()`` until it returns something other than None; return that.

    ``probe`` raises to abort the wait (e.g. on a failed phase). Transient
    errors from the probe are tolerated until the deadline. On timeout raises
    ``EngineUnavailable``. The wait's duration is logged.
    """
    start = trio.current_time()
    deadline = start + policy.timeout_s
    delay = policy.first_s
    polls = 0
    last_transient: EngineError | None = None
    while True:
        polls += 1
        try:
            result = await probe()
        except EngineError as exc:
            if not is_transient(exc):
                log.info(
                    "%s: failed after %.2fs (%d polls): %s",
                    what,
                    trio.current_time() - start,
                    polls,
                    exc,
                )
                raise
            last_transient = exc
            result = None
        if result is not None:
            log.info("%s: done in %.2fs (%d polls)", what, trio.current_time() - start, polls)
            return result
        now = trio.current_time()
        if now >= deadline:
            suffix = f" (last error: {last_transient})" if last_transient else ""
            log.warning("%s: timed out after %.2fs (%d polls)%s", what, now - start, polls, suffix)
            raise EngineUnavailable(f"{what}: timed out after {policy.timeout_s:g}s{suffix}")
        await trio.sleep(min(delay, max(deadline - now, 0.0)))
        delay = min(delay * policy.factor, policy.max_s)
