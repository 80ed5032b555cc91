"""Reversible escaping of engine names into file names.

``escape(name) -> str`` / ``unescape(file_name) -> str``: ``%`` is the escape
character; ``/``, NUL, other ASCII control characters and ``%`` itself become
``%XX``; a leading ``.`` becomes ``%2E`` (so ``.``, ``..`` and hidden-looking
names can't arise, and shell globs such as ``tags/bkup/*/@rhv`` see every VM);
lone surrogates become ``%uXXXX``; the empty name becomes ``%``. A name whose
escaped form exceeds ``NAME_MAX`` bytes is cut and ends with ``%#<hash>``:
still unique and stable, but only reversible through the listing that produced
it (``unescape`` raises ``ValueError`` for it; ``is_hashed`` tells).

Every file name rhvfs shows (the tree's and a backup set's) is made here, so
the escaping is the same everywhere.

Must not: know about directories, inodes, FUSE or the engine.
"""

from __future__ import annotations

import hashlib

NAME_MAX = 255  # bytes, as on Linux
_HASH_MARK = "%#"
_HASH_HEX = 16


def _needs_escape(ch: str) -> bool:
    code = ord(ch)
    return ch in "%/" or code < 0x20 or code == 0x7F


def escape(name: str) -> str:
    """Return a file name (no ``/``, no NUL, at most NAME_MAX UTF-8 bytes) for ``name``."""
    if name == "":
        return "%"
    parts: list[str] = []
    for i, ch in enumerate(name):
        code = ord(ch)
        if _needs_escape(ch) or (i == 0 and ch == "."):
            parts.append(f"%{code:02X}")
        elif 0xD800 <= code <= 0xDFFF:
            parts.append(f"%u{code:04X}")
        else:
            parts.append(ch)
    text = "".join(parts)
    if len(text.encode("utf-8")) <= NAME_MAX:
        return text
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    budget = NAME_MAX - len(_HASH_MARK) - _HASH_HEX
    kept: list[str] = []
    used = 0
    for part in parts:  # never cut inside an escape sequence or a multibyte character
        n = len(part.encode("utf-8"))
        if used + n > budget:
            break
        kept.append(part)
        used += n
    return "".join(kept) + _HASH_MARK + digest


def is_hashed(file_name: str) -> bool:
    """True when ``file_name`` is the shortened form of a too-long engine name."""
    return _HASH_MARK in file_name


def unescape(file_name: str) -> str:
    """Return the engine name ``file_name`` was made from; ``ValueError`` if it is not one."""
    if file_name == "%":
        return ""
    if is_hashed(file_name):
        raise ValueError(f"shortened name {file_name!r} is only resolvable through its listing")
    out: list[str] = []
    i = 0
    n = len(file_name)
    while i < n:
        ch = file_name[i]
        if ch != "%":
            if _needs_escape(ch) or (i == 0 and ch == "."):
                raise ValueError(f"not an escaped name: {file_name!r}")
            out.append(ch)
            i += 1
            continue
        if file_name.startswith("u", i + 1):
            digits, want, width = file_name[i + 2 : i + 6], 4, 6
        else:
            digits, want, width = file_name[i + 1 : i + 3], 2, 3
        if len(digits) != want or any(c not in "0123456789ABCDEF" for c in digits):
            raise ValueError(f"bad escape in {file_name!r} at {i}")
        out.append(chr(int(digits, 16)))
        i += width
    name = "".join(out)
    if escape(name) != file_name:  # e.g. "%41" for "A": one spelling per name
        raise ValueError(f"not a canonical escaped name: {file_name!r}")
    return name
