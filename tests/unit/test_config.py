"""Config loading: ovirt-img.conf sections, password sources, validation."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from rhvfs.config import PASSWORD_ENV, Config, default_config_file, load_config, set_option
from rhvfs.errors import ConfigError


def write_conf(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "ovirt-img.conf"
    path.write_text(body)
    return path


def test_section_like_ovirt_img(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    conf = write_conf(
        tmp_path,
        f"[sim]\nengine_url = https://localhost:8443\nusername = admin@internal\n"
        f"password = s3cret\ncafile = {ca}\n",
    )
    cfg = load_config(section="sim", config_file=conf)
    assert cfg.engine_url == "https://localhost:8443"
    assert cfg.api_url == "https://localhost:8443/ovirt-engine/api"
    assert cfg.username == "admin@internal"
    assert cfg.password == "s3cret"
    assert cfg.cafile == str(ca)
    assert cfg.secure is True
    assert "s3cret" not in repr(cfg)


def test_rhvfs_keys_are_typed(tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path,
        "[e]\nengine_url = http://e\nusername = u\npassword = p\n"
        "grace_period = 2.5\nprefetch_memory = 64M\nsecure = no\nsystem_tries = 3\n"
        "restore_cluster = Default\n",
    )
    cfg = load_config(section="e", config_file=conf)
    assert cfg.grace_period == 2.5
    assert cfg.prefetch_memory == 64 * 1024 * 1024
    assert cfg.secure is False
    assert cfg.system_tries == 3
    assert dict(cfg.restore_defaults) == {"cluster": "Default"}


def test_restore_timeouts(tmp_path: Path) -> None:
    base = "[e]\nengine_url = http://e\nusername = u\npassword = p\nsecure = no\n"
    cfg = load_config(section="e", config_file=write_conf(tmp_path, base))
    assert (cfg.outcome_timeout, cfg.partial_set_timeout) == (600.0, 300.0)
    conf = write_conf(tmp_path, base + "outcome_timeout = 0\npartial_set_timeout = 45\n")
    cfg = load_config(section="e", config_file=conf)
    assert (cfg.outcome_timeout, cfg.partial_set_timeout) == (0.0, 45.0)
    assert cfg.restore_defaults == {}  # settings, not restore options
    for body, message in (
        ("outcome_timeout = -1\n", "outcome_timeout must be 0"),
        ("partial_set_timeout = 0\n", "partial_set_timeout must be more than 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(section="e", config_file=write_conf(tmp_path, base + body))


def test_password_file_wins_and_env_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("fromfile\n")
    pw.chmod(0o600)
    conf = write_conf(tmp_path, "[e]\nengine_url = https://e\nusername = u\npassword = inconf\n")
    assert load_config(section="e", config_file=conf, password_file=pw).password == "fromfile"
    conf2 = write_conf(tmp_path, "[e]\nengine_url = https://e\nusername = u\n")
    monkeypatch.setenv(PASSWORD_ENV, "fromenv")
    assert load_config(section="e", config_file=conf2).password == "fromenv"
    assert PASSWORD_ENV not in os.environ  # read once, then gone
    with pytest.raises(ConfigError, match="no password"):
        load_config(section="e", config_file=conf2, interactive=False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[e]\nusername = u\npassword = p\n", "engine_url is required"),
        ("[e]\nengine_url = ftp://x\nusername = u\npassword = p\n", "must start with https"),
        ("[e]\nengine_url = http://x\nusername = u\npassword = p\nbogus = 1\n", "unknown setting"),
        ("[e]\nengine_url = http://x\nusername = u\npassword = p\nsecure = maybe\n", "yes or no"),
        (
            "[e]\nengine_url = https://x\nusername = u\npassword = p\ncafile = /nonexistent\n",
            "does not exist",
        ),
        ("[e]\nengine_url = http://x\nusername = u\npassword = p\ngrace_period = soon\n", "number"),
    ],
)
def test_invalid_input_gets_one_clear_error(tmp_path: Path, body: str, message: str) -> None:
    conf = write_conf(tmp_path, body)
    with pytest.raises(ConfigError, match=message):
        load_config(section="e", config_file=conf)


def test_missing_file_and_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(section="e", config_file=tmp_path / "nope.conf")
    conf = write_conf(tmp_path, "[other]\n")
    with pytest.raises(ConfigError, match=r"no section \[e\]"):
        load_config(section="e", config_file=conf)


def test_overrides_without_section(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(
        overrides={"engine_url": "https://h", "username": "u", "password": "p", "cafile": None}
    )
    assert isinstance(cfg, Config)
    assert cfg.cafile is None


def test_default_config_file_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_config_file() == tmp_path / "ovirt-img.conf"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_config_file() == Path(os.path.expanduser("~")) / ".config" / "ovirt-img.conf"


# -- secrets and transport -------------------------------------------------------------------


def test_password_env_leaves_the_environment_even_when_another_source_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = write_conf(tmp_path, "[e]\nengine_url = https://e\nusername = u\npassword = inconf\n")
    monkeypatch.setenv(PASSWORD_ENV, "fromenv")
    assert load_config(section="e", config_file=conf).password == "inconf"
    assert PASSWORD_ENV not in os.environ


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_password_file_others_can_read_gets_one_warning(
    tmp_path: Path, mode: int, expect_log: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    expect_log("rhvfs.config", "WARNING", match="readable by")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(mode)
    conf = write_conf(tmp_path, "[e]\nengine_url = https://e\nusername = u\n")
    with caplog.at_level(logging.WARNING, logger="rhvfs.config"):
        assert load_config(section="e", config_file=conf, password_file=pw).password == "s3cret"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert str(pw) in warnings[0] and f"{mode:04o}" in warnings[0]
    assert "s3cret" not in warnings[0]


def test_a_private_password_file_gets_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    conf = write_conf(tmp_path, "[e]\nengine_url = https://e\nusername = u\n")
    with caplog.at_level(logging.DEBUG, logger="rhvfs"):
        load_config(section="e", config_file=conf, password_file=pw)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_http_engine_url_is_refused_unless_insecure(tmp_path: Path) -> None:
    conf = write_conf(tmp_path, "[e]\nengine_url = http://e\nusername = u\npassword = p\n")
    with pytest.raises(ConfigError, match="not https.*--insecure") as info:
        load_config(section="e", config_file=conf)
    assert "\n" not in str(info.value)
    cfg = load_config(section="e", config_file=conf, overrides={"secure": False})
    assert cfg.engine_url == "http://e" and cfg.secure is False


def test_ovirt_img_keys_are_accepted_and_ignored(tmp_path: Path) -> None:
    """A section written for ovirt-img (its keys as ovirt_imageio.client._options reads them)
    loads; its own keys change nothing in rhvfs."""
    base = "[prod]\nengine_url = https://e\nusername = u\npassword = p\n"
    plain = load_config(section="prod", config_file=write_conf(tmp_path, base))
    conf = write_conf(
        tmp_path,
        base + "log_level = debug\nlog_file = /var/log/ovirt-img.log\ndisk_timeout = 120\n"
        "description = Uploaded by ops\n",
    )
    cfg = load_config(section="prod", config_file=conf)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(plain)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\): log_levle"):
        load_config(section="prod", config_file=write_conf(tmp_path, base + "log_levle = x\n"))


def test_password_file_argument_beats_the_sections_password_file(tmp_path: Path) -> None:
    """The systemd unit passes --password-file with a section that has its own password_file."""
    (tmp_path / "section-pw").write_text("from-section\n")
    (tmp_path / "arg-pw").write_text("from-argument\n")
    for name in ("section-pw", "arg-pw"):
        (tmp_path / name).chmod(0o600)
    conf = write_conf(
        tmp_path,
        f"[e]\nengine_url = https://e\nusername = u\npassword_file = {tmp_path / 'section-pw'}\n",
    )
    assert load_config(section="e", config_file=conf).password == "from-section"
    cfg = load_config(section="e", config_file=conf, password_file=tmp_path / "arg-pw")
    assert cfg.password == "from-argument"


def test_password_file_in_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``%d/NAME`` is systemd's credential NAME (LoadCredential=NAME:...)."""
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "password").write_text("from-credential\n")
    (creds / "password").chmod(0o400)
    conf = write_conf(
        tmp_path, "[e]\nengine_url = https://e\nusername = u\npassword_file = %d/password\n"
    )
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        load_config(section="e", config_file=conf, interactive=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_config(section="e", config_file=conf).password == "from-credential"
    conf2 = write_conf(tmp_path, "[e]\nengine_url = https://e\nusername = u\n")
    cfg = load_config(section="e", config_file=conf2, password_file="%d/password")
    assert cfg.password == "from-credential"


def test_set_option_edits_one_line_and_keeps_the_rest(tmp_path: Path) -> None:
    text = (
        "# engines\n[other]\ncafile = /keep/me.pem\n\n"
        "[prod]  ; production\nengine_url = https://e\n; a comment\nusername = u\n"
    )
    conf = write_conf(tmp_path, text)
    conf.chmod(0o640)
    set_option(conf, "prod", "cafile", "/etc/rhvfs/prod-ca.pem")
    assert conf.read_text() == text.replace(
        "[prod]  ; production\n", "[prod]  ; production\ncafile = /etc/rhvfs/prod-ca.pem\n"
    )
    set_option(conf, "prod", "cafile", "/new.pem")
    assert conf.read_text().count("cafile") == 2
    assert "cafile = /new.pem\n" in conf.read_text()
    assert "cafile = /keep/me.pem\n" in conf.read_text()
    assert conf.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["ovirt-img.conf"]
    with pytest.raises(ConfigError, match=r"no section \[nope\]"):
        set_option(conf, "nope", "cafile", "/x")
