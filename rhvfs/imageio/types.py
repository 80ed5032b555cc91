"""Plain values of the imageio data plane: extents and server capabilities.

Owns only frozen value types and their validation. It must not do I/O and
must not import httpx, so ``rhvfs.cache`` and tests can use it freely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from rhvfs.errors import DataIntegrityError


@dataclasses.dataclass(frozen=True)
class Extent:
    """A byte range of the image. ``start``/``length`` in bytes.

    ``zero``: reads as zeroes. ``hole``: not allocated in the exported layer
    (reads as zeroes over this export). ``dirty``: changed since the backup's
    checkpoint (only in ``context="dirty"``).
    """

    start: int
    length: int
    zero: bool
    hole: bool = False
    dirty: bool = False

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def reads_as_zero(self) -> bool:
        """True when reading this range over a raw export yields zeroes (zero or hole)."""
        return self.zero or self.hole


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the server announced in OPTIONS. Old servers (405/204): no features, 1/1."""

    features: frozenset[str] = frozenset()
    max_readers: int = 1
    max_writers: int = 1

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Capabilities:
        features = doc.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise DataIntegrityError(f"OPTIONS: invalid features {features!r}")
        readers = doc.get("max_readers", 1)
        writers = doc.get("max_writers", 1)
        if not (isinstance(readers, int) and isinstance(writers, int)):
            raise DataIntegrityError("OPTIONS: max_readers/max_writers must be integers")
        return cls(frozenset(features), max(1, readers), max(1, writers))


def parse_extents(doc: Any, *, context: str) -> list[Extent]:
    """Validate an extents document: a non-empty list, contiguous from 0, positive lengths."""
    if not isinstance(doc, list):
        raise DataIntegrityError(f"extents ({context}): expected a list, got {type(doc).__name__}")
    result: list[Extent] = []
    pos = 0
    for item in doc:
        try:
            start, length = item["start"], item["length"]
            zero = bool(item.get("zero", False))
            hole = bool(item.get("hole", False))
            dirty = bool(item.get("dirty", False))
        except (TypeError, KeyError):
            raise DataIntegrityError(f"extents ({context}): malformed item {item!r}") from None
        if not (isinstance(start, int) and isinstance(length, int)) or length <= 0:
            raise DataIntegrityError(f"extents ({context}): malformed item {item!r}")
        if start != pos:
            raise DataIntegrityError(
                f"extents ({context}): gap or overlap at {pos} (next starts at {start})"
            )
        result.append(Extent(start, length, zero, hole, dirty))
        pos += length
    return result


def validate_extents(extents: Iterable[Extent], *, size: int) -> list[Extent]:
    """Check that ``extents`` cover exactly ``[0, size)``, in order; return them as a list."""
    result = list(extents)
    pos = 0
    for ext in result:
        if ext.start != pos or ext.length <= 0:
            raise ValueError(f"extents must be contiguous from 0: {ext} at {pos}")
        pos = ext.end
    if pos != size:
        raise ValueError(f"extents cover {pos} bytes, image size is {size}")
    return result
