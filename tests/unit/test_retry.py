"""rhvfs.retry: policy schedules, retry, poll and Backoff, on a MockClock (instant, exact).

Every test that sleeps runs under pytest-trio's ``autojump_clock``
(``MockClock(autojump_threshold=0)``), so times are asserted exactly; jitter is
drawn from a seeded ``random.Random`` and the expected schedule replayed from
the same seed.
"""

from __future__ import annotations

import ast
import pathlib
import random
from typing import Any

import pytest
import trio
import trio.testing

import rhvfs.retry
from rhvfs.errors import (
    Conflict,
    EngineUnavailable,
    ImageioUnavailable,
    SessionError,
    TicketGone,
)
from rhvfs.retry import Backoff, RetryPolicy, poll, retry

# Giving up and timing out are what many of these tests are about.
pytestmark = pytest.mark.allow_log("rhvfs.retry", "WARNING", match="giving up|timed out")


class Flaky:
    """Fails with ``errors`` in order, then returns ``value``; records call times and attempts."""

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


def _offsets(times: list[float], start: float) -> list[float]:
    return [round(t - start, 6) for t in times]


# -- RetryPolicy ------------------------------------------------------------------------


def test_delay_doubles_from_the_interval_up_to_the_cap() -> None:
    policy = RetryPolicy(interval_s=0.5, max_interval_s=3.0)
    assert [policy.delay_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_delay_grows_by_the_factor() -> None:
    policy = RetryPolicy.for_polling(interval_s=0.1, max_interval_s=1.0, factor=1.5)
    delays = [policy.delay_s(n) for n in range(1, 8)]
    assert delays == pytest.approx([0.1, 0.15, 0.225, 0.3375, 0.50625, 0.759375, 1.0])
    assert policy.tries is None


def test_delay_of_a_very_late_attempt_is_the_cap() -> None:
    # A long poll makes thousands of attempts: factor**n must not overflow.
    assert RetryPolicy(max_interval_s=7.0).delay_s(100_000) == 7.0
    assert RetryPolicy.for_polling().delay_s(10_000) == 1.0


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay_s(0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tries": 0},
        {"interval_s": -1.0},
        {"timeout_s": -1.0},
        {"max_interval_s": -0.1},
        {"factor": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_policies_are_frozen_values() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.tries = 3  # type: ignore[misc]
    assert policy == RetryPolicy()


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_jitter_only_shortens_the_delay_within_its_fraction(jitter: float) -> None:
    policy = RetryPolicy(interval_s=1.0, max_interval_s=8.0, jitter=jitter)
    rng = random.Random(7)
    for attempt in range(1, 200):
        base = policy.base_delay_s(attempt)
        delay = policy.delay_s(attempt, rng=rng)
        assert base * (1 - jitter) <= delay <= base
        assert delay <= policy.max_interval_s


def test_jitter_is_reproducible_from_the_seed() -> None:
    policy = RetryPolicy(interval_s=1.0, jitter=0.5)
    first = [policy.delay_s(n, rng=random.Random(42)) for n in range(1, 6)]
    again = [policy.delay_s(n, rng=random.Random(42)) for n in range(1, 6)]
    assert first == again
    assert first != [policy.base_delay_s(n) for n in range(1, 6)]


def test_no_jitter_draws_nothing() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    assert RetryPolicy(interval_s=2.0).delay_s(2, rng=rng) == 4.0
    assert rng.getstate() == state


# -- retry ------------------------------------------------------------------------------


async def test_retry_sleeps_the_policy_schedule(autojump_clock: trio.testing.MockClock) -> None:
    fn = Flaky([ImageioUnavailable("a"), EngineUnavailable("b"), ImageioUnavailable("c")])
    start = trio.current_time()
    assert await retry(fn, policy=RetryPolicy(tries=5, interval_s=1.0), what="x") == "ok"
    assert fn.attempts == [0, 1, 2, 3]
    assert _offsets(fn.times, start) == [0.0, 1.0, 3.0, 7.0]


async def test_retry_caps_the_interval(autojump_clock: trio.testing.MockClock) -> None:
    fn = Flaky([EngineUnavailable(str(i)) for i in range(5)])
    policy = RetryPolicy(tries=10, interval_s=1.0, max_interval_s=2.5)
    start = trio.current_time()
    await retry(fn, policy=policy, what="x")
    assert _offsets(fn.times, start) == [0.0, 1.0, 3.0, 5.5, 8.0, 10.5]


async def test_retry_gives_up_after_tries_with_the_last_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fn = Flaky([EngineUnavailable(str(i)) for i in range(10)])
    start = trio.current_time()
    with pytest.raises(EngineUnavailable, match="2"):
        await retry(fn, policy=RetryPolicy(tries=3, interval_s=0.5), what="x")
    assert fn.attempts == [0, 1, 2]
    assert trio.current_time() - start == pytest.approx(1.5)  # no sleep after the last try


async def test_retry_with_one_try_never_sleeps(autojump_clock: trio.testing.MockClock) -> None:
    fn = Flaky([EngineUnavailable("down")])
    start = trio.current_time()
    with pytest.raises(EngineUnavailable):
        await retry(fn, policy=RetryPolicy(tries=1), what="x")
    assert fn.attempts == [0]
    assert trio.current_time() == start


async def test_retry_never_starts_a_try_past_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fn = Flaky([EngineUnavailable(str(i)) for i in range(20)])
    start = trio.current_time()
    with pytest.raises(EngineUnavailable, match="3"):
        await retry(fn, policy=RetryPolicy(tries=None, interval_s=1.0, timeout_s=7.0), what="x")
    # Sleeps 1, 2 and 4 end at 7 (the deadline itself is allowed); the next (8) would not fit.
    assert _offsets(fn.times, start) == [0.0, 1.0, 3.0, 7.0]
    assert trio.current_time() - start == pytest.approx(7.0)


async def test_retry_propagates_other_errors_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for error in (Conflict("locked"), TicketGone("expired"), ValueError("bug")):
        fn = Flaky([EngineUnavailable("blip"), error])
        start = trio.current_time()
        with pytest.raises(type(error)):
            await retry(fn, policy=RetryPolicy(tries=5, interval_s=1.0), what="x")
        assert fn.attempts == [0, 1]
        assert trio.current_time() - start == pytest.approx(1.0)


async def test_retry_on_chooses_what_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    def conflict_or_transient(exc: BaseException) -> bool:
        return isinstance(exc, (Conflict, EngineUnavailable))

    fn = Flaky([Conflict("locked"), EngineUnavailable("blip"), Conflict("locked")])
    policy = RetryPolicy(tries=5, interval_s=0.5)
    assert await retry(fn, policy=policy, what="x", retry_on=conflict_or_transient) == "ok"
    assert fn.attempts == [0, 1, 2, 3]

    only_conflicts = Flaky([EngineUnavailable("blip")])
    with pytest.raises(EngineUnavailable):
        await retry(
            only_conflicts,
            policy=policy,
            what="x",
            retry_on=lambda exc: isinstance(exc, Conflict),
        )
    assert only_conflicts.attempts == [0]


async def test_on_retry_sees_each_retried_error(autojump_clock: trio.testing.MockClock) -> None:
    errors: list[Exception] = [EngineUnavailable("a"), EngineUnavailable("b")]
    seen: list[BaseException] = []
    fn = Flaky(list(errors))
    await retry(fn, policy=RetryPolicy(tries=3, interval_s=0.1), what="x", on_retry=seen.append)
    assert seen == errors

    # The error that ends the retries is raised, not reported as a retry.
    seen.clear()
    failing = Flaky([EngineUnavailable("a"), EngineUnavailable("b")])
    with pytest.raises(EngineUnavailable, match="b"):
        await retry(
            failing, policy=RetryPolicy(tries=2, interval_s=0.1), what="x", on_retry=seen.append
        )
    assert [str(e) for e in seen] == [str(EngineUnavailable("a"))]


async def test_retry_jitter_is_exact_with_a_seeded_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = RetryPolicy(tries=6, interval_s=1.0, max_interval_s=4.0, jitter=0.5)
    replay = random.Random(1234)
    expected = [0.0]
    for attempt in range(1, 6):
        expected.append(expected[-1] + policy.delay_s(attempt, rng=replay))

    fn = Flaky([EngineUnavailable(str(i)) for i in range(5)])
    start = trio.current_time()
    await retry(fn, policy=policy, what="x", rng=random.Random(1234))
    assert _offsets(fn.times, start) == [round(t, 6) for t in expected]
    gaps = [b - a for a, b in zip(fn.times, fn.times[1:], strict=False)]
    for attempt, gap in enumerate(gaps, start=1):
        base = policy.base_delay_s(attempt)
        assert base * 0.5 <= gap + 1e-9 and gap <= base + 1e-9


async def test_retry_jitter_is_judged_against_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Unjittered, the third sleep (4 s) would not fit in 6 s; jittered it may.
    policy = RetryPolicy(tries=None, interval_s=1.0, timeout_s=6.0, jitter=0.5)
    replay = random.Random(99)
    expected = [0.0]
    attempt = 1
    while True:
        delay = policy.delay_s(attempt, rng=replay)
        if expected[-1] + delay > policy.timeout_s:
            break
        expected.append(expected[-1] + delay)
        attempt += 1

    fn = Flaky([EngineUnavailable(str(i)) for i in range(50)])
    start = trio.current_time()
    with pytest.raises(EngineUnavailable):
        await retry(fn, policy=policy, what="x", rng=random.Random(99))
    assert _offsets(fn.times, start) == [round(t, 6) for t in expected]
    assert fn.times[-1] - start <= policy.timeout_s


async def test_cancellation_during_the_backoff_sleep_stops_retrying(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fn = Flaky([EngineUnavailable(str(i)) for i in range(10)])
    start = trio.current_time()
    with trio.move_on_after(2.5) as scope:
        await retry(fn, policy=RetryPolicy(tries=10, interval_s=1.0), what="x")
    assert scope.cancelled_caught
    assert _offsets(fn.times, start) == [0.0, 1.0]
    assert trio.current_time() - start == pytest.approx(2.5)


async def test_cancellation_inside_the_call_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    async def slow(attempt: int) -> str:
        nonlocal calls
        calls += 1
        await trio.sleep(10)
        return "late"

    with trio.move_on_after(1.0) as scope:
        await retry(slow, policy=RetryPolicy(tries=5, interval_s=0.1), what="x")
    assert scope.cancelled_caught
    assert calls == 1


async def test_base_exceptions_are_never_retried(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def interrupted(attempt: int) -> None:
        nonlocal calls
        calls += 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await retry(interrupted, policy=RetryPolicy(), what="x", retry_on=lambda exc: True)
    assert calls == 1


# -- poll -------------------------------------------------------------------------------


async def test_poll_returns_the_first_result(autojump_clock: trio.testing.MockClock) -> None:
    results: list[str | None] = [None, None, None, "done"]
    times: list[float] = []

    async def probe() -> str | None:
        times.append(trio.current_time())
        return results.pop(0)

    start = trio.current_time()
    policy = RetryPolicy.for_polling(interval_s=0.1, max_interval_s=0.2, factor=1.5)
    assert await poll(probe, policy=policy, what="w", timeout_error=SessionError) == "done"
    assert _offsets(times, start) == [0.0, 0.1, 0.25, 0.45]


async def test_poll_looks_a_last_time_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []

    async def probe() -> str | None:
        times.append(trio.current_time())
        return None

    start = trio.current_time()
    policy = RetryPolicy.for_polling(interval_s=1.0, max_interval_s=2.0, factor=2.0, timeout_s=4.0)
    with pytest.raises(SessionError, match=r"w: timed out after 4s$"):
        await poll(probe, policy=policy, what="w", timeout_error=SessionError)
    # Sleeps 1 and 2, then the third (2) is cut to end at the deadline (1 s).
    assert _offsets(times, start) == [0.0, 1.0, 3.0, 4.0]


async def test_poll_tolerates_retryable_errors_and_names_the_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    async def probe() -> str | None:
        nonlocal calls
        calls += 1
        raise EngineUnavailable(f"down {calls}")

    policy = RetryPolicy.for_polling(interval_s=0.5, max_interval_s=1.0, timeout_s=3)
    with pytest.raises(EngineUnavailable, match=r"timed out after 3s \(last error: .*down 5\)"):
        await poll(probe, policy=policy, what="w", timeout_error=EngineUnavailable)
    assert calls == 5  # t = 0, 0.5, 1.25, 2.25, 3.0


async def test_poll_aborts_on_other_errors(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def probe() -> str | None:
        nonlocal calls
        calls += 1
        if calls < 3:
            return None
        raise Conflict("finished_failure")

    start = trio.current_time()
    with pytest.raises(Conflict, match="finished_failure"):
        await poll(probe, policy=RetryPolicy.for_polling(), what="w", timeout_error=SessionError)
    assert calls == 3
    assert trio.current_time() - start == pytest.approx(0.1 + 0.15)


async def test_poll_with_a_try_limit_says_so(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def probe() -> str | None:
        nonlocal calls
        calls += 1
        return None

    policy = RetryPolicy(tries=3, interval_s=1.0, timeout_s=100.0)
    with pytest.raises(SessionError, match="w: no result after 3 polls"):
        await poll(probe, policy=policy, what="w", timeout_error=SessionError)
    assert calls == 3


async def test_poll_jitter_is_exact_with_a_seeded_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = RetryPolicy.for_polling(interval_s=0.2, max_interval_s=1.0, timeout_s=3.0, jitter=0.3)
    replay = random.Random(5)
    expected = [0.0]
    attempt = 1
    while expected[-1] < policy.timeout_s:
        delay = policy.delay_s(attempt, rng=replay)
        expected.append(min(expected[-1] + delay, policy.timeout_s))
        attempt += 1

    times: list[float] = []

    async def probe() -> str | None:
        times.append(trio.current_time())
        return None

    start = trio.current_time()
    with pytest.raises(SessionError):
        await poll(probe, policy=policy, what="w", timeout_error=SessionError, rng=random.Random(5))
    assert _offsets(times, start) == [round(t, 6) for t in expected]


# -- Backoff ----------------------------------------------------------------------------


async def test_backoff_yields_attempts_after_the_policy_sleeps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backoff = Backoff(RetryPolicy(tries=4, interval_s=1.0))
    seen: list[tuple[int, float]] = []
    start = trio.current_time()
    async for attempt in backoff:
        seen.append((attempt, trio.current_time() - start))
    assert seen == [(0, 0.0), (1, 1.0), (2, 3.0), (3, 7.0)]
    assert trio.current_time() - start == pytest.approx(7.0)  # no sleep after the last
    assert backoff.next_delay_s() is None


async def test_backoff_for_a_locked_entity_loop(autojump_clock: trio.testing.MockClock) -> None:
    # The shape of "retry while the entity is locked, then report": the body decides.
    outcomes: list[Exception | None] = [Conflict("locked"), Conflict("locked"), None]
    backoff = Backoff(RetryPolicy(tries=None, interval_s=0.5, timeout_s=60.0))
    done_at: float | None = None
    start = trio.current_time()
    async for _attempt in backoff:
        outcome = outcomes.pop(0)
        if outcome is None:
            done_at = backoff.elapsed_s
            break
    assert done_at == pytest.approx(1.5)
    assert trio.current_time() - start == pytest.approx(1.5)


async def test_backoff_next_delay_is_drawn_once_per_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backoff = Backoff(RetryPolicy(tries=3, interval_s=1.0, jitter=1.0), rng=random.Random(3))
    start = trio.current_time()
    async for attempt in backoff:
        if attempt == 0:
            peek = backoff.next_delay_s()
            assert peek is not None
            assert backoff.next_delay_s() == peek  # asking again draws nothing new
        if attempt == 1:
            assert trio.current_time() - start == pytest.approx(peek)


def test_backoff_blocking_iteration_uses_real_time() -> None:
    policy = RetryPolicy.for_polling(interval_s=0.01, max_interval_s=0.01, timeout_s=0.05)
    backoff = Backoff(policy, last_at_deadline=True)
    attempts = list(backoff)
    assert attempts == list(range(len(attempts)))
    assert 2 <= len(attempts) <= 7  # about 0.05 / 0.01 + 1 (sleeps last at least as long)
    assert backoff.elapsed_s >= 0.05


# -- layering ---------------------------------------------------------------------------


def test_retry_sits_at_the_bottom_layer() -> None:
    tree = ast.parse(pathlib.Path(rhvfs.retry.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert {name for name in imported if name.split(".")[0] == "rhvfs"} == {"rhvfs.errors"}
    assert {name.split(".")[0] for name in imported} <= {
        "__future__",
        "collections",
        "dataclasses",
        "logging",
        "math",
        "random",
        "rhvfs",
        "time",
        "trio",
        "typing",
    }


# -- the lines a retry logs ------------------------------------------------------------


async def test_a_retry_line_names_the_call_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An error whose text names the call already gets no second prefix; others get one."""
    caplog.set_level("INFO", logger="rhvfs.retry")
    fn = Flaky(
        [
            EngineUnavailable("list vms: cannot connect"),
            EngineUnavailable("connection refused"),
            EngineUnavailable("list vms: cannot connect"),
        ]
    )
    with pytest.raises(EngineUnavailable):
        await retry(fn, policy=RetryPolicy(tries=3, interval_s=1.0), what="list vms")
    lines = [r.getMessage() for r in caplog.records if r.name == "rhvfs.retry"]
    assert lines == [
        "engine unavailable: list vms: cannot connect (try 1/3), retrying in 1.00s",
        "list vms: engine unavailable: connection refused (try 2/3), retrying in 2.00s",
        "giving up after 3 tries: engine unavailable: list vms: cannot connect",
    ]
