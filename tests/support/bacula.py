"""A private, real Bacula community installation for tests: ``BaculaRig``.

Owns one rig under one work directory: the Director, Storage daemon and File
daemon configs, their lifetimes as plain foreground child processes (running as
root, bound to 127.0.0.1 only), the sqlite3 catalog, bconsole dialogue, and
reading job results back from the catalog.

It must not touch the system's Bacula (/etc/bacula, /var/lib/bacula, system
services) nor leave a daemon running after ``close()``. It knows nothing about
rhvfs: callers pass paths (e.g. a VM's backup set on a mount) and get numbers,
statuses and logs back.

Usage::

    with BaculaRig(tmp_path / "bacula", fd_ports=2) as rig:
        full = rig.run_backup("vm1", FileSet([src], options={"sparse": "yes"}))
        assert full.ok, full.log
        incr = rig.run_backup("vm1", level="Incremental")
        back = rig.run_restore([full.jobid, incr.jobid], tmp_path / "out", fd=1)

Bacula 9.6 behaviour that tests must allow for:

- A backup that cannot read or stat a file does not fail: it ends with status
  'T', JobErrors > 0 and "Backup OK -- with warnings". The log has
  ``Error: Read error on file PATH. ERR=Input/output error`` (a read error,
  counted twice in JobErrors) or ``Could not stat "PATH": ERR=...``. A file
  that failed mid-read is in the catalog anyway, holding the bytes read before
  the error; its restore then ends 'E' with ``File size of restored file PATH
  not correct. Original N, restored M``. So check ``JobResult.ok``.
- A restore with any error ends 'E' ("*** Restore Error ***").
- With ``sparse=yes`` the File daemon reads 65,528-byte chunks (64 KiB less
  its 8-byte offset header), so reads are not 64 KiB aligned; all-zero chunks
  are not stored and are restored as holes.
- A regular file whose stat size is 0 is never read.
- Incremental change detection compares mtime/ctime with the previous job's
  start time, in whole seconds: a change in the same second as that start can
  be missed (the tests wait 1.1 s). Accurate mode also records deletions.
- A job starts up to ~2 s after it is queued, and the Director takes up to
  ~4 s to exit after its last job (idle job-queue threads): one backup plus
  one restore of a small tree takes 2-6 s, ``close()`` 3-4 s.
- Debug level >= 100 makes the File daemon report (and a restore fail on)
  the lchmod() of symlinks, which Linux does not support; keep it 0 for jobs
  whose status matters.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Literal

SBIN = Path("/usr/sbin")
DIR_BIN = SBIN / "bacula-dir"
SD_BIN = SBIN / "bacula-sd"
FD_BIN = SBIN / "bacula-fd"
BCONSOLE_BIN = SBIN / "bconsole"
CATALOG_SCHEMA = Path("/usr/share/dbconfig-common/data/bacula-director-sqlite3/install/sqlite3")
QUERY_FILE = Path("/etc/bacula/scripts/query.sql")

DIR_NAME = "rig-dir"
SD_NAME = "rig-sd"
DEVICE_NAME = "rig-dev"
POOL_NAME = "rig-pool"
CATALOG_NAME = "rig-catalog"
RESTORE_JOB = "rig-restore"
#: The Director's catalog file is ``<working directory>/<dbname>.db``.
DB_NAME = "bacula"

#: Job statuses (Job.JobStatus in the catalog) that mean the job has ended.
FINAL_STATUSES = frozenset("TEefAWDI")
#: What each status letter means, for messages.
STATUS_TEXT = {
    "T": "terminated normally",
    "E": "terminated in error",
    "e": "non-fatal error",
    "f": "fatal error",
    "A": "canceled",
    "W": "terminated with warnings",
    "D": "verify found differences",
    "I": "incomplete",
    "R": "running",
    "C": "created, not yet running",
}

Level = Literal["Full", "Incremental", "Differential"]
Replace = Literal["always", "ifnewer", "ifolder", "never"]

DEFAULT_OPTIONS: Mapping[str, str] = {"signature": "SHA1"}


class BaculaError(RuntimeError):
    """Raised when the rig itself fails: a daemon does not start, bconsole refuses
    a command, or a job does not end within its timeout. A job that *runs* and
    fails is not an error here: it is a ``JobResult`` with a non-'T' status."""


@dataclasses.dataclass(frozen=True)
class FileSet:
    """What one backup job saves.

    ``include``: paths (files, directories; a block device named explicitly is
    read raw). ``options``: the Include's Options block, e.g. ``{"signature":
    "SHA1", "sparse": "yes", "onefs": "no"}`` (a value that is a list becomes
    repeated lines, e.g. ``{"wildfile": ["*.tmp"], "exclude": "yes"}``).
    ``exclude``: paths for an Exclude block.
    """

    include: Sequence[str | os.PathLike[str]]
    options: Mapping[str, str | Sequence[str]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_OPTIONS)
    )
    exclude: Sequence[str | os.PathLike[str]] = ()

    def render(self, name: str) -> str:
        lines = [f"FileSet {{\n  Name = {_q(name)}\n  Include {{\n    Options {{"]
        for key, value in self.options.items():
            values = [value] if isinstance(value, str) else list(value)
            lines += [f"      {key} = {_word(v)}" for v in values]
        lines.append("    }")
        lines += [f"    File = {_q(os.fspath(p))}" for p in self.include]
        lines.append("  }")
        if self.exclude:
            lines.append("  Exclude {")
            lines += [f"    File = {_q(os.fspath(p))}" for p in self.exclude]
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class JobResult:
    """One finished job, as the catalog recorded it.

    ``status``: Bacula's JobStatus letter ('T' ok, 'E'/'e'/'f' errors, 'A'
    canceled). ``errors``: JobErrors. A *backup* whose files could not be read
    or stat'ed still ends with status 'T', errors > 0 and "Backup OK -- with
    warnings" (the unreadable file is in the catalog, truncated at the error),
    while a *restore* with any error ends 'E': check ``ok``, not the status
    alone. ``level``: 'F', 'I', 'D' for backups (an Incremental without a prior
    Full of the same job and FileSet is upgraded to 'F'); restores show 'F'.
    ``files``/``bytes``: JobFiles/JobBytes (bytes are the data read or
    written, sparse holes skipped). ``log``: the job's messages, report included.
    """

    jobid: int
    name: str
    type: str
    level: str
    status: str
    files: int
    bytes: int
    errors: int
    log: str

    @property
    def ok(self) -> bool:
        return self.status == "T" and self.errors == 0

    def describe(self) -> str:
        what = STATUS_TEXT.get(self.status, "unknown status")
        return (
            f"job {self.jobid} ({self.name}, level {self.level!r}): status {self.status!r} "
            f"({what}), {self.files} files, {self.bytes} bytes, {self.errors} errors"
        )


@dataclasses.dataclass(frozen=True)
class _JobDef:
    fileset: FileSet
    fd: int
    accurate: bool


class BaculaRig:
    """A Director, a Storage daemon with one File device, ``fd_ports`` File daemons
    (named ``rig-fd0``, ``rig-fd1``...) and a sqlite3 catalog, all under ``workdir``
    and on 127.0.0.1 ports chosen at start.

    ``start()`` (or ``with``) writes the configs, creates the catalog, starts the
    daemons (``-f``, as root) and waits until bconsole reaches every daemon.
    ``close()`` stops them all and raises if any process is left.

    Backup jobs are declared on first use (``run_backup(name, fileset)``), which
    rewrites bacula-dir.conf and reloads the Director; later runs of the same
    name reuse the job (pass no fileset, or the same one: a changed FileSet makes
    Bacula upgrade the next Incremental to a Full).

    ``fd_ports``: how many File daemons (each on its own port). ``heartbeat_s``:
    every daemon's Heartbeat Interval. ``connect_timeout_s``: how long the
    Director waits for a File or Storage daemon, and the Storage daemon for a
    File daemon (Bacula's default is 30 minutes). ``job_timeout_s``: the default
    ``wait_job`` limit. ``volume_bytes``: Maximum Volume Bytes of the
    automatically labelled volumes. ``debug_level``: the daemons' ``-d`` (their
    output goes to ``workdir/log/ROLE.out``).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        fd_ports: int = 1,
        heartbeat_s: int = 2,
        connect_timeout_s: int = 15,
        start_timeout_s: float = 30.0,
        job_timeout_s: float = 300.0,
        volume_bytes: int = 256 * 1024 * 1024,
        debug_level: int = 0,
        restore_check: Sequence[str] = (),
    ) -> None:
        """``restore_check``: a command (argv, no quotes inside) the restore job runs on its
        client after the restore (``RunScript``, ``FailJobOnError``): non-zero fails the job."""
        if fd_ports < 1:
            raise ValueError(f"fd_ports must be >= 1, not {fd_ports}")
        self.workdir = Path(workdir).resolve()
        self.fd_count = fd_ports
        self.heartbeat_s = heartbeat_s
        self.connect_timeout_s = connect_timeout_s
        self.start_timeout_s = start_timeout_s
        self.job_timeout_s = job_timeout_s
        self.volume_bytes = volume_bytes
        self.debug_level = debug_level
        self.restore_check = tuple(restore_check)
        self.dir_port = 0
        self.sd_port = 0
        self.fd_ports: list[int] = []
        self._jobs: dict[str, _JobDef] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._password = {
            "dir": secrets.token_hex(16),
            "sd": secrets.token_hex(16),
            "fd": secrets.token_hex(16),
        }
        self.conf_dir = self.workdir / "etc"
        self.volume_dir = self.workdir / "volumes"
        self.log_path = self.workdir / "log" / "bacula.log"
        self.catalog_path = self.workdir / "dir" / f"{DB_NAME}.db"

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> BaculaRig:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> BaculaRig:
        """Write the configs, create the catalog, start every daemon, wait until ready."""
        if self._procs:
            raise BaculaError("the rig is already started")
        for binary in (DIR_BIN, SD_BIN, FD_BIN, BCONSOLE_BIN, CATALOG_SCHEMA):
            if not binary.exists():
                raise BaculaError(f"{binary} is missing: run scripts/setup.sh with RHVFS_BACULA=1")
        for sub in ("etc", "dir", "sd", "log", "run", "volumes", "bsr"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for i in range(self.fd_count):
            (self.workdir / f"fd{i}").mkdir(exist_ok=True)
        ports = _free_ports(2 + self.fd_count)
        self.dir_port, self.sd_port, self.fd_ports = ports[0], ports[1], ports[2:]
        self._create_catalog()
        self._write_configs()
        try:
            self._spawn("sd", SD_BIN, self.conf_dir / "bacula-sd.conf")
            for i in range(self.fd_count):
                self._spawn(f"fd{i}", FD_BIN, self.conf_dir / f"bacula-fd{i}.conf")
            self._spawn("dir", DIR_BIN, self.conf_dir / "bacula-dir.conf")
            self._wait_ready()
        except BaseException:
            self._stop_all()
            raise
        return self

    def close(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL); raise if one had to be killed or survives."""
        if not self._procs:
            return
        problems = self._stop_all()
        if problems:
            raise BaculaError("; ".join(problems))

    @property
    def pids(self) -> dict[str, int]:
        """The running daemons' pids, by role ('dir', 'sd', 'fd0', ...)."""
        return {role: p.pid for role, p in self._procs.items() if p.poll() is None}

    def fd_name(self, fd: int) -> str:
        self._check_fd(fd)
        return f"rig-fd{fd}"

    # -- jobs ------------------------------------------------------------

    def define_job(
        self,
        job_name: str,
        fileset: FileSet | Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        fd: int = 0,
        accurate: bool = False,
    ) -> None:
        """Declare (or redefine) backup job ``job_name``; reloads the Director if it changed."""
        self._check_fd(fd)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", job_name):
            raise ValueError(f"job name {job_name!r}: use letters, digits, '_', '.', '-'")
        if job_name == RESTORE_JOB:
            raise ValueError(f"{RESTORE_JOB!r} is the rig's restore job")
        job = _JobDef(fileset=_as_fileset(fileset), fd=fd, accurate=accurate)
        if self._jobs.get(job_name) == job:
            return
        self._jobs[job_name] = job
        self._write_configs()
        out = self.bconsole(["reload"])
        if "rror" in out:
            raise BaculaError(f"the Director refused the new configuration:\n{out}")

    def start_backup(
        self,
        job_name: str,
        fileset: FileSet | Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
        *,
        level: Level = "Full",
        fd: int | None = None,
        accurate: bool | None = None,
    ) -> int:
        """Queue a backup; return its JobId without waiting (see ``wait_job``).

        ``fileset``, ``fd`` and ``accurate`` default to the job's current
        definition (``fd=0``, not accurate, for a new job, which needs a fileset).
        """
        known = self._jobs.get(job_name)
        if fileset is None:
            if known is None:
                raise ValueError(f"job {job_name!r} is new: pass the paths or a FileSet")
            fileset = known.fileset
        self.define_job(
            job_name,
            fileset,
            fd=fd if fd is not None else (known.fd if known else 0),
            accurate=accurate if accurate is not None else (known.accurate if known else False),
        )
        out = self.bconsole([f"run job={job_name} level={level} yes"])
        return _queued_jobid(out)

    def run_backup(
        self,
        job_name: str,
        fileset: FileSet | Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
        *,
        level: Level = "Full",
        fd: int | None = None,
        accurate: bool | None = None,
        timeout_s: float | None = None,
    ) -> JobResult:
        """Run a backup job to its end and return its result (any status)."""
        jobid = self.start_backup(job_name, fileset, level=level, fd=fd, accurate=accurate)
        return self.wait_job(jobid, timeout_s=timeout_s)

    def start_restore(
        self,
        jobid: int | Sequence[int],
        where: str | os.PathLike[str] | None,
        *,
        fd: int = 0,
        regexwhere: str | None = None,
        strip_prefix: str | os.PathLike[str] | None = None,
        add_prefix: str | os.PathLike[str] | None = None,
        replace: Replace = "always",
    ) -> int:
        """Queue a restore of every file of ``jobid`` (one JobId, or a Full and its
        Incrementals) on File daemon ``fd``; return the restore's JobId.

        ``where``: a directory the original absolute paths are recreated under
        (``None`` or "/" restores in place). ``strip_prefix`` removes a leading
        path first (Bacula then puts ``where`` in front as its add_prefix), so
        ``strip_prefix=src, where=dst`` maps ``src/x`` to ``dst/x``.
        ``regexwhere``: Bacula's own ``!from!to!`` rewrite (not with the others).
        """
        self._check_fd(fd)
        jobids = [jobid] if isinstance(jobid, int) else list(jobid)
        if not jobids:
            raise ValueError("no jobid to restore")
        args = [
            f"restore jobid={','.join(str(j) for j in jobids)}",
            f"client={self._job_client(jobids[-1])}",
            f"restoreclient={self.fd_name(fd)}",
            f"restorejob={RESTORE_JOB}",
            f"replace={replace}",
        ]
        if regexwhere is not None:
            if where is not None or strip_prefix is not None or add_prefix is not None:
                raise ValueError("regexwhere excludes where, strip_prefix and add_prefix")
            args.append(f"regexwhere={_q(regexwhere)}")
        elif strip_prefix is not None or add_prefix is not None:
            # The Director takes either where= or the prefix options, not both.
            prefix = os.fspath(add_prefix) if add_prefix is not None else None
            if where is not None and os.fspath(where) not in ("", "/"):
                if prefix is not None:
                    raise ValueError("pass where or add_prefix, not both")
                prefix = os.fspath(where)
            if strip_prefix is not None:
                args.append(f"strip_prefix={_q(os.fspath(strip_prefix))}")
            if prefix is not None:
                args.append(f"add_prefix={_q(prefix)}")
        else:
            args.append(f"where={_q(os.fspath(where) if where is not None else '')}")
        args += ["all", "done", "yes"]
        out = self.bconsole([" ".join(args)])
        return _queued_jobid(out)

    def run_restore(
        self,
        jobid: int | Sequence[int],
        where: str | os.PathLike[str] | None,
        *,
        fd: int = 0,
        regexwhere: str | None = None,
        strip_prefix: str | os.PathLike[str] | None = None,
        add_prefix: str | os.PathLike[str] | None = None,
        replace: Replace = "always",
        timeout_s: float | None = None,
    ) -> JobResult:
        """Run a restore to its end and return its result (see ``start_restore``)."""
        rid = self.start_restore(
            jobid,
            where,
            fd=fd,
            regexwhere=regexwhere,
            strip_prefix=strip_prefix,
            add_prefix=add_prefix,
            replace=replace,
        )
        return self.wait_job(rid, timeout_s=timeout_s)

    def job_status(self, jobid: int) -> str | None:
        """The job's current status letter ('C' created, 'R' running, then a final
        one), or None while the catalog has no record of it yet."""
        row = self._job_row(jobid)
        return None if row is None else str(row["JobStatus"])

    def cancel(self, jobid: int) -> None:
        """Ask the Director to cancel job ``jobid`` (``wait_job`` then reports 'A')."""
        out = self.bconsole([f"cancel jobid={jobid} yes"])
        if "rror" in out and "not found" not in out:
            raise BaculaError(f"cancel of job {jobid} failed:\n{out}")

    def wait_job(self, jobid: int, *, timeout_s: float | None = None) -> JobResult:
        """Wait until job ``jobid`` ends; return its result. Raises BaculaError on timeout
        (after canceling the job)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.job_timeout_s)
        delay = 0.05
        while True:
            row = self._job_row(jobid)
            if row is not None and row["JobStatus"] in FINAL_STATUSES and self._job_done(jobid):
                break
            if time.monotonic() > deadline:
                self.bconsole([f"cancel jobid={jobid} yes"])
                raise BaculaError(f"job {jobid} did not end in time:\n{self.job_log(jobid)}")
            self._check_alive()
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        return JobResult(
            jobid=jobid,
            name=str(row["Name"]),
            type=str(row["Type"]),
            level=str(row["Level"]),
            status=str(row["JobStatus"]),
            files=int(row["JobFiles"] or 0),
            bytes=int(row["JobBytes"] or 0),
            errors=int(row["JobErrors"] or 0),
            log=self.job_log(jobid),
        )

    def list_files(self, jobid: int) -> list[str]:
        """The paths job ``jobid`` saved (directories end with '/'), sorted, as the
        catalog has them (files deleted since the last backup, which an Accurate
        Incremental records, are left out)."""
        with closing(self._catalog()) as db:
            rows = db.execute(
                "SELECT Path.Path || Filename.Name FROM File"
                " JOIN Path ON Path.PathId = File.PathId"
                " JOIN Filename ON Filename.FilenameId = File.FilenameId"
                " WHERE File.JobId = ? AND File.FileIndex > 0",
                (jobid,),
            ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def job_log(self, jobid: int) -> str:
        """The job's messages from the catalog's Log table, in order."""
        with closing(self._catalog()) as db:
            rows = db.execute(
                "SELECT LogText FROM Log WHERE JobId = ? ORDER BY LogId", (jobid,)
            ).fetchall()
        # The sqlite catalog stores each message with its C string terminator
        # escaped: a trailing backslash.
        return "".join(str(r[0]).removesuffix("\\") for r in rows)

    def bconsole(self, commands: Sequence[str], *, timeout_s: float = 60.0) -> str:
        """Send ``commands`` to the Director through bconsole; return its output."""
        script = "\n".join(commands) + "\nquit\n"
        try:
            done = subprocess.run(
                [str(BCONSOLE_BIN), "-n", "-c", str(self.conf_dir / "bconsole.conf")],
                input=script.encode(),
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise BaculaError(f"bconsole did not answer {commands!r} in {timeout_s} s") from e
        out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        if done.returncode != 0:
            raise BaculaError(f"bconsole exited {done.returncode} on {commands!r}:\n{out}")
        return out

    # -- internals -------------------------------------------------------

    def _check_fd(self, fd: int) -> None:
        if not 0 <= fd < self.fd_count:
            raise ValueError(f"no File daemon {fd}: the rig has {self.fd_count}")

    def _catalog(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.catalog_path}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def _job_row(self, jobid: int) -> sqlite3.Row | None:
        with closing(self._catalog()) as db:
            row: sqlite3.Row | None = db.execute(
                "SELECT Name, Type, Level, JobStatus, JobFiles, JobBytes, JobErrors"
                " FROM Job WHERE JobId = ?",
                (jobid,),
            ).fetchone()
        return row

    def _job_done(self, jobid: int) -> bool:
        """The catalog gets the final status before the Director has released the job
        (last messages, ``status dir``): ask the Director too."""
        out = self.bconsole([".status dir running"])
        return re.search(rf"^\s*{jobid}\s", out, re.MULTILINE) is None

    def _job_client(self, jobid: int) -> str:
        with closing(self._catalog()) as db:
            row = db.execute(
                "SELECT Client.Name FROM Job JOIN Client ON Client.ClientId = Job.ClientId"
                " WHERE Job.JobId = ?",
                (jobid,),
            ).fetchone()
        if row is None:
            raise BaculaError(f"no job {jobid} in the catalog")
        return str(row[0])

    def _create_catalog(self) -> None:
        if self.catalog_path.exists():
            return
        tmp = self.catalog_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            db.executescript(CATALOG_SCHEMA.read_text())
            db.commit()
        finally:
            db.close()
        tmp.rename(self.catalog_path)

    def _spawn(self, role: str, binary: Path, conf: Path) -> None:
        test = subprocess.run(
            [str(binary), "-t", "-c", str(conf)], capture_output=True, text=True, check=False
        )
        if test.returncode != 0:
            raise BaculaError(f"{binary.name} rejects {conf}:\n{test.stdout}{test.stderr}")
        with open(self.workdir / "log" / f"{role}.out", "ab") as out:
            self._procs[role] = subprocess.Popen(
                [str(binary), "-f", "-c", str(conf)]
                + (["-d", str(self.debug_level), "-dt"] if self.debug_level else []),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _check_alive(self) -> None:
        for role, proc in self._procs.items():
            if proc.poll() is not None:
                tail = (self.workdir / "log" / f"{role}.out").read_text(errors="replace")[-2000:]
                raise BaculaError(f"bacula {role} exited with {proc.returncode}:\n{tail}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        # bconsole waits 5 s before it retries a refused connection: connect only
        # once every daemon listens.
        ports = {self.dir_port, self.sd_port, *self.fd_ports}
        while not ports <= _listening_ports():
            self._check_alive()
            if time.monotonic() > deadline:
                missing = sorted(ports - _listening_ports())
                raise BaculaError(
                    f"no daemon listens on ports {missing} after {self.start_timeout_s} s"
                )
            time.sleep(0.05)
        checks = [
            "status storage",
            *[f"status client={self.fd_name(i)}" for i in range(self.fd_count)],
        ]
        pending = list(checks)
        last = ""
        while pending:
            self._check_alive()
            if time.monotonic() > deadline:
                raise BaculaError(f"the rig is not ready after {self.start_timeout_s} s:\n{last}")
            try:
                last = self.bconsole([pending[0]], timeout_s=max(1.0, deadline - time.monotonic()))
            except BaculaError as e:
                last = str(e)
                time.sleep(0.2)
                continue
            if "Daemon started" in last:
                pending.pop(0)
            else:
                time.sleep(0.2)

    def _stop_all(self) -> list[str]:
        problems: list[str] = []
        # The Director first, so it does not try to reach stopped daemons.
        order = ["dir", *[r for r in self._procs if r != "dir"]]
        for role in order:
            proc = self._procs.get(role)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for role in order:
            proc = self._procs.get(role)
            if proc is None:
                continue
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problems.append(f"bacula {role} (pid {proc.pid}) ignored SIGTERM")
        self._procs.clear()
        left = _processes_using(self.conf_dir)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            problems.append(f"processes left after close: {left}")
        return problems

    def _write_configs(self) -> None:
        w = self.workdir
        hb = self.heartbeat_s
        pw = self._password
        fds = "".join(
            f"""
Client {{
  Name = rig-fd{i}
  Address = 127.0.0.1
  FDPort = {port}
  Catalog = {CATALOG_NAME}
  Password = "{pw["fd"]}"
  AutoPrune = no
  Maximum Concurrent Jobs = 10
  Heartbeat Interval = {hb}
}}
"""
            for i, port in enumerate(self.fd_ports)
        )
        jobs = "".join(
            job.fileset.render(f"{name}-fs")
            + f"""
Job {{
  Name = {_q(name)}
  Type = Backup
  Level = Full
  Client = rig-fd{job.fd}
  FileSet = {_q(name + "-fs")}
  Storage = {SD_NAME}
  Pool = {POOL_NAME}
  Messages = rig-messages
  Accurate = {"yes" if job.accurate else "no"}
  Maximum Concurrent Jobs = 10
  Write Bootstrap = "{w}/bsr/%n-%i.bsr"
}}
"""
            for name, job in sorted(self._jobs.items())
        )
        # The restore job needs some FileSet and Client; the restore command
        # overrides both.
        default_fs = FileSet([str(w / "volumes")]).render("rig-restore-fs")
        director = f"""
Director {{
  Name = {DIR_NAME}
  DIRport = {self.dir_port}
  DirAddress = 127.0.0.1
  QueryFile = "{QUERY_FILE}"
  WorkingDirectory = "{w}/dir"
  PidDirectory = "{w}/run"
  Maximum Concurrent Jobs = 20
  Password = "{pw["dir"]}"
  Messages = rig-daemon
  Heartbeat Interval = {hb}
  FD Connect Timeout = {self.connect_timeout_s}
  SD Connect Timeout = {self.connect_timeout_s}
}}

Catalog {{
  Name = {CATALOG_NAME}
  dbname = "{DB_NAME}"
  dbuser = ""
  dbpassword = ""
}}

Storage {{
  Name = {SD_NAME}
  Address = 127.0.0.1
  SDPort = {self.sd_port}
  Password = "{pw["sd"]}"
  Device = {DEVICE_NAME}
  Media Type = File
  Maximum Concurrent Jobs = 10
  Heartbeat Interval = {hb}
}}

Pool {{
  Name = {POOL_NAME}
  Pool Type = Backup
  Label Format = "rigvol-"
  Maximum Volume Bytes = {self.volume_bytes}
  Recycle = no
  AutoPrune = no
  Volume Retention = 10 years
}}

Messages {{
  Name = rig-messages
  append = "{self.log_path}" = all, !skipped
  catalog = all, !skipped, !saved, !restored
}}

Messages {{
  Name = rig-daemon
  append = "{self.log_path}" = all, !skipped
}}
{fds}
{default_fs}
Job {{
  Name = {RESTORE_JOB}
  Type = Restore
  Client = rig-fd0
  FileSet = rig-restore-fs
  Storage = {SD_NAME}
  Pool = {POOL_NAME}
  Messages = rig-messages
  Where = "{w}/restore"
  Maximum Concurrent Jobs = 10{self._restore_runscript()}
}}
{jobs}"""
        storage = f"""
Storage {{
  Name = {SD_NAME}
  SDPort = {self.sd_port}
  SDAddress = 127.0.0.1
  WorkingDirectory = "{w}/sd"
  PidDirectory = "{w}/run"
  Maximum Concurrent Jobs = 20
  Heartbeat Interval = {hb}
  Client Connect Wait = {self.connect_timeout_s}
}}

Director {{
  Name = {DIR_NAME}
  Password = "{pw["sd"]}"
}}

Device {{
  Name = {DEVICE_NAME}
  Media Type = File
  Archive Device = "{self.volume_dir}"
  LabelMedia = yes
  Random Access = yes
  AutomaticMount = yes
  RemovableMedia = no
  AlwaysOpen = no
  Maximum Concurrent Jobs = 20
}}

Messages {{
  Name = rig-messages
  director = {DIR_NAME} = all
}}
"""
        self._write(self.conf_dir / "bacula-dir.conf", director)
        self._write(self.conf_dir / "bacula-sd.conf", storage)
        for i, port in enumerate(self.fd_ports):
            self._write(
                self.conf_dir / f"bacula-fd{i}.conf",
                f"""
FileDaemon {{
  Name = rig-fd{i}
  FDport = {port}
  FDAddress = 127.0.0.1
  WorkingDirectory = "{w}/fd{i}"
  PidDirectory = "{w}/run"
  Maximum Concurrent Jobs = 20
  Heartbeat Interval = {hb}
}}

Director {{
  Name = {DIR_NAME}
  Password = "{pw["fd"]}"
}}

Messages {{
  Name = rig-messages
  director = {DIR_NAME} = all, !skipped, !restored
}}
""",
            )
        self._write(
            self.conf_dir / "bconsole.conf",
            f"""
Director {{
  Name = {DIR_NAME}
  DIRport = {self.dir_port}
  Address = 127.0.0.1
  Password = "{pw["dir"]}"
}}
""",
        )

    def _restore_runscript(self) -> str:
        if not self.restore_check:
            return ""
        command = " ".join(self.restore_check)
        if '"' in command or "'" in command:
            raise ValueError("restore_check arguments must not contain quotes")
        return f"""
  RunScript {{
    RunsWhen = After
    RunsOnClient = yes
    RunsOnFailure = yes
    FailJobOnError = yes
    Command = "{command}"
  }}"""

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.rename(path)


def _q(text: str) -> str:
    """A Bacula config quoted string."""
    if '"' in text or "\n" in text:
        raise ValueError(f"cannot quote {text!r} for Bacula")
    return '"' + text.replace("\\", "\\\\") + '"'


def _word(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_.+-]+", text) else _q(text)


def _as_fileset(
    fileset: FileSet | Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
) -> FileSet:
    if isinstance(fileset, FileSet):
        return fileset
    if isinstance(fileset, str | os.PathLike):
        return FileSet([fileset])
    return FileSet(list(fileset))


def _queued_jobid(out: str) -> int:
    m = re.search(r"Job queued\. JobId=(\d+)", out)
    if m is None:
        raise BaculaError(f"the Director did not queue the job:\n{out}")
    return int(m.group(1))


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening_ports() -> set[int]:
    """TCP ports in LISTEN state on 127.0.0.1 (from /proc/net/tcp)."""
    ports = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            addr, port = local.split(":")
            if state == "0A" and addr == "0100007F":
                ports.add(int(port, 16))
    return ports


def _processes_using(conf_dir: Path) -> list[tuple[int, str]]:
    """Bacula daemons started with a config file from ``conf_dir``."""
    found = []
    needle = os.fspath(conf_dir) + "/"
    binaries = tuple(os.fspath(b) for b in (DIR_BIN, SD_BIN, FD_BIN))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline.startswith(binaries) and needle in cmdline and state != "Z":
            found.append((int(entry), cmdline.strip()))
    return found
