"""Secrets and transport (issue 11, items 2 and 3) without a mount.

- ``rhvfs.redact``: what is redacted and what stays readable; the logging
  filter on the one handler of a command redacts records of every logger
  (httpx's at DEBUG included), their tracebacks and stacks.
- ``rhvfs.private``: 0700 directories (missing parents too), 0600 files, an
  atomic replace that keeps 0600 whatever the umask, the password-file check,
  and ``$RHVFS_PASSWORD`` leaving the environment (``/proc/self/environ`` too).
- Transport: an ``http://`` engine URL is refused with one line and exit
  status 1 by ``rhvfs mount`` and ``rhvfs ls``; ``--insecure`` logs one warning;
  an ``http://`` imageio URL is refused unless ``secure=False``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rhvfs.commands.common import add_connection_args, config_from_args, setup_logging
from rhvfs.errors import ImageioError, ImageioUnavailable
from rhvfs.imageio import open_imageio
from rhvfs.private import (
    loose_secret_file,
    open_private,
    private_dir,
    take_from_environ,
    write_private,
)
from rhvfs.redact import RedactingFilter, redact

TICKET = "0f3c1a2b-9d8e-4c7b-a6f5-0123456789ab"
TOKEN = "Zm9vYmFyLXNlY3JldC10b2tlbi12YWx1ZS0xMjM0NTY3ODk"
RHVFS = [sys.executable, "-m", "rhvfs.cli"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- redact ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f'HTTP Request: GET https://localhost:54322/images/{TICKET} "HTTP/1.1 206 Partial"',
            'HTTP Request: GET https://localhost:54322/images/<ticket> "HTTP/1.1 206 Partial"',
        ),
        (
            f"imageio https://proxy:54323/images/{TICKET}?flush=n unreachable",
            "imageio https://proxy:54323/images/<ticket>?flush=n unreachable",
        ),
        (f"Ticket path /images/{TICKET} gone", "Ticket path /images/<ticket> gone"),
        ("https://h:54322/images/short", "https://h:54322/images/<ticket>"),
        (f"Authorization: Bearer {TOKEN}", "Authorization: <token>"),
        (f"{{'authorization': 'Bearer {TOKEN}'}}", "{'authorization': '<token>'}"),
        (f"header bearer {TOKEN}", "header bearer <token>"),
        (f"Cookie: JSESSIONID={TOKEN}; x=1", "Cookie: JSESSIONID=<token>; x=1"),
        (f'{{"access_token": "{TOKEN}", "x": 1}}', '{"access_token": "<token>", "x": 1}'),
        (
            "grant_type=password&username=admin%40internal&password=s3cret&scope=ovirt-app-api",
            "grant_type=password&username=admin%40internal&password=<secret>&scope=ovirt-app-api",
        ),
        ('{"password": "s3cret"}', '{"password": "<secret>"}'),
        ("https://admin:s3cret@engine/ovirt-engine", "https://admin:<secret>@engine/ovirt-engine"),
    ],
)
def test_redact_replaces_only_the_secret(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # redacting twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "vms/images/@rhv/web01_os.raw",  # a VM called "images"
        f"transfer {TICKET} of disk 11111111-2222-3333-4444-555555555555 created",  # ids
        "https://localhost:8443/ovirt-engine/api/imagetransfers/abc",
        "no password: use password_file, the config section, or $RHVFS_PASSWORD",
        "password file /etc/pw is readable by others (mode 0644); chmod 600 it",
        "Basic authentication failed",
    ],
)
def test_redact_keeps_what_is_no_credential(text: str) -> None:
    assert redact(text) == text


# -- the logging filter --------------------------------------------------------------------------


@pytest.fixture
def filtered() -> Iterator[io.StringIO]:
    """A stream handler with the filter on the httpx logger (as the root's handler has it)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("httpx")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_filter_redacts_message_arguments_tracebacks_and_stacks(filtered: io.StringIO) -> None:
    url = f"https://localhost:54322/images/{TICKET}"
    log = logging.getLogger("httpx")
    log.debug('HTTP Request: %s %s "%s"', "GET", url, "HTTP/1.1 206")
    log.debug("headers %r", {"authorization": f"Bearer {TOKEN}"})
    try:
        raise ValueError(f"cannot reach {url}")
    except ValueError:
        log.debug("failed", exc_info=True)
    log.debug("where %s", url, stack_info=True)
    text = filtered.getvalue()
    assert TICKET not in text and TOKEN not in text
    assert 'HTTP Request: GET https://localhost:54322/images/<ticket> "HTTP/1.1 206"' in text
    assert "ValueError: cannot reach https://localhost:54322/images/<ticket>" in text
    assert "Stack (most recent call last)" in text


def test_filter_leaves_records_without_secrets_alone() -> None:
    record = logging.LogRecord(
        "rhvfs.x", logging.INFO, __file__, 1, "disk %s: %d bytes", ("d1", 5), None
    )
    assert RedactingFilter().filter(record) is True
    assert record.args == ("d1", 5) and record.getMessage() == "disk d1: 5 bytes"


def test_setup_logging_redacts_every_logger_into_a_0600_file(
    tmp_path: Path, root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.umask(old := os.umask(0o022))
    log_file = tmp_path / "mount.log"
    try:
        setup_logging(debug=True, filename=str(log_file))
    finally:
        os.umask(old)
    url = f"https://localhost:54322/images/{TICKET}"
    logging.getLogger("httpx").info('HTTP Request: GET %s "HTTP/1.1 200 OK"', url)
    logging.getLogger("httpcore.http11").debug("send_request_headers %s", f"Bearer {TOKEN}")
    logging.getLogger("rhvfs.imageio").debug("imageio %s", url)
    for h in logging.getLogger().handlers:
        h.flush()
    text = log_file.read_text()
    assert text.count("<ticket>") == 2 and "Bearer <token>" in text
    assert TICKET not in text and TOKEN not in text
    assert mode(log_file) == 0o600
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    try:
        raise RuntimeError(url)
    except RuntimeError as e:
        sys.excepthook(type(e), e, e.__traceback__)
    assert "RuntimeError: https://localhost:54322/images/<ticket>" in err.getvalue()
    assert TICKET not in err.getvalue()


# -- private files -------------------------------------------------------------------------------


def test_private_dir_makes_missing_parents_0700_and_keeps_existing_ones(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    old = os.umask(0o022)
    try:
        private_dir(existing / "a" / "b")
    finally:
        os.umask(old)
    assert mode(existing / "a") == 0o700 and mode(existing / "a" / "b") == 0o700
    assert mode(existing) == 0o755  # not rhvfs's: left alone
    private_dir(existing, tighten=True)  # rhvfs's own (the default state dir): tightened
    assert mode(existing) == 0o700


def test_write_private_replaces_atomically_with_a_0600_file(tmp_path: Path) -> None:
    target = tmp_path / "journal.json"
    target.write_text("old")
    target.chmod(0o644)
    stale = tmp_path / f".journal.json.{os.getpid()}.tmp"
    stale.write_text("stale temporary file of an earlier crash")
    stale.chmod(0o666)
    old = os.umask(0o000)
    try:
        write_private(target, '{"new": true}')
    finally:
        os.umask(old)
    assert target.read_text() == '{"new": true}'
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_open_private_creates_0600_and_tightens_an_old_file(tmp_path: Path) -> None:
    new, old_file = tmp_path / "new.log", tmp_path / "old.log"
    old_file.write_text("x")
    old_file.chmod(0o644)
    for path in (new, old_file):
        os.close(open_private(path, os.O_WRONLY | os.O_APPEND))
        assert mode(path) == 0o600
    assert old_file.read_text() == "x"


def test_loose_secret_file_names_who_can_read_it(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret")
    pw.chmod(0o600)
    assert loose_secret_file(pw) is None
    pw.chmod(0o640)
    assert loose_secret_file(pw) == f"{pw} is readable by group (mode 0640); chmod 600 it"
    pw.chmod(0o604)
    assert "readable by others" in (loose_secret_file(pw) or "")
    assert loose_secret_file(tmp_path / "missing") is None


def test_take_from_environ_empties_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RHVFS_TEST_SECRET", "s3cret")
    assert take_from_environ("RHVFS_TEST_SECRET") == "s3cret"
    assert "RHVFS_TEST_SECRET" not in os.environ
    assert take_from_environ("RHVFS_TEST_SECRET") is None


def test_password_env_is_gone_from_proc_environ_and_children(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import subprocess
        from rhvfs.config import load_config
        cfg = load_config(overrides={"engine_url": "https://e", "username": "u"})
        assert cfg.password == "hunter2-in-env", cfg
        with open("/proc/self/environ", "rb") as f:
            print(f.read().count(b"hunter2"))
        child = subprocess.run(["cat", "/proc/self/environ"], capture_output=True, check=True)
        print(child.stdout.count(b"hunter2"))
        """
    )
    env = {**os.environ, "RHVFS_PASSWORD": "hunter2-in-env", "RHVFS_OTHER": "kept"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]


# -- transport -----------------------------------------------------------------------------------


def run_rhvfs(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RHVFS_PASSWORD"}
    env["RHVFS_PASSWORD"] = "s3cret"
    return subprocess.run(
        [*RHVFS, *argv], capture_output=True, text=True, timeout=60, cwd=cwd, env=env
    )


@pytest.mark.parametrize("command", ["mount", "ls"])
def test_http_engine_url_is_refused_with_one_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "mnt").mkdir()
    argv = [command, "--engine-url", "http://engine.example", "--username", "admin@internal"]
    argv += ["--state-dir", str(tmp_path / "state")]
    if command == "mount":
        argv.append(str(tmp_path / "mnt"))
    result = run_rhvfs(*argv, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "rhvfs: configuration error: engine_url http://engine.example is not https"
    )
    assert "--insecure" in lines[0] and "s3cret" not in result.stderr
    assert result.stdout == ""


def connection_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_args(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://engine.example", "TLS certificates are not verified"),
        ("http://engine.example", "plain http"),
    ],
)
def test_insecure_logs_one_warning(
    url: str,
    says: str,
    expect_log: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expect_log("rhvfs.commands.common", "WARNING", match="^INSECURE: ")
    args = connection_args("--engine-url", url, "--username", "u", "--insecure")
    monkeypatch.setenv("RHVFS_PASSWORD", "s3cret")
    with caplog.at_level(logging.INFO):
        config = config_from_args(args)
    assert config.secure is False and "RHVFS_PASSWORD" not in os.environ
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and says in warnings[0] and url in warnings[0]


def test_verified_tls_logs_no_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = connection_args("--engine-url", "https://engine.example", "--username", "u")
    monkeypatch.setenv("RHVFS_PASSWORD", "s3cret")
    with caplog.at_level(logging.INFO):
        assert config_from_args(args).secure is True
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("which", ["transfer_url", "proxy_url"])
async def test_http_imageio_url_is_refused_unless_insecure(which: str) -> None:
    https = f"https://127.0.0.1:1/images/{TICKET}"
    http = f"http://127.0.0.1:1/images/{TICKET}"
    urls = {"transfer_url": https, "proxy_url": https, which: http}
    with pytest.raises(ImageioError, match="not https") as info:
        async with open_imageio(urls["transfer_url"], cafile=None, proxy_url=urls["proxy_url"]):
            pass
    assert TICKET not in str(info.value) and "/images/<ticket>" in str(info.value)
    # allowed with secure=False: the client goes on to connect (and finds nobody there)
    with pytest.raises(ImageioUnavailable):
        async with open_imageio(
            urls["transfer_url"], cafile=None, secure=False, proxy_url=urls["proxy_url"]
        ):
            pass


def test_restore_status_document_is_rendered_redacted() -> None:
    from rhvfs.sessions.restore._status import render

    error = f"PUT https://localhost:54322/images/{TICKET}: connection reset"
    doc = json.loads(render({"phase": "failed", "error": error, "log": [error]}))
    assert doc["error"] == "PUT https://localhost:54322/images/<ticket>: connection reset"
    assert doc["log"] == [doc["error"]]
