"""Redaction of credentials in text: the one place that knows what a secret looks like.

An imageio ticket id is a bearer credential for its transfer (anyone holding
``https://host:54322/images/<ticket>`` can read or write the disk), and an
SSO token or a session cookie is one for the engine. ``redact`` replaces:

- the path segment after ``/images/`` in a URL (``https://host:54322/images/<ticket>``),
  and a long token (16 characters or more, as a UUID) after ``/images/`` in any text,
- ``Bearer <token>``, the value of an ``Authorization`` header, ``JSESSIONID=`` cookies,
- ``access_token`` / ``refresh_token`` / ``id_token`` values (form or JSON),
- ``password=`` form values and ``"password": "..."`` JSON values,
- the password of a URL's user info (``https://user:<password>@host``).

``RedactingFilter`` applies it to every log record that reaches a handler it
is attached to (message, arguments, traceback, stack), whichever logger made
the record: httpx, httpcore, pyfuse3 and rhvfs alike.
``rhvfs.commands.common.setup_logging`` attaches it to the one handler of
every rhvfs command, and installs ``excepthook`` for tracebacks printed
outside logging (a daemon's stderr is its log file).

Must not: log, decide where a text goes, or redact ids that are not
credentials (VM, disk, transfer and snapshot ids stay readable).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType

TICKET = "<ticket>"
TOKEN = "<token>"
SECRET = "<secret>"

# (pattern, replacement); each keeps what names the secret and replaces only the secret.
# A replacement never matches its own pattern again, so redacting twice changes nothing.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # In a URL any segment after /images/ is a ticket; in a bare path only a long token is
    # (a VM called "images" keeps "vms/images/@rhv" readable).
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/]+(?:/[^\s/]+)*?/images/)(?!<)[^/\s?#\"'<>\\:;,)\]}]+", re.I), r"\1" + TICKET),
    (re.compile(r"(/images/)(?!<)[A-Za-z0-9_-]{16,}"), r"\1" + TICKET),
    (re.compile(r"(\bauthorization['\"]?\s*[:=]\s*['\"]?)(?!<)[^\s'\",;]+(?:\s+(?!<)[^\s'\",;]+)?", re.I), r"\1" + TOKEN),
    (re.compile(r"(\bbearer\s+)(?!<)[^\s'\",;]+", re.I), r"\1" + TOKEN),
    (re.compile(r"(\bJSESSIONID=)(?!<)[^;\s'\",]+", re.I), r"\1" + TOKEN),
    (
        re.compile(r"(\b(?:access|refresh|id)_token['\"]?\s*[:=]\s*['\"]?)(?!<)[^\s'\",&;}]+", re.I),
        r"\1" + TOKEN,
    ),
    (re.compile(r"(\bpassword=)(?!<)[^&\s'\"]+", re.I), r"\1" + SECRET),
    (re.compile(r"(['\"]password['\"]\s*:\s*['\"])(?!<)[^'\"]*", re.I), r"\1" + SECRET),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?!<)[^/\s@]+(@)", re.I), r"\1" + SECRET + r"\2"),
)  # fmt: skip


def redact(text: str) -> str:
    """``text`` with every credential it shows replaced (see the module docstring)."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


_TRACEBACKS = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Redacts each record in place and lets it through (attach it to a handler).

    A handler's filter sees the records of every logger that propagates to it,
    which a logger's filter would not. The record's message is rendered once
    (``getMessage``) and replaced by its redacted text only when that differs,
    so untouched records keep their arguments. The traceback is rendered here
    (as the handler's formatter would) so its text can be redacted too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what can be shown, redacted
            message = f"{record.msg!r} % {record.args!r}"
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` printing the traceback of an uncaught error redacted."""
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))
    sys.stderr.flush()
