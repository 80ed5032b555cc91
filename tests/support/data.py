"""Test data and checksums: deterministic bytes, sha256 of bytes, files and disk images.

Owns the one way tests compute a checksum (sha256, hex) of data, of a file
(read in chunks: images are large) and of the guest-visible bytes of an image
(``qemu-img convert`` to raw first). Must not: know about rhvfs.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

MiB = 1024 * 1024
CHUNK_BYTES = 8 * MiB


def pattern(seed: int, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes for ``seed``."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha(data: bytes | bytearray | memoryview) -> str:
    """sha256 (hex) of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_image(image: Path, *, src_format: str | None = None, suffix: str = ".raw") -> str:
    """sha256 of the guest-visible bytes of ``image`` (a qcow2 chain top or raw).

    Converted with ``qemu-img convert -O raw`` (following backing files) into
    ``image`` + ``suffix`` next to it, which is removed afterwards.
    """
    out = image.with_name(image.name + suffix)
    argv = ["qemu-img", "convert"]
    if src_format is not None:
        argv += ["-f", src_format]
    argv += ["-O", "raw", str(image), str(out)]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    try:
        return sha256_file(out)
    finally:
        out.unlink()
