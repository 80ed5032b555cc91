"""The check that fails a test which logs an unexpected WARNING or ERROR (as s3ql's tests do).

``LogCheck`` is a handler on the root logger (level WARNING) for the length of
one test; ``tests/conftest.py`` installs it (autouse fixture ``log_check``)
and fails the test when a record at WARNING or above was logged that no
allowance covers. A test that expects such records declares them with the
marker ``@pytest.mark.allow_log(logger, level="WARNING", match=None)`` (any
number of them) or, at run time, with the ``expect_log`` fixture (same
arguments). An allowance covers records of ``logger`` and its children, up
to ``level`` (allowing WARNING does not allow ERROR), whose message matches
the regular expression ``match`` (``re.search``) when one is given.

Only records logged in the test process are seen (not those of the
simulator's or a mount's subprocess). Must not: change what is logged.
"""

from __future__ import annotations

import dataclasses
import logging
import re


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Allowance:
    """Records of ``logger`` (and its children) up to ``level``, matching ``match``."""

    logger: str
    level: int
    match: str | None = None

    def covers(self, record: logging.LogRecord) -> bool:
        if self.logger not in ("", "root") and not (
            record.name == self.logger or record.name.startswith(self.logger + ".")
        ):
            return False
        if record.levelno > self.level:
            return False
        return self.match is None or re.search(self.match, record.getMessage()) is not None


class LogCheck(logging.Handler):
    """Collects WARNING+ records and says which ones no allowance covers."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.allowances: list[Allowance] = []
        self._checked = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def allow(self, logger: str, level: int | str = "WARNING", *, match: str | None = None) -> None:
        """Allow records of ``logger`` (and children) up to ``level`` matching ``match``."""
        self.allowances.append(Allowance(logger, _level(level), match))

    def unexpected(self) -> list[logging.LogRecord]:
        """Records not looked at yet that no allowance covers (each reported once)."""
        new = self.records[self._checked :]
        self._checked = len(self.records)
        return [r for r in new if not any(a.covers(r) for a in self.allowances)]

    def check(self, phase: str) -> None:
        """Raise AssertionError naming every unexpected record since the last check."""
        bad = self.unexpected()
        if not bad:
            return
        lines = "\n".join(
            f"  {r.levelname} {r.name} ({r.pathname.rsplit('/', 1)[-1]}:{r.lineno}): "
            f"{r.getMessage()}"
            for r in bad
        )
        raise AssertionError(
            f"unexpected log records at WARNING or above during {phase}:\n{lines}\n"
            "(a test that expects them declares them: "
            '@pytest.mark.allow_log("<logger>", "<LEVEL>", match="<regex>") or the expect_log fixture)'
        )
