"""Retry, backoff and deadlines: the one place that decides how long to wait and when to stop.

Owns timing only: ``RetryPolicy`` (tries, growing interval with a cap, an
overall deadline, jitter), ``Backoff`` (the attempts of one loop under a
policy, for loops that are not plain call-retries), ``retry`` (call again
while the error is retryable) and ``poll`` (call until a condition holds).
It must not know what is being retried (no SDK, no HTTP, no sessions) and must
never swallow an error its caller did not declare retryable. It sits at the
bottom of the dependency graph: it imports only ``rhvfs.errors``, the stdlib
and trio.

Two deadline rules, one per use:

* a **retry** never starts an attempt it cannot wait for: when the next sleep
  would end past the deadline it gives up at once (and re-raises the error);
* a **poll** looks one last time *at* the deadline: its last sleep is cut to
  end there, so a condition that became true just in time is still seen.

Jitter is drawn from a ``random.Random`` the caller may pass (tests pass a
seeded one, so schedules are exact under ``trio.testing.MockClock``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from rhvfs.errors import is_transient

__all__ = ["Backoff", "RetryPolicy", "poll", "retry"]

log = logging.getLogger(__name__)

#: ``extra=`` marking a log record as a retry (``rhvfs.events`` keeps those for status.json).
RETRY_RECORD = {"rhvfs_retry": True}

T = TypeVar("T")

# Shared default source of jitter: good enough to spread clients apart, never used for secrets.
_RANDOM = random.Random()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a loop retries or polls. Times are seconds.

    ``tries`` attempts in total (None: no limit, the deadline alone ends the
    loop). The sleep before retry ``n`` (1-based) is
    ``interval_s * factor**(n-1)`` capped at ``max_interval_s``, then shortened
    by up to ``jitter`` of itself (``0 <= jitter <= 1``; the sleep lies in
    ``(d * (1 - jitter), d]``, so the cap still holds). ``timeout_s`` is the
    deadline, counted from the first attempt.
    """

    tries: int | None = 5
    interval_s: float = 1.0
    timeout_s: float = 300.0
    max_interval_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.tries is not None and self.tries < 1:
            raise ValueError("tries must be at least 1 (or None for no limit)")
        if self.interval_s < 0 or self.timeout_s < 0 or self.max_interval_s < 0:
            raise ValueError("retry times must not be negative")
        if not self.factor >= 1.0:
            raise ValueError("factor must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")

    @classmethod
    def for_polling(
        cls,
        *,
        interval_s: float = 0.1,
        max_interval_s: float = 1.0,
        factor: float = 1.5,
        timeout_s: float = 300.0,
        jitter: float = 0.0,
    ) -> RetryPolicy:
        """A policy for waiting on a condition: no try limit, short growing interval."""
        return cls(
            tries=None,
            interval_s=interval_s,
            max_interval_s=max_interval_s,
            factor=factor,
            timeout_s=timeout_s,
            jitter=jitter,
        )

    def base_delay_s(self, attempt: int) -> float:
        """The sleep before retry number ``attempt`` (1-based), without jitter."""
        if attempt < 1:
            raise ValueError("attempt numbers of retries start at 1")
        try:
            grown = self.interval_s * self.factor ** (attempt - 1)
        except OverflowError:  # long polls: the cap was reached long ago
            grown = math.inf
        return min(grown, self.max_interval_s)

    def delay_s(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """The sleep before retry number ``attempt`` (1-based), jitter drawn from ``rng``."""
        base = self.base_delay_s(attempt)
        if self.jitter == 0.0 or base == 0.0:
            return base
        return base * (1.0 - self.jitter * (rng or _RANDOM).random())


class Backoff:
    """The attempts of one loop under a policy, for loops that are not plain call-retries.

    ``async for attempt in Backoff(policy): ...`` (under trio, on trio's clock)
    or ``for attempt in Backoff(policy): ...`` (blocking, on ``time.monotonic``)
    yields 0, 1, 2, ...: the first attempt at once, each later one after the
    policy's sleep. Iteration ends without sleeping when the tries are used up
    or the deadline rule (see the module docstring) allows no further attempt;
    the body ``return``s or ``break``s on success. The clock starts at the first
    attempt. ``last_at_deadline`` selects the poll rule instead of the retry rule.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        rng: random.Random | None = None,
        last_at_deadline: bool = False,
    ) -> None:
        self.policy = policy
        self.attempt = -1  # the attempt under way, 0-based; -1 before the first
        self.started_at = 0.0
        self._rng = rng
        self._last_at_deadline = last_at_deadline
        self._clock: Callable[[], float] = trio.current_time
        self._next: float | None = None  # the next sleep, drawn once per gap

    @property
    def deadline(self) -> float:
        """When the loop ends, on its clock."""
        return self.started_at + self.policy.timeout_s

    @property
    def elapsed_s(self) -> float:
        """Seconds since the first attempt started."""
        return self._clock() - self.started_at if self.attempt >= 0 else 0.0

    def next_delay_s(self) -> float | None:
        """The sleep before the next attempt, or None when the loop must stop now."""
        tries = self.policy.tries
        if tries is not None and self.attempt + 1 >= tries:
            return None
        if self._next is None:
            self._next = self.policy.delay_s(self.attempt + 1, rng=self._rng)
        now = self._clock()
        if self._last_at_deadline:
            if now >= self.deadline:
                return None
            return min(self._next, self.deadline - now)
        if now + self._next > self.deadline:
            return None
        return self._next

    def _start(self, clock: Callable[[], float]) -> int:
        self._clock = clock
        self.started_at = clock()
        self.attempt = 0
        return 0

    def _advance(self) -> int:
        self._next = None
        self.attempt += 1
        return self.attempt

    async def wait(self) -> bool:
        """Sleep until the next attempt and return True, or return False (no sleep) if none."""
        delay = self.next_delay_s()
        if delay is None:
            return False
        await trio.sleep(delay)
        self._advance()
        return True

    def wait_blocking(self) -> bool:
        """``wait`` for blocking code (outside trio): ``time.sleep`` instead of ``trio.sleep``."""
        delay = self.next_delay_s()
        if delay is None:
            return False
        time.sleep(delay)
        self._advance()
        return True

    def __aiter__(self) -> Backoff:
        return self

    async def __anext__(self) -> int:
        if self.attempt < 0:
            # No checkpoint here: the loop body's first await is the attempt itself.
            return self._start(trio.current_time)
        if not await self.wait():
            raise StopAsyncIteration
        return self.attempt

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> int:
        if self.attempt < 0:
            return self._start(time.monotonic)
        if not self.wait_blocking():
            raise StopIteration
        return self.attempt


async def retry(
    fn: Callable[[int], Awaitable[T]],
    *,
    policy: RetryPolicy,
    what: str,
    retry_on: Callable[[BaseException], bool] = is_transient,
    on_retry: Callable[[BaseException], None] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Await ``fn(attempt)`` (attempt 0, 1, ...) until it succeeds, fails for good, or time runs out.

    An ``Exception`` for which ``retry_on`` is true (default: the
    ``rhvfs.errors.Transient`` ones) is retried per ``policy`` and re-raised
    when the tries or the deadline run out; any other error propagates at once,
    and so does cancellation. ``on_retry(error)`` is called before each sleep.
    """
    backoff = Backoff(policy, rng=rng)
    async for attempt in backoff:
        try:
            return await fn(attempt)
        except Exception as exc:
            if not retry_on(exc):
                raise
            delay = backoff.next_delay_s()
            if delay is None:
                log.warning(
                    "%sgiving up after %d tries: %s",
                    _prefix(what, exc),
                    attempt + 1,
                    exc,
                    extra={"what": what},
                )
                raise
            log.info(
                "%s%s (try %d/%s), retrying in %.2fs",
                _prefix(what, exc),
                exc,
                attempt + 1,
                policy.tries if policy.tries is not None else "-",
                delay,
                extra={"what": what, **RETRY_RECORD},
            )
            if on_retry is not None:
                on_retry(exc)
    raise AssertionError("unreachable: a retry loop ends by returning or raising")


def _prefix(what: str, exc: BaseException) -> str:
    """``what: `` before an error's text, unless the text names it already (most of
    rhvfs's errors do: "engine unavailable: list vms: cannot connect ...")."""
    return "" if f"{what}:" in str(exc) else f"{what}: "


async def poll(
    probe: Callable[[], Awaitable[T | None]],
    *,
    policy: RetryPolicy,
    what: str,
    timeout_error: Callable[[str], Exception],
    retry_on: Callable[[BaseException], bool] = is_transient,
    rng: random.Random | None = None,
) -> T:
    """Await ``probe()`` until it returns something other than None; return that.

    ``probe`` raises to abort the wait; errors for which ``retry_on`` is true
    (default: transient ones) count as "not yet". The last probe runs at the
    deadline (or is the policy's last try); after it, ``timeout_error(message)``
    is raised (the message names the last tolerated error). The wait's duration
    is logged.
    """
    backoff = Backoff(policy, rng=rng, last_at_deadline=True)
    last_error: BaseException | None = None
    async for attempt in backoff:
        try:
            result = await probe()
        except Exception as exc:
            if not retry_on(exc):
                log.info(
                    "%s: failed after %.2fs (%d polls): %s",
                    what,
                    backoff.elapsed_s,
                    attempt + 1,
                    exc,
                )
                raise
            last_error = exc
            result = None
        if result is not None:
            log.info("%s: done in %.2fs (%d polls)", what, backoff.elapsed_s, attempt + 1)
            return result
    polls = backoff.attempt + 1
    suffix = f" (last error: {last_error})" if last_error is not None else ""
    log.warning("%s: timed out after %.2fs (%d polls)%s", what, backoff.elapsed_s, polls, suffix)
    if policy.tries is not None and polls >= policy.tries:
        raise timeout_error(f"{what}: no result after {polls} polls{suffix}")
    raise timeout_error(f"{what}: timed out after {policy.timeout_s:g}s{suffix}")
