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
    │   ├── UntrustedCertificate   TLS verification of the engine failed (its CA is not trusted)
    │   └── EngineUnavailable      transient: connection refused/reset, 5xx, timeout (retryable)
    ├── ImageioError               the data plane (ovirt-imageio) failed a request
    │   ├── TicketGone             403: the transfer's ticket is gone/expired; recreate the transfer
    │   └── ImageioUnavailable     transient: connection dropped, 5xx, timeout (retryable)
    ├── SessionError               a backup/restore session cannot do what was asked
    │   ├── VmStateError           the VM is in a state that forbids the operation (suspended…)
    │   ├── SessionClosed          used after ``aclose()`` (you closed it)
    │   ├── SessionBroken          the session failed on its own; every later read fails too
    │   ├── SetBusy                a new read waits for an earlier one still open (EBUSY)
    │   └── PointInTimeLost        a file would mix two points in time of one set (ESTALE)
    ├── RestoreError               a restore set is invalid or its upload failed (see .status)
    │   ├── RestoreInputError      a file, option or name of the restore is bad, corrupt or foreign
    │   │   └── SetFormatError     a backup set's file rhvfs cannot read (manifest, OVF)
    │   ├── RestoreNameClash       the name to restore to (VM, template, directory) is taken
    │   ├── RestoreNoSpace         a storage domain has no room for the disks to restore
    │   │   ├── StagingFull        the local staging area is full
    │   │   └── RestoreMemoryFull  configuration files in memory would pass staging_memory
    │   ├── RestoreTooLarge        data beyond the size of its disk or of a configuration file
    │   ├── RestoreBusy            the restore's state forbids the call now (retry later or not)
    │   ├── RestoreUnsupported     the engine facade cannot do what the options ask
    │   ├── RestoreWriteOnly       a file that was streamed to the engine is read back
    │   ├── RestoreFinished        the restore is done: nothing more can be written
    │   ├── RestoreImageSealed     an image changed after its upload was finalized
    │   ├── RestoreCancelled       the restore was cancelled (rmdir, or rhvfs stopped)
    │   └── RestoreFailed          an upload or a step on the engine failed
    ├── DataIntegrityError         bytes did not match what the protocol promised (short
    │                              read, wrong Content-Range): never returned to a reader
    └── FilesystemError            the VFS refuses a filesystem call by the tree's own rules
        ├── ReadOnlyFilesystem     a modifying call outside ``restore/`` (symlink, link: anywhere)
        ├── NotADirectory          a file or symlink used as a directory
        ├── IsADirectory           a directory opened, or unlinked, as a file
        ├── NotASymlink            readlink of something that is not a symlink
        ├── NotARegularFile        open of a symlink
        ├── SymlinkLoop            path resolution followed too many symlinks
        ├── SymlinkOutsideTree     path resolution met an absolute symlink
        ├── BadHandle              a file handle that is not open
        ├── NoSuchAttribute        an extended attribute that is not set
        ├── AttributesUnsupported  getxattr outside ``restore/``: that tree has no xattrs
        ├── NameExists             the name is taken in that directory
        ├── DirectoryNotEmpty      rmdir of a directory that still has entries
        ├── GeneratedFile          write, truncate or rename of ``restore/<name>/.status``
        ├── NotInRestoreSet        a file created directly in ``restore/``
        ├── UnsupportedFileType    mknod (device, fifo, socket) below ``restore/``
        └── RenameAcrossSets       rename between two ``restore/<name>/``, or of one itself

``NotFound`` is also what the VFS raises for a missing name or inode. Which
errno a filesystem call returns for each class is decided in one place, the
``ERRNO`` table in ``rhvfs.fs``; neither the VFS (``rhvfs.vfs``) nor the
sessions know errno values, and no error carries an errno of its own.

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


#: What to do about a certificate rhvfs could not verify: one clause, added to the
#: engine's and imageio's TLS verification errors.
CA_HINT = (
    "if the engine's CA is not trusted yet, get it with `rhvfs ca fetch -c SECTION` "
    "(compare the fingerprint it shows) or set cafile"
)


class UntrustedCertificate(EngineError):
    """Raised when TLS verification of the engine failed (unknown CA, wrong host name): a
    configuration problem, never retried. ``detail`` is the reason, not libcurl's text."""

    message = "TLS verification of the engine failed: {detail}; " + CA_HINT


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


class SetBusy(SessionError):
    """Raised when a new read of a set must wait for an earlier read that another process
    still holds open, and ``system_timeout`` passed (EBUSY: try again later)."""

    message = "{detail}"


class PointInTimeLost(SessionError):
    """Raised when serving a file would mix two points in time of one set: the read of the
    set it belongs to has ended (idle past ``read_idle_limit``, its session failed, a newer
    read began while this process was still reading) or the VM changed between the read's
    configuration and its data. The tool must start its backup of the set again."""

    message = "{detail}"


class RestoreError(RhvfsError):
    """Raised when a restore set is invalid or its upload failed; the text goes to ``.status``."""

    message = "restore failed: {detail}"


# The restore errors keep their base's message template: ``str(err)`` is what ``.status``
# shows for a failed disk, and it reads the same whichever class was raised.


class RestoreInputError(RestoreError):
    """Raised when what was written into ``restore/<name>/`` is unusable: a manifest or OVF
    that is corrupt, truncated or of another set, options that do not fit the set (unknown
    disks, a cluster or storage domain that does not exist), a chain that does not link up,
    an image renamed or shrunk while it uploads, or a restore directory name that cannot be
    used."""


class SetFormatError(RestoreInputError):
    """Raised by ``rhvfs.backupset`` when a set's file is not one it can read: not JSON or
    XML, not an rhvfs manifest or an OVF, a newer manifest ``format_version``, a missing or
    mistyped field, a value a set cannot hold, or a file larger than its bound. The text
    names the file."""


class RestoreNameClash(RestoreError):
    """Raised when a name the restore needs is taken: a VM (without ``vm_force_overwrite``)
    or template of the target name exists, ``restore/<name>`` exists, or two files claim
    the same disk of the set."""


class RestoreNoSpace(RestoreError):
    """Raised before any engine change when a target storage domain has less room than
    the selected disks need."""


class StagingFull(RestoreNoSpace):
    """Raised when a write would take the local staging area past ``staging_limit`` (data
    that arrived before ``manifest.json`` described it, or a chain's delta files)."""

    message = "restore staging full: {detail}"


class RestoreMemoryFull(RestoreNoSpace):
    """Raised when a write into a configuration file (held in memory) would take the
    configuration files of all restores of the mount past ``staging_memory``."""

    message = "restore memory full: {detail}"


class RestoreTooLarge(RestoreError):
    """Raised when data goes beyond what it may hold: a write or size past the end of its
    disk, an image longer than its disk, or a configuration or options file too large to
    be one."""


class RestoreBusy(RestoreError):
    """Raised when the restore's state forbids the call at this moment: options written
    after the set's data froze them, an image removed while it uploads, ``rmdir`` while
    the VM is being created, or a VM to replace that is not down."""


class RestoreUnsupported(RestoreError):
    """Raised when the options ask for something the engine facade cannot do (a template
    made from a restored VM needs ``create_template``)."""


class RestoreWriteOnly(RestoreError):
    """Raised when a file whose data was streamed to the engine is read back."""


class RestoreFinished(RestoreError):
    """Raised when a file call reaches a restore that is done (its VM exists): the
    directory takes nothing more."""


class RestoreImageSealed(RestoreError):
    """Raised when a write or resize reaches a disk image whose upload was already
    finalized: the change cannot be applied, so the restore fails (never lost silently)."""


class RestoreCancelled(RestoreError):
    """Raised (and recorded in ``.status``) when a restore is cancelled before it finished:
    its directory was removed, or rhvfs stopped."""


class RestoreFailed(RestoreError):
    """Raised when a restore failed on its own: an upload broke or was aborted, an image
    closed short of its disk's size, or an engine step (creating the VM, the template)
    failed. Every later call on the restore raises it again."""


class DataIntegrityError(RhvfsError):
    """Raised when received bytes do not match what the protocol promised; never served to a reader."""

    message = "data integrity: {detail}"


class FilesystemError(RhvfsError):
    """Raised (as one of its subclasses) when the VFS refuses a filesystem call by the rules
    of the tree itself, before any engine or session is involved."""

    message = "{detail}"


class ReadOnlyFilesystem(FilesystemError):
    """Raised when a call would modify the tree outside ``restore/`` (open for writing or
    with O_TRUNC, create, mkdir, mknod, symlink, link, unlink, rmdir, rename, setattr,
    setxattr, removexattr, write), and for symlink and link anywhere, ``restore/`` included."""

    message = "read-only: {detail}"


class NotADirectory(FilesystemError):
    """Raised when a file or symlink is used as a directory: listed, looked up in, created
    in, or named as a parent in ``restore/``; or rmdir of a file below ``restore/``."""

    message = "not a directory: {detail}"


class IsADirectory(FilesystemError):
    """Raised when a directory is opened as a file, or unlinked below ``restore/``."""

    message = "is a directory: {detail}"


class NotASymlink(FilesystemError):
    """Raised by readlink of a node that is not a symlink."""

    message = "not a symlink: {detail}"


class NotARegularFile(FilesystemError):
    """Raised when something that is neither a regular file nor a directory (a symlink) is
    opened."""

    message = "not a regular file: {detail}"


class SymlinkLoop(FilesystemError):
    """Raised by path resolution (``Vfs.resolve``) after following more than 16 symlinks."""

    message = "too many symlinks: {detail}"


class SymlinkOutsideTree(FilesystemError):
    """Raised by path resolution (``Vfs.resolve``) at a symlink with an absolute target:
    the tree's own symlinks are relative, an absolute one would leave the tree."""

    message = "absolute symlink: {detail}"


class BadHandle(FilesystemError):
    """Raised when a read, write, flush or fsync names a file handle that is not open."""

    message = "bad file handle: {detail}"


class NoSuchAttribute(FilesystemError):
    """Raised by getxattr or removexattr of an extended attribute that is not set (outside
    ``restore/`` none ever is)."""

    message = "no such attribute: {detail}"


class AttributesUnsupported(FilesystemError):
    """Raised by getxattr outside ``restore/``: the read-only tree has no extended attributes
    (listxattr lists none). "Not supported" rather than "not set" lets ``ls -l`` stop probing
    every file for ACLs and security labels (it remembers the device), which would otherwise
    double the requests of an ``ls -lR`` over thousands of files."""

    message = "extended attributes are not supported here: {detail}"


class NameExists(FilesystemError):
    """Raised below ``restore/`` by mkdir of an existing name, create with O_EXCL of an
    existing file, and rename onto a directory or a generated file."""

    message = "exists: {detail}"


class DirectoryNotEmpty(FilesystemError):
    """Raised by rmdir of a subdirectory of a restore set that still has entries."""

    message = "directory not empty: {detail}"


class GeneratedFile(FilesystemError):
    """Raised when a call would write, truncate or rename a file rhvfs generates
    (``restore/<name>/.status``) or open it for writing, and when a file named ``.status``
    is created in a subdirectory of a restore set (the name is rhvfs's)."""

    message = "generated by rhvfs: {detail}"


class NotInRestoreSet(FilesystemError):
    """Raised when a file is created directly in ``restore/`` (or anywhere not below a
    ``restore/<name>/`` directory): create the directory first, then write the set into it."""

    message = "{detail}"


class UnsupportedFileType(FilesystemError):
    """Raised by mknod below ``restore/``: a backup set holds regular files only, never
    devices, fifos or sockets."""

    message = "unsupported file type: {detail}"


class RenameAcrossSets(FilesystemError):
    """Raised by rename from one ``restore/<name>/`` directory into another (each is its own
    restore session), and by rename into or out of ``restore/`` itself (a restore directory
    keeps its name)."""

    message = "{detail}"


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same request may succeed."""
    return isinstance(exc, Transient)
