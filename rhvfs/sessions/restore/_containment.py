"""Any exception inside a restore fails that restore only, never the mount.

A restore's background work (uploads, the chain's watch, the VM build, the
rollback) runs in the manager's nursery, which every restore of the mount
shares: an exception escaping one task there would cancel all of them and
stop the mount. ``contained`` wraps the services a session hands its parts,
so every task spawned or started through them runs guarded: an exception
(a bug, or an error class nobody expected from input that was never meant to
be seen) fails the session it belongs to -- ``RestoreFailed`` with one line
naming what happened, for ``.status`` -- and is logged with its traceback;
cancellation passes through. The filesystem calls are guarded the same way
by ``guard`` (``rhvfs.vfs.restore`` wraps each call into a session with it),
so the caller gets an errno (EIO) and the restore fails, instead of a
session left half-way.

Must not: decide anything about a restore besides "it failed"; swallow
``trio.Cancelled`` or other ``BaseException``s.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, cast

import trio

from rhvfs.errors import RestoreError, RestoreFailed, RhvfsError
from rhvfs.sessions.restore._ports import RestoreServices

log = logging.getLogger(__name__)

#: ``fail(exc)``: the session's ``fail`` (synchronous, idempotent).
Fail = Callable[[BaseException], None]


def as_failure(exc: BaseException) -> RestoreError:
    """The restore error an unexpected exception is recorded as (one line)."""
    if isinstance(exc, RestoreError):
        return exc
    if isinstance(exc, RhvfsError):
        return RestoreFailed(exc.detail or str(exc))
    text = " ".join(str(exc).split())[:200]
    return RestoreFailed(f"internal error: {type(exc).__name__}" + (f": {text}" if text else ""))


def _report(label: str, exc: Exception) -> None:
    if isinstance(exc, RhvfsError):
        log.debug("%s: %s", label, exc)  # an rhvfs error: .status says it
    else:
        log.error(
            "%s failed unexpectedly (the restore fails, the mount goes on)", label, exc_info=exc
        )


class _Contained:
    """``RestoreServices`` whose ``spawn`` and ``start`` guard the task (everything else is
    the wrapped services')."""

    def __init__(self, services: RestoreServices, fail: Fail, label: str) -> None:
        self._services = services
        self._fail = fail
        self._label = label

    def __getattr__(self, name: str) -> Any:
        return getattr(self._services, name)

    def _crashed(self, exc: Exception) -> None:
        _report(self._label, exc)
        try:
            self._fail(as_failure(exc))
        except Exception as e:  # failing needs the nursery: it may be gone at shutdown
            log.debug("%s: cannot record the failure: %s", self._label, e)

    def spawn(self, fn: Callable[[], Awaitable[object]]) -> None:
        self._services.spawn(functools.partial(self._guarded, fn))

    async def _guarded(self, fn: Callable[[], Awaitable[object]]) -> None:
        try:
            await fn()
        except Exception as e:
            self._crashed(e)

    async def start(self, fn: Callable[..., Awaitable[object]], *args: Any) -> Any:
        async def guarded(*a: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            status = _Status(task_status)
            try:
                await fn(*a, task_status=status)
            except Exception as e:
                self._crashed(e)
                if not status.done:  # not started yet: the starting call fails (not the nursery)
                    raise as_failure(e) from e

        return await self._services.start(guarded, *args)


class _Status:
    """A task status that remembers whether ``started`` was called."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        self.done = True
        self._inner.started(value)


def contained(services: RestoreServices, fail: Fail, *, label: str) -> RestoreServices:
    """``services`` whose background tasks fail the restore (via ``fail``) instead of the mount."""
    return cast(RestoreServices, _Contained(services, fail, label))


class _HasFail(Protocol):
    name: str

    def fail(self, exc: BaseException | str) -> None: ...


def guard_session(session: _HasFail | None) -> contextlib.AbstractContextManager[None]:
    """``guard`` around a filesystem call into ``session`` (a ``RestoreSession``)."""
    if session is None:
        return guard(None, "restore")
    return guard(session.fail, f"restore/{session.name}")


@contextlib.contextmanager
def guard(fail: Fail | None, label: str) -> Iterator[None]:
    """Around a filesystem call into a restore: an exception that is not an rhvfs error
    fails the restore (``fail``) and reaches the caller as ``RestoreFailed``."""
    try:
        yield
    except RhvfsError:
        raise
    except Exception as e:
        _report(label, e)
        failure = as_failure(e)
        if fail is not None:
            with contextlib.suppress(Exception):
                fail(failure)
        raise failure from e
