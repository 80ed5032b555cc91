"""Logs under systemd: syslog priority prefixes and no timestamp of our own (journald).

``rhvfs.commands._journal`` formats; ``setup_logging`` picks the format: journal
when asked, or (``auto``) when stderr is the stream ``JOURNAL_STREAM`` names.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import pytest

from rhvfs.commands._journal import JournalFormatter, syslog_priority, use_journal_format
from rhvfs.commands.common import setup_logging

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def record(level: int, msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("rhvfs.sessions", level, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def test_levels_map_to_syslog_priorities() -> None:
    assert [
        syslog_priority(lv)
        for lv in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
    ] == [2, 3, 4, 6, 7]


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    fmt = JournalFormatter()
    assert (
        fmt.format(record(logging.WARNING, "disk %s slow", "d1"))
        == "<4>rhvfs.sessions: disk d1 slow"
    )
    assert fmt.format(record(logging.INFO, "ready")) == "<6>rhvfs.sessions: ready"
    assert fmt.format(record(logging.DEBUG, "x")) == "<7>rhvfs.sessions: x"


def test_every_line_of_a_traceback_keeps_the_records_priority() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc = sys.exc_info()
    text = JournalFormatter().format(record(logging.ERROR, "session crashed", exc_info=exc))
    lines = text.splitlines()
    assert len(lines) > 3 and lines[0] == "<3>rhvfs.sessions: session crashed"
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>RuntimeError: boom"


def journal_stream_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_auto_uses_the_journal_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    stream = tmp_path / "journal-stream"
    other = tmp_path / "other"
    stream.touch()
    other.touch()
    with open(stream, "w") as f:
        fd = f.fileno()
        env = {"JOURNAL_STREAM": journal_stream_of(stream)}
        assert use_journal_format("auto", to_stderr=True, stderr_fd=fd, environ=env)
        assert not use_journal_format(
            "auto", to_stderr=False, stderr_fd=fd, environ=env
        )  # a --log file
        assert not use_journal_format("plain", to_stderr=True, stderr_fd=fd, environ=env)
        # inherited from a parent, but stderr goes elsewhere
        env_other = {"JOURNAL_STREAM": journal_stream_of(other)}
        assert not use_journal_format("auto", to_stderr=True, stderr_fd=fd, environ=env_other)
        assert not use_journal_format("auto", to_stderr=True, stderr_fd=fd, environ={})
        assert not use_journal_format(
            "auto", to_stderr=True, stderr_fd=fd, environ={"JOURNAL_STREAM": "x"}
        )
        assert use_journal_format("journal", to_stderr=False, stderr_fd=fd, environ={})
    with pytest.raises(ValueError):
        use_journal_format("json", to_stderr=True)


def log_through_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, journal_stream: str | None, log_format: str
) -> str:
    """What one warning and one info line look like on stderr after ``setup_logging``."""
    out = tmp_path / "stderr"
    with open(out, "w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        if journal_stream is None:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        else:
            monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
        setup_logging(debug=False, log_format=log_format)
        logging.getLogger("rhvfs.test").warning("engine unreachable: %s", "refused")
        logging.getLogger("rhvfs.test").info("mounted")
        for h in logging.getLogger().handlers:
            h.flush()
    return out.read_text()


def test_setup_logging_under_journald(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    (tmp_path / "stderr").touch()
    text = log_through_setup(
        tmp_path,
        monkeypatch,
        journal_stream=journal_stream_of(tmp_path / "stderr"),
        log_format="auto",
    )
    assert text.splitlines() == [
        "<4>rhvfs.test: engine unreachable: refused",
        "<6>rhvfs.test: mounted",
    ]
    assert not TIMESTAMP.search(text)


def test_setup_logging_forced_journal_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    text = log_through_setup(tmp_path, monkeypatch, journal_stream=None, log_format="journal")
    assert text.splitlines() == [
        "<4>rhvfs.test: engine unreachable: refused",
        "<6>rhvfs.test: mounted",
    ]


def test_setup_logging_on_a_terminal_keeps_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    text = log_through_setup(tmp_path, monkeypatch, journal_stream=None, log_format="auto")
    lines = text.splitlines()
    assert len(lines) == 2 and all(TIMESTAMP.match(line) for line in lines)
    assert lines[0].endswith("WARNING rhvfs.test: engine unreachable: refused")
    assert "<4>" not in text
