"""Waiting for a condition with a deadline, in synchronous tests (polling, monotonic clock).

``wait_for`` returns the condition's first truthy value or fails the test
naming what it waited for; ``wait_until`` returns whether the condition came
true in time (for callers that go on either way, or assert with their own
message). Async tests wait on trio instead (``trio.fail_after``).
Must not: sleep without a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str, fn: Callable[[], T], timeout_s: float = 60.0, *, interval_s: float = 0.05
) -> T:
    """Poll ``fn`` until it returns something truthy (returned); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def wait_until(
    predicate: Callable[[], object], timeout_s: float = 60.0, *, interval_s: float = 0.2
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passed; its last answer as a bool."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
