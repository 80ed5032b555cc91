"""Retries of transient engine errors and polling waits, on a MockClock (instant, deterministic).

The engine retries with ``rhvfs.retry.retry`` and waits with ``rhvfs.retry.poll``
(timing out with ``EngineUnavailable``); the helpers' own tests are in test_retry.py.
"""

from __future__ import annotations

from typing import Any

import ovirtsdk4
import pytest
import trio
import trio.testing

from rhvfs.config import Config
from rhvfs.engine._core import EngineCore
from rhvfs.errors import Conflict, EngineError, EngineUnavailable
from rhvfs.retry import RetryPolicy, retry


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def wait(probe: Any, *, policy: RetryPolicy, what: str) -> Any:
    """``EngineCore.wait`` under ``policy`` (``rhvfs.retry.poll``, timing out with ``EngineUnavailable``)."""
    return await EngineCore(_config(), poll=policy).wait(probe, what)


class Flaky:
    """Fails with ``errors`` in order, then returns ``value``; records call times."""

    def __init__(self, errors: list[Exception], value: Any = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.times: list[float] = []
        self.attempts: list[int] = []

    async def __call__(self, attempt: int) -> Any:
        self.times.append(trio.current_time())
        self.attempts.append(attempt)
        if self.errors:
            raise self.errors.pop(0)
        return self.value


async def test_transient_errors_are_retried_with_doubling_backoff(autojump_clock) -> None:
    fn = Flaky([EngineUnavailable("a"), EngineUnavailable("b"), EngineUnavailable("c")])
    policy = RetryPolicy(tries=5, interval_s=1.0, timeout_s=300)
    start = trio.current_time()
    assert await retry(fn, policy=policy, what="x") == "ok"
    assert fn.attempts == [0, 1, 2, 3]
    assert [round(t - start, 3) for t in fn.times] == [0.0, 1.0, 3.0, 7.0]


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
async def test_gives_up_after_tries(autojump_clock) -> None:
    fn = Flaky([EngineUnavailable(str(i)) for i in range(10)])
    with pytest.raises(EngineUnavailable, match="2"):
        await retry(fn, policy=RetryPolicy(tries=3, interval_s=0.5, timeout_s=300), what="x")
    assert fn.attempts == [0, 1, 2]


@pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up")
async def test_gives_up_at_the_deadline(autojump_clock) -> None:
    fn = Flaky([EngineUnavailable(str(i)) for i in range(10)])
    start = trio.current_time()
    with pytest.raises(EngineUnavailable):
        await retry(fn, policy=RetryPolicy(tries=10, interval_s=1.0, timeout_s=5.0), what="x")
    # sleeps 1 and 2 fit in 5 s, the next (4) would not.
    assert fn.attempts == [0, 1, 2]
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_permanent_errors_are_not_retried(autojump_clock) -> None:
    fn = Flaky([Conflict("locked")])
    with pytest.raises(Conflict):
        await retry(fn, policy=RetryPolicy(), what="x")
    assert fn.attempts == [0]


async def test_engine_wait_polls_with_growing_interval(autojump_clock) -> None:
    results = [None, None, None, "done"]
    times: list[float] = []

    async def probe() -> str | None:
        times.append(trio.current_time())
        return results.pop(0)

    start = trio.current_time()
    policy = RetryPolicy.for_polling(interval_s=0.1, max_interval_s=0.2, factor=1.5, timeout_s=10)
    assert await wait(probe, policy=policy, what="w") == "done"
    assert [round(t - start, 3) for t in times] == [0.0, 0.1, 0.25, 0.45]


@pytest.mark.allow_log("rhvfs", "WARNING", match="timed out")
async def test_engine_wait_tolerates_transient_and_times_out(autojump_clock) -> None:
    calls = 0

    async def probe() -> str | None:
        nonlocal calls
        calls += 1
        raise EngineUnavailable("down")

    start = trio.current_time()
    with pytest.raises(EngineUnavailable, match="timed out after 3s"):
        await wait(
            probe,
            policy=RetryPolicy.for_polling(interval_s=0.5, max_interval_s=1.0, timeout_s=3),
            what="w",
        )
    assert trio.current_time() - start == pytest.approx(3.0)
    assert calls == 5  # t = 0, 0.5, 1.25, 2.25, 3.0


async def test_engine_wait_aborts_on_permanent_error(autojump_clock) -> None:
    async def probe() -> str | None:
        raise EngineError("finished_failure")

    with pytest.raises(EngineError, match="finished_failure"):
        await wait(probe, policy=RetryPolicy.for_polling(), what="w")


class FakePool:
    def __init__(self) -> None:
        self.acquired = 0
        self.released: list[bool] = []

    def acquire(self) -> object:
        self.acquired += 1
        return object()

    def release(self, conn: object, *, broken: bool = False) -> None:
        self.released.append(broken)

    def close(self) -> None:
        pass


def _config() -> Config:
    return Config(
        engine_url="https://engine.invalid",
        username="admin@internal",
        password="s3cret",
        system_tries=4,
        system_interval=2.0,
    )


async def test_engine_call_translates_retries_and_drops_broken_connections(autojump_clock) -> None:
    core = EngineCore(_config(), connections=2)
    pool = FakePool()
    core._pool = pool  # type: ignore[assignment]
    core.run_inline = True
    failures = [
        ovirtsdk4.Error("Error while sending HTTP request: (56, 'Recv failure')"),
        ovirtsdk4.Error("HTTP response code is 503."),
    ]
    failures[1].code = 503

    def sdk_call(conn: object) -> str:
        if failures:
            raise failures.pop(0)
        return "vm-list"

    start = trio.current_time()
    assert await core.call(sdk_call, "list vms") == "vm-list"
    assert trio.current_time() - start == pytest.approx(2.0 + 4.0)
    assert pool.released == [True, True, False]
    assert core.requests == 3


async def test_engine_call_does_not_retry_not_found(autojump_clock) -> None:
    core = EngineCore(_config())
    pool = FakePool()
    core._pool = pool  # type: ignore[assignment]
    core.run_inline = False  # this one goes through a real worker thread

    def sdk_call(conn: object) -> str:
        err = ovirtsdk4.NotFoundError("HTTP response code is 404.")
        err.code = 404
        raise err

    from rhvfs.errors import NotFound

    with pytest.raises(NotFound):
        await core.call(sdk_call, "get vm V")
    assert pool.released == [False]


async def test_config_repr_and_errors_never_show_the_password(autojump_clock) -> None:
    core = EngineCore(_config())
    pool = FakePool()
    core._pool = pool  # type: ignore[assignment]
    core.run_inline = True

    def sdk_call(conn: object) -> str:
        raise ovirtsdk4.AuthError(
            "Error during SSO authentication access_denied : Cannot authenticate user"
        )

    from rhvfs.errors import AuthenticationError

    with pytest.raises(AuthenticationError) as info:
        await core.call(sdk_call, "list vms")
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in repr(core.config)
