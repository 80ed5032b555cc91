"""Log lines for the systemd journal: syslog priority prefixes, no timestamp of our own.

A service whose stderr goes to journald (systemd sets ``JOURNAL_STREAM`` to
that stream's ``device:inode``) may start each line with ``<N>``, the syslog
priority (sd-daemon(3)): journald stores it as the entry's priority, so
``journalctl -p warning`` finds rhvfs's warnings and errors, and strips the
prefix. journald stamps every entry itself, so a second timestamp in the
text would only be noise: ``JournalFormatter`` writes ``<N>logger: message``,
each line of a multi-line record (a traceback) with the record's prefix.

``use_journal_format`` decides: ``journal`` always, ``plain`` never, ``auto``
when the log goes to stderr and stderr is the stream ``JOURNAL_STREAM``
names (compared by device and inode, as systemd.exec(5) says to: a child
that inherited the variable but writes elsewhere keeps plain lines).

Must not: write anywhere itself or talk to journald's socket.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

__all__ = ["LOG_FORMATS", "JournalFormatter", "syslog_priority", "use_journal_format"]

LOG_FORMATS = ("auto", "plain", "journal")


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` per line; no timestamp (journald adds its own)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in (text.splitlines() or [""]))


def stream_is_journal(fd: int, environ: Mapping[str, str]) -> bool:
    """Whether ``fd`` is the journal stream systemd connected (``JOURNAL_STREAM=dev:ino``)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def use_journal_format(
    log_format: str,
    *,
    to_stderr: bool,
    stderr_fd: int = 2,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Whether log lines get journal priorities (``log_format``: auto, plain or journal)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    if log_format != "auto":
        return log_format == "journal"
    return to_stderr and stream_is_journal(stderr_fd, os.environ if environ is None else environ)
