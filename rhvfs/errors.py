"""The rhvfs exception tree.

Every error that crosses a layer boundary is one of these. Foreign errors
(ovirtsdk4, httpx, OSError from subprocesses) are translated in exactly one
place per foreign library (``rhvfs.engine._translate`` for the SDK,
``rhvfs.imageio._translate`` for httpx); nothing above those layers catches a
foreign exception type.

    RhvfsError                     base; ``message`` template filled from attributes
    ├── ConfigError                bad/missing configuration or CLI input (user error)
    ├── EngineError                the engine (REST API) refused or failed a request
    │   ├── AuthenticationError    wrong credentials, expired token that could not be renewed
    │   ├── NotFound               the entity does not exist (HTTP 404)
    │   ├── Conflict               the engine refused because of state: locked, busy (HTTP 409)
    │   └── EngineUnavailable      transient: connection refused/reset, 5xx, timeout (retryable)
    ├── ImageioError               the data plane (ovirt-imageio) failed a request
    │   ├── TicketGone             403: the transfer's ticket is gone/expired; recreate the transfer
    │   └── ImageioUnavailable     transient: connection dropped, 5xx, timeout (retryable)
    ├── SessionError               a backup/restore session cannot do what was asked
    │   ├── VmStateError           the VM is in a state that forbids the operation (suspended…)
    │   ├── SessionClosed          used after ``aclose()`` (you closed it)
    │   └── SessionBroken          the session failed on its own; every later read fails too
    ├── RestoreError               a restore set is invalid or its upload failed (see .status)
    │   └── SetFormatError         a backup set file is not one rhvfs can read (bad manifest)
    └── DataIntegrityError         bytes did not match what the protocol promised (short
                                   read, wrong Content-Range): never returned to a reader

Retryable errors are exactly those deriving from ``Transient``.
"""

from __future__ import annotations

from typing import Any


class RhvfsError(Exception):
    """Base of all rhvfs errors. ``str(err)`` is one human-readable line."""

    message: str = "{detail}"

    def __init__(self, detail: str = "", **attrs: Any) -> None:
        self.detail = detail
        for key, value in attrs.items():
            setattr(self, key, value)
        try:
            text = self.message.format(detail=detail, **attrs)
        except (KeyError, IndexError):
            text = detail
        super().__init__(text)


class Transient:
    """Mixin: the failure may go away when the same request is retried."""


class ConfigError(RhvfsError):
    """Raised for invalid configuration or command-line input; the CLI prints it as one line."""

    message = "configuration error: {detail}"


class EngineError(RhvfsError):
    """Raised when the engine refused or failed a request. ``code`` is the HTTP status or None."""

    code: int | None = None
    message = "engine error: {detail}"


class AuthenticationError(EngineError):
    """Raised when the engine rejects the credentials (SSO error, 401/403)."""

    message = "authentication failed: {detail}"


class NotFound(EngineError):
    """Raised when the entity does not exist (HTTP 404)."""

    message = "not found: {detail}"


class Conflict(EngineError):
    """Raised when the engine refuses because of the entity's state (HTTP 409): locked, busy."""

    message = "conflict: {detail}"


class EngineUnavailable(EngineError, Transient):
    """Raised for transient engine failures: connection errors, 5xx, timeouts. Retryable."""

    message = "engine unavailable: {detail}"


class ImageioError(RhvfsError):
    """Raised when ovirt-imageio failed a request. ``status`` is the HTTP status or None."""

    status: int | None = None
    message = "imageio error: {detail}"


class TicketGone(ImageioError):
    """Raised on 403 from imageio: the ticket expired or was removed; the transfer must be recreated."""

    message = "imageio ticket gone: {detail}"


class ImageioUnavailable(ImageioError, Transient):
    """Raised for transient data-plane failures: dropped connection, 5xx, timeout. Retryable."""

    message = "imageio unavailable: {detail}"


class SessionError(RhvfsError):
    """Raised when a backup or restore session cannot do what was asked."""

    message = "session error: {detail}"


class VmStateError(SessionError):
    """Raised when the VM's status forbids the operation (e.g. a suspended VM cannot be backed up)."""

    message = "{detail}"


class SessionClosed(SessionError):
    """Raised when a session is used after it was closed by its owner."""

    message = "session closed: {detail}"


class SessionBroken(SessionError):
    """Raised when a session failed on its own; it stays broken and must be discarded."""

    message = "session broken: {detail}"


class RestoreError(RhvfsError):
    """Raised when a restore set is invalid or its upload failed; the text goes to ``.status``."""

    message = "restore failed: {detail}"


class SetFormatError(RestoreError):
    """Raised by ``rhvfs.backupset`` when a set's file is not one it can read: not JSON,
    not an rhvfs manifest, a newer format version, a missing or mistyped field, a
    value a set cannot hold, or a file larger than its bound. The text names the file."""


class DataIntegrityError(RhvfsError):
    """Raised when received bytes do not match what the protocol promised; never served to a reader."""

    message = "data integrity: {detail}"


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same request may succeed."""
    return isinstance(exc, Transient)
