"""``Engine`` (the async facade) and ``open_engine`` (its async context manager).

Composes the feature mixins; owns nothing else. See CONTRACT.md for the
methods and their waiting semantics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from rhvfs.config import Config
from rhvfs.engine._restore import RestoreMixin
from rhvfs.engine._snapshots import SnapshotsMixin
from rhvfs.engine._system import SystemMixin
from rhvfs.engine._transfers import TransfersMixin
from rhvfs.retry import RetryPolicy

log = logging.getLogger(__name__)


class Engine(TransfersMixin, SnapshotsMixin, RestoreMixin, SystemMixin):
    """Async access to one oVirt engine; every method returns ``rhvfs.engine.types`` values."""


@contextlib.asynccontextmanager
async def open_engine(
    config: Config,
    *,
    connections: int = 2,
    poll: RetryPolicy | None = None,
    retry: RetryPolicy | None = None,
    request_timeout_s: float | None = None,
) -> AsyncIterator[Engine]:
    """Yield an ``Engine`` for ``config``; logs out and closes its connections on exit.

    No request is made until the first call (SSO happens lazily, per connection).
    ``poll`` tunes how entity waits poll (default ``RetryPolicy.for_polling``
    with ``system_timeout``; tests use short intervals); ``retry`` overrides the
    ``system_*`` settings of ``config``. Both are ``rhvfs.retry.RetryPolicy``.
    """
    engine = Engine(
        config, connections=connections, poll=poll, retry=retry, request_timeout_s=request_timeout_s
    )
    log.info("engine %s as %s (%d connections)", config.api_url, config.username, connections)
    try:
        yield engine
    finally:
        await engine.aclose()
