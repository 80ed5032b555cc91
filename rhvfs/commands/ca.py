"""``rhvfs ca fetch -c SECTION [--config-file F] [--output F] [--yes]``: trust an engine's CA.

Downloads the CA of the section's engine from its pki-resource URL
(``rhvfs.engine.pki``: the one request of rhvfs made without TLS verification, since
the CA is what verification needs), prints its SHA-256 fingerprint for the admin to
compare with the engine's own, and only after confirmation writes the certificate
(``--output``, default ``<section>-ca.pem`` beside the config file) and sets the
section's ``cafile`` to it (``rhvfs.config.set_option``: the rest of the file is kept).
Confirmation is ``--yes`` (scripts that compared the fingerprint themselves) or a
``y`` typed at the terminal; with neither, nothing is written and the command fails.

Must not: write anything before the confirmation, or read the password.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rhvfs.commands.common import setup_logging
from rhvfs.config import default_config_file, read_section, set_option
from rhvfs.engine.pki import EngineCa, fetch_engine_ca
from rhvfs.errors import ConfigError

ENGINE_CA_FILE = "/etc/pki/ovirt-engine/ca.pem"
COMPARE_HINT = f"openssl x509 -in {ENGINE_CA_FILE} -noout -fingerprint -sha256"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rhvfs ca", description="Manage the engine's CA certificate.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = sub.add_parser(
        "fetch",
        help="download the engine's CA, show its fingerprint, and set the section's cafile",
        description="Download the engine's CA certificate from its pki-resource URL (without "
        "TLS verification: the CA is what verification needs), print its SHA-256 "
        "fingerprint to compare with the engine's, and after confirmation write it and "
        "set cafile in the config section.",
    )
    f.add_argument("-c", "--section", required=True, help="config section (as ovirt-img -c)")
    f.add_argument("--config-file", help="config file (default $XDG_CONFIG_HOME/ovirt-img.conf)")
    f.add_argument(
        "--output", help="where to write the CA (default: <section>-ca.pem beside the config file)"
    )
    f.add_argument(
        "--yes",
        action="store_true",
        help="trust it without asking (only after comparing the fingerprint some other way)",
    )
    f.add_argument("--debug", action="store_true", help="verbose logging, tracebacks on errors")
    return p


def _describe(engine_url: str, ca: EngineCa) -> str:
    lines = [
        f"CA certificate of {engine_url}",
        f"  from {ca.url}",
        "  downloaded WITHOUT TLS verification (the CA is what verification needs)",
    ]
    for number, fp in enumerate(ca.fingerprints, 1):
        label = "SHA-256 fingerprint" + (f" {number}" if len(ca.fingerprints) > 1 else "")
        lines.append(f"  {label}: {fp}")
    if ca.verify_error is None:
        lines.append("  the engine's TLS certificate verifies against it: yes")
    else:
        lines.append(
            f"  WARNING: the engine's TLS certificate does not verify against it: {ca.verify_error}"
        )
    lines.append(f"Compare with the fingerprint on the engine: {COMPARE_HINT}")
    return "\n".join(lines)


def _confirmed(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _write_ca(path: Path, pem: bytes) -> None:
    """Write ``pem`` to ``path`` atomically, 0644 (a CA certificate is public)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.rhvfs-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cmd_ca(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    setup_logging(debug=args.debug)
    config_file = Path(args.config_file) if args.config_file else default_config_file()
    section = read_section(config_file, args.section)
    engine_url = section.get("engine_url")
    if not engine_url:
        raise ConfigError(f"[{args.section}] of {config_file} has no engine_url")
    output = Path(args.output or config_file.parent / f"{args.section}-ca.pem").absolute()
    if os.path.isdir(output):
        raise ConfigError(f"--output {output} is a directory")

    ca = fetch_engine_ca(engine_url)
    print(_describe(engine_url, ca), flush=True)
    if section.get("secure", "yes").strip().lower() in ("no", "false", "off", "0"):
        print(
            f"note: [{args.section}] has secure = no: rhvfs verifies TLS with cafile only "
            "once that line is gone",
            flush=True,
        )

    question = f"Trust it: write {output} and set cafile in [{args.section}] of {config_file}?"
    if not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise ConfigError(
                "nothing written: no terminal to confirm the fingerprint on; compare it "
                "with the engine's and run again with --yes"
            )
        if not _confirmed(question):
            print("nothing written", file=sys.stderr)
            return 1
    _write_ca(output, ca.pem)
    set_option(config_file, args.section, "cafile", str(output))
    print(f"wrote {output}; [{args.section}] cafile = {output} in {config_file}")
    return 0
