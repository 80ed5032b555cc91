"""Options shared by the subcommands that talk to an engine, and logging setup.

Connection settings come from an ovirt-img.conf-style section (``-c``) and/or
flags; passwords come from a file, the section, ``$RHVFS_PASSWORD`` or a
prompt, never from the command line (``rhvfs.config.load_config``). A
configuration that does not verify TLS (``--insecure``, ``secure = no``) gets
one warning here, whichever command loads it.

The state dir (``--state-dir``, default ``$XDG_STATE_HOME/rhvfs``) is checked
here before any command uses it (``prepare_state_dir``), and the log file is
opened here (``setup_logging``): a bad path is one ``ConfigError`` line, never
a traceback.

Logging: one handler for the whole process (stderr or a 0600 file), with the
redacting filter of ``rhvfs.redact`` on it, so no record of any logger (the
http stack's at DEBUG included) shows a ticket, token or password; uncaught
tracebacks are redacted the same way.

Must not: connect anywhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from rhvfs.commands._journal import JournalFormatter, use_journal_format
from rhvfs.config import Config, load_config
from rhvfs.errors import ConfigError
from rhvfs.private import default_state_dir, open_private, private_dir
from rhvfs.redact import RedactingFilter, excepthook

log = logging.getLogger(__name__)

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine connection")
    group.add_argument("-c", "--section", help="config section (as ovirt-img -c)")
    group.add_argument(
        "--config-file", help="config file (default $XDG_CONFIG_HOME/ovirt-img.conf)"
    )
    group.add_argument("--engine-url", help="engine URL, e.g. https://engine.example.com")
    group.add_argument("--username", help="user, e.g. admin@internal")
    group.add_argument("--password-file", help="file holding the password (never pass it in argv)")
    tls = group.add_mutually_exclusive_group()
    tls.add_argument("--cafile", help="engine CA certificate (PEM)")
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    parser.add_argument(
        "--state-dir", help="where the session journal lives (default $XDG_STATE_HOME/rhvfs)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="verbose logging, tracebacks on errors"
    )


def prepare_state_dir(state_dir: str | None) -> Path:
    """The state dir, created 0700 if missing (the default one, rhvfs's own, is made
    0700); ``ConfigError`` when it can't be created or is not a writable directory."""
    path = Path(state_dir) if state_dir else default_state_dir()
    try:
        private_dir(path, tighten=not state_dir)
    except OSError as e:
        raise ConfigError(f"cannot create the state dir {path}: {e.strerror or e}") from None
    if not path.is_dir():
        raise ConfigError(f"the state dir {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"the state dir {path} is not writable")
    return path


def config_from_args(args: argparse.Namespace, **extra: object) -> Config:
    overrides: dict[str, object] = {
        "engine_url": args.engine_url,
        "username": args.username,
        "cafile": args.cafile,
        "secure": False if args.insecure else None,
    }
    overrides.update(extra)
    config = load_config(
        section=args.section,
        config_file=args.config_file,
        overrides=overrides,
        password_file=args.password_file,
    )
    warn_if_insecure(config)
    return config


def warn_if_insecure(config: Config) -> None:
    """One WARNING line when the engine connection is not verified TLS."""
    if config.engine_url.startswith("http://"):
        log.warning(
            "INSECURE: %s is plain http (--insecure / secure = no): the password, tokens and "
            "disk data cross the network in clear",
            config.engine_url,
        )
    elif not config.secure:
        log.warning(
            "INSECURE: TLS certificates are not verified (--insecure / secure = no): anyone "
            "on the network path can pose as %s and read the password and disk data",
            config.engine_url,
        )


def check_log_file(filename: str) -> None:
    """Create ``filename`` (0600) for appending; ``ConfigError`` when that is not possible."""
    try:
        os.close(open_private(filename, os.O_WRONLY | os.O_APPEND))
    except OSError as e:
        raise ConfigError(f"cannot open the log file {filename}: {e.strerror or e}") from None


def setup_logging(*, debug: bool, filename: str | None = None, log_format: str = "auto") -> None:
    """Log to ``filename`` (created 0600) or stderr, every record redacted (``rhvfs.redact``);
    to the systemd journal (``log_format``, ``rhvfs.commands._journal``) with syslog
    priorities and without a timestamp of our own."""
    level = logging.DEBUG if debug else logging.INFO
    handler: logging.Handler
    if filename:
        check_log_file(filename)
        handler = logging.FileHandler(filename)
    else:
        handler = logging.StreamHandler(sys.stderr)
    journal = use_journal_format(log_format, to_stderr=not filename, stderr_fd=_fd_of(sys.stderr))
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactingFilter())
    sys.excepthook = excepthook
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The SDK and http stacks are chatty at INFO; --debug shows them.
    for name in ("httpx", "httpcore", "pyfuse3"):
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)


def _fd_of(stream: Any) -> int:
    """The file descriptor under ``stream``; -1 when it has none (a test's StringIO)."""
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return -1


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def run_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run``, but a nursery's group holding one error re-raises that error.

    Nested nurseries wrap a plain ``EngineUnavailable`` in exception groups; the
    CLI prints user errors as one line, so it needs the error itself.
    """
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from group
        raise
