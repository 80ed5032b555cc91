"""The mount's recent errors, warnings and retries (``rhvfs.events.RecentErrors``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from rhvfs.errors import EngineUnavailable
from rhvfs.events import RecentErrors
from rhvfs.retry import RetryPolicy, retry

TICKET_URL = "https://host:54322/images/0f3c1a2b-9d8e-4c7b-a6f5-0123456789ab"


@pytest.fixture
def recent() -> Iterator[RecentErrors]:
    handler = RecentErrors(maxlen=5)
    logger = logging.getLogger("rhvfs")
    level = logger.level
    logger.setLevel(logging.INFO)  # as a mount logs (setup_logging)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.allow_log("rhvfs", level="WARNING")
def test_retries_and_the_final_failure_are_recorded_as_they_happen(recent: RecentErrors) -> None:
    seen_during: list[list[str]] = []

    async def attempt(n: int) -> None:
        seen_during.append([e["level"] for e in recent.list()])
        raise EngineUnavailable("list vms: connection refused")

    async def main() -> None:
        with pytest.raises(EngineUnavailable):
            await retry(attempt, policy=RetryPolicy(tries=3, interval_s=1.0), what="list vms")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # each retry is visible before the next attempt
    assert seen_during == [[], ["retry"], ["retry", "retry"]]
    entries = recent.list()
    assert [(e["level"], e["what"]) for e in entries] == [
        ("retry", "list vms"),
        ("retry", "list vms"),
        ("warning", "list vms"),
    ]
    assert "connection refused" in entries[0]["message"] and "try 1/3" in entries[0]["message"]
    assert "giving up after 3 tries" in entries[2]["message"]
    assert recent.counts() == {"retry": 2, "warning": 1}
    assert all(e["time"].endswith("+00:00") for e in entries)


@pytest.mark.allow_log("rhvfs", level="ERROR")
def test_the_ring_is_bounded_redacted_and_skips_plain_info(recent: RecentErrors) -> None:
    log = logging.getLogger("rhvfs.cache._reader")
    log.info("an ordinary line")
    for i in range(7):
        log.warning("chunk %d: GET %s failed", i, TICKET_URL)
    log.error("read failed", extra={"what": "read of disk d1"})
    entries = recent.list()
    assert len(entries) == 5
    assert [e["message"].split(":")[0] for e in entries[:4]] == [f"chunk {i}" for i in range(3, 7)]
    assert entries[-1] == {**entries[-1], "level": "error", "what": "read of disk d1"}
    assert entries[0]["what"] == "cache._reader"
    assert all("0f3c1a2b" not in e["message"] for e in entries)
    assert recent.counts() == {"warning": 7, "error": 1}
