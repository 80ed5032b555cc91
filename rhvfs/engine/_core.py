"""The engine facade's plumbing: run SDK calls in threads, translate, retry, poll.

``EngineCore`` owns the connection pool, the capacity limiter and the retry and
poll policies. The feature mixins (inventory, snapshots, transfers, backups,
restore) build on ``call`` / ``call_once`` / ``wait``; they never touch threads
or SDK exceptions directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import ovirtsdk4
import trio

from rhvfs.config import Config
from rhvfs.engine._pool import ConnectionPool
from rhvfs.engine._translate import translate_errors
from rhvfs.errors import Conflict, EngineUnavailable, NotFound
from rhvfs.retry import RetryPolicy, poll, retry

log = logging.getLogger(__name__)

T = TypeVar("T")

LOGOUT_TIMEOUT_S = 10.0

SdkCall = Callable[[ovirtsdk4.Connection], T]

_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def call_kind(what: str) -> str:
    """What a call is, without its ids and names: ``"get vm <id>"``, ``"find vm <name>"``."""
    return _QUOTED.sub("<name>", _ID.sub("<id>", what))


class EngineCore:
    """Threads, translation, retries and waits shared by every facade method."""

    def __init__(
        self,
        config: Config,
        *,
        connections: int = 2,
        poll: RetryPolicy | None = None,
        retry: RetryPolicy | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.config = config
        self.retry_policy = retry or RetryPolicy(
            tries=config.system_tries,
            interval_s=config.system_interval,
            timeout_s=config.system_timeout,
        )
        self.poll_policy = poll or RetryPolicy.for_polling(timeout_s=config.system_timeout)
        timeout = (
            request_timeout_s
            if request_timeout_s is not None
            else min(config.system_timeout, 120.0)
        )
        self._pool = ConnectionPool(config, size=connections, request_timeout_s=timeout)
        self._limiter = trio.CapacityLimiter(connections)
        self.requests = 0  # statistics: SDK calls made
        self.calls_by_kind: Counter[str] = Counter()  # statistics: the same, by ``call_kind``
        # The latest VM/template listings (``InventoryMixin``; an entry answers only while
        # ``keeps_answer`` holds for the epoch its call began at).
        self._listings: dict[str, Any] = {}
        # ``changing``: the entities rhvfs is changing now, and for each entity it changed the
        # change count (``_change_epoch``) when a change of it last began or ended.
        self._changing: Counter[str] = Counter()
        self._change_epoch = 0
        self._changed_at: dict[str, int] = {}
        # transfer id -> disk id, learned when transfers are created or read, so a
        # finalize that meets 404 can still check the disk.
        self.transfer_disks: dict[str, str] = {}
        # Test seam: run SDK calls in the trio thread (for fakes under a MockClock,
        # where waiting on a worker thread would let the clock jump past deadlines).
        self.run_inline = False

    def _run(self, fn: SdkCall[T], what: str) -> T:
        """Worker-thread body: check out a connection, call, translate, check in."""
        broken = False
        engine = self.config.api_url
        with translate_errors(what, engine):
            conn = self._pool.acquire()
        try:
            with translate_errors(what, engine):
                return fn(conn)
        except EngineUnavailable:
            broken = True
            raise
        finally:
            self._pool.release(conn, broken=broken)

    async def call_once(self, fn: SdkCall[T], what: str) -> T:
        """Run one blocking SDK call in a worker thread; errors arrive as ``rhvfs.errors``.

        On cancellation the thread is abandoned: it finishes its request, puts
        its connection back and keeps its limiter token until then.
        """
        self.requests += 1
        self.calls_by_kind[call_kind(what)] += 1
        if self.run_inline:
            await trio.lowlevel.checkpoint()
            return self._run(fn, what)
        return await trio.to_thread.run_sync(
            self._run, fn, what, limiter=self._limiter, abandon_on_cancel=True
        )

    async def call(self, fn: SdkCall[T], what: str) -> T:
        """``call_once`` with transient failures retried (only for idempotent requests)."""

        async def attempt(_n: int) -> T:
            return await self.call_once(fn, what)

        return await retry(attempt, policy=self.retry_policy, what=what)

    async def retried(self, fn: Callable[[int], Awaitable[T]], what: str) -> T:
        """Retry an async ``fn(attempt)`` built from several calls (idempotent creates)."""
        return await retry(fn, policy=self.retry_policy, what=what)

    async def remove_retried(self, fn: SdkCall[Any], what: str) -> None:
        """A DELETE with retries: absent already is fine, and 409 on a retry means an
        earlier try took effect (the engine is removing it)."""

        async def attempt(n: int) -> None:
            try:
                await self.call_once(fn, what)
            except NotFound:
                return
            except Conflict:
                if n == 0:
                    raise
                log.info("%s: conflict on retry, assuming the removal is under way", what)

        await self.retried(attempt, what)

    async def wait_gone(self, get: Callable[[], Awaitable[object]], label: str) -> None:
        """Poll ``get`` until it answers 404."""

        async def probe() -> bool | None:
            try:
                await get()
            except NotFound:
                return True
            return None

        await self.wait(probe, f"wait for {label} to be removed")

    async def wait(
        self, probe: Callable[[], Awaitable[T | None]], what: str, *, timeout_s: float | None = None
    ) -> T:
        """Poll ``probe`` per the poll policy until it returns a value (``rhvfs.retry.poll``).

        Transient errors count as "not yet"; on timeout raises ``EngineUnavailable``.
        """
        policy = self.poll_policy
        if timeout_s is not None:
            policy = dataclasses.replace(policy, timeout_s=timeout_s)
        return await poll(probe, policy=policy, what=what, timeout_error=EngineUnavailable)

    async def aclose(self) -> None:
        """Log out of the engine and close every SDK connection.

        Bounded by ``LOGOUT_TIMEOUT_S``: an unreachable engine must not hold up
        an unmount; the token then simply expires on the engine side.
        """
        with trio.move_on_after(LOGOUT_TIMEOUT_S) as scope:
            scope.shield = True
            await trio.to_thread.run_sync(self._pool.close, abandon_on_cancel=True)
        if scope.cancelled_caught:
            log.warning("engine logout did not finish within %.0fs; leaving it", LOGOUT_TIMEOUT_S)

    def forget_listed(self, entity_id: str) -> None:
        """rhvfs changed this VM or template: no answer about it taken before (the latest
        listing's entry included) is kept or answered from."""
        self._change_epoch += 1
        self._changed_at[entity_id] = self._change_epoch

    @contextlib.contextmanager
    def changing(self, entity_id: str) -> Iterator[None]:
        """rhvfs changes this VM or template inside the block (a snapshot or backup of it
        begins or ends, its volumes change): no answer about it taken from the block's
        start to its end is kept as the latest listing's, even one whose call began
        before the block and returned after it (``keeps_answer``)."""
        self.forget_listed(entity_id)
        self._changing[entity_id] += 1
        try:
            yield
        finally:
            self._changing[entity_id] -= 1
            if self._changing[entity_id] <= 0:
                del self._changing[entity_id]
            self.forget_listed(entity_id)

    @property
    def change_epoch(self) -> int:
        """Taken before a call whose answer may be kept: see ``keeps_answer``."""
        return self._change_epoch

    def keeps_answer(self, entity_id: str, since_epoch: int) -> bool:
        """Whether an answer about ``entity_id`` from a call begun at ``since_epoch`` may be
        kept: rhvfs is not changing the entity, and no change of it began or ended since."""
        return entity_id not in self._changing and self._changed_at.get(entity_id, 0) <= since_epoch

    def statistics(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_by_kind": dict(sorted(self.calls_by_kind.items())),
            "connections_opened": self._pool.created,
            "threads_busy": self._limiter.borrowed_tokens,
        }
