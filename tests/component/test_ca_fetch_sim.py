"""``rhvfs ca fetch`` against the simulator (HTTPS with its own CA), run as an admin would.

The simulator serves its CA at the engine's pki-resource URL. ``ca fetch`` shows the
SHA-256 fingerprint of exactly the simulator's CA file, and writes the CA and the
section's ``cafile`` only when confirmed: ``--yes``, or ``y`` typed at a terminal
(a pty here); without a terminal and without ``--yes`` it writes nothing and exits
1. Without the CA, ``rhvfs ls`` fails in one line that names ``rhvfs ca fetch``
instead of libcurl's "(60, 'SSL certificate ...')"; with the fetched one it works.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import pty
import ssl
import subprocess
from pathlib import Path

from tests.support.mounts import RHVFS
from tests.support.sim import SimProcess, conf_without, set_options


def conf_without_ca(sim: SimProcess, directory: Path) -> Path:
    return conf_without(sim, directory, "cafile")


def sim_fingerprint(sim: SimProcess) -> str:
    der = ssl.PEM_cert_to_DER_cert(Path(sim.cafile).read_text())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def run(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "RHVFS_PASSWORD")}
    return subprocess.run(
        [*RHVFS, *args], capture_output=True, text=True, timeout=120, stdin=stdin, env=env
    )


def section_cafile(conf: Path, section: str) -> str | None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(conf)
    return parser[section].get("cafile")


def test_fetch_shows_the_sims_fingerprint_and_writes_a_ca_that_verifies(
    sim: SimProcess, tmp_path: Path
) -> None:
    conf = conf_without_ca(sim, tmp_path)
    no_ca = run("ls", "-c", sim.section, "--config-file", str(conf), "/vms")
    assert no_ca.returncode == 1 and no_ca.stdout == ""
    (line,) = no_ca.stderr.splitlines()
    assert line.startswith("rhvfs: TLS verification of the engine failed: ")
    assert "unable to get local issuer certificate" in line
    assert "`rhvfs ca fetch -c SECTION`" in line
    assert "(60" not in line

    result = run("ca", "fetch", "-c", sim.section, "--config-file", str(conf), "--yes")
    assert result.returncode == 0, result.stderr
    assert f"SHA-256 fingerprint: {sim_fingerprint(sim)}\n" in result.stdout
    assert "WITHOUT TLS verification" in result.stdout
    assert "the engine's TLS certificate verifies against it: yes" in result.stdout
    written = tmp_path / f"{sim.section}-ca.pem"
    assert ssl.PEM_cert_to_DER_cert(written.read_text()) == ssl.PEM_cert_to_DER_cert(
        Path(sim.cafile).read_text()
    )
    assert section_cafile(conf, sim.section) == str(written)
    assert conf.stat().st_mode & 0o777 == 0o600  # the file holds the password

    listed = run("ls", "-c", sim.section, "--config-file", str(conf), "/vms")
    assert listed.returncode == 0, listed.stderr
    assert "/vms/myvm0/" in listed.stdout.splitlines()


def test_without_a_terminal_and_without_yes_nothing_is_written(
    sim: SimProcess, tmp_path: Path
) -> None:
    conf = conf_without_ca(sim, tmp_path)
    set_options(conf, sim.section, secure="no")
    before = conf.read_bytes()
    output = tmp_path / "out" / "ca.pem"
    result = run(
        "ca", "fetch", "-c", sim.section, "--config-file", str(conf), "--output", str(output)
    )
    assert result.returncode == 1
    assert f"SHA-256 fingerprint: {sim_fingerprint(sim)}\n" in result.stdout  # to compare
    assert "note: [sim] has secure = no: rhvfs verifies TLS with cafile only" in result.stdout
    assert result.stderr.splitlines() == [
        "rhvfs: configuration error: nothing written: no terminal to confirm the fingerprint "
        "on; compare it with the engine's and run again with --yes"
    ]
    assert conf.read_bytes() == before
    assert not output.parent.exists()


def _fetch_at_a_terminal(sim: SimProcess, conf: Path, output: Path, answer: bytes) -> str:
    """``ca fetch`` with a pty as stdin, ``answer`` typed; returns what it printed."""
    leader, follower = pty.openpty()
    try:
        os.write(leader, answer)
        result = run(
            "ca",
            "fetch",
            "-c",
            sim.section,
            "--config-file",
            str(conf),
            "--output",
            str(output),
            stdin=follower,
        )
    finally:
        os.close(follower)
        os.close(leader)
    return f"{result.returncode}\n{result.stdout}{result.stderr}"


def test_at_a_terminal_only_yes_writes(sim: SimProcess, tmp_path: Path) -> None:
    conf = conf_without_ca(sim, tmp_path)
    output = tmp_path / "engine-ca.pem"
    refused = _fetch_at_a_terminal(sim, conf, output, b"n\n")
    assert refused.startswith("1\n") and "nothing written" in refused
    assert f"Trust it: write {output} and set cafile in [sim] of {conf}? [y/N]" in refused
    assert not output.exists() and section_cafile(conf, sim.section) is None

    accepted = _fetch_at_a_terminal(sim, conf, output, b"y\n")
    assert accepted.startswith("0\n"), accepted
    assert section_cafile(conf, sim.section) == str(output)
    assert output.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----\n")
