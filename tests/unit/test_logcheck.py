"""The log check of tests/conftest.py: unexpected WARNING/ERROR records fail a test."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from tests.support.logcheck import LogCheck


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_allowances_cover_a_logger_and_its_children_up_to_a_level() -> None:
    check = LogCheck()
    check.allow("rhvfs.sessions", "WARNING", match="is suspended")
    check.allow("rhvfs.fs", logging.ERROR)
    for record in (
        _record("rhvfs.sessions.full._session", logging.WARNING, "VM a is suspended"),
        _record("rhvfs.fs", logging.ERROR, "getattr failed"),
        _record("rhvfs.fs", logging.WARNING, "open -> EBUSY"),
    ):
        check.handle(record)
    check.check("call")  # all covered: nothing raised
    for record in (
        _record("rhvfs.sessions", logging.ERROR, "VM a is suspended"),  # above the level
        _record("rhvfs.sessionsx", logging.WARNING, "VM a is suspended"),  # not a child
        _record("rhvfs.sessions", logging.WARNING, "something else"),  # no match
    ):
        check.handle(record)
    with pytest.raises(AssertionError) as err:
        check.check("call")
    lines = str(err.value).splitlines()
    assert lines[0] == "unexpected log records at WARNING or above during call:"
    assert [line.split(" (")[0].strip() for line in lines[1:4]] == [
        "ERROR rhvfs.sessions",
        "WARNING rhvfs.sessionsx",
        "WARNING rhvfs.sessions",
    ]
    check.check("teardown")  # each record is reported once


# Without the marker the autouse check fails this test ("not fine" is a WARNING).
@pytest.mark.allow_log("rhvfs.test_logcheck", match="^not fine$")
def test_info_records_are_not_collected() -> None:
    check = LogCheck()
    logger = logging.getLogger("rhvfs.test_logcheck")
    logging.getLogger().addHandler(check)
    try:
        logger.info("fine")
        logger.warning("not fine")
    finally:
        logging.getLogger().removeHandler(check)
    assert [r.getMessage() for r in check.records] == ["not fine"]


@pytest.mark.allow_log("rhvfs.test_logcheck", "WARNING", match="^declared")
def test_a_declared_warning_passes() -> None:
    logging.getLogger("rhvfs.test_logcheck.child").warning("declared by the marker")


def test_expect_log_declares_at_run_time(expect_log: Callable[..., None]) -> None:
    expect_log("rhvfs.test_logcheck", "ERROR")
    logging.getLogger("rhvfs.test_logcheck").error("declared by the fixture")
