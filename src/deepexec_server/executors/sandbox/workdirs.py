"""Job work dirs: where they live, how much disk a job may fill, and removing whatever a job
left in them.

Where the server may mount (it runs as root), each job dir is a tmpfs of the job's ``disk_mb``
(size and inode count capped) mounted on an empty dir under the work root: the kernel refuses
writes past the quota (ENOSPC), one ``statvfs`` tells how full it is, and ``umount2`` +
``rmdir`` removes it whatever the job built inside. Its pages are memory, charged to the job's
memory cgroup as the job writes them (docs/sandbox.md, "Bounds"). Measured here: mkdir + mount
≈0.11 ms, umount + rmdir ≈0.16 ms per job, through ``mount(2)`` directly (a forked ``mount``
command costs milliseconds).

Elsewhere (a server that is not root, a host refusing mounts) a job dir is a plain directory
and ``DiskGauge`` measures it with a walk on a background thread every
``FALLBACK_CHECK_INTERVAL_S``: the job is still stopped over its quota, but a burst between two
walks may exceed it (RLIMIT_FSIZE still caps each file). The start-up probe says which applies.

Whatever tree a job leaves, it is walked iteratively (``trees``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from ...errors import DeepExecError
from .cgroups import pid_alive
from .identity import RunAs
from .trees import remove_tree, tree_usage

log = logging.getLogger("deepexec_server.sandbox")

#: The mount source of job tmpfs mounts (how the start-up sweep recognises them).
MOUNT_SOURCE = "deepexec-job"
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
#: Inodes a job's tmpfs holds per byte of quota (one per 16 KiB), at least ``MIN_INODES``:
#: every file and directory is an inode, and inodes are memory too.
BYTES_PER_INODE = 16 * 1024
MIN_INODES = 4096
#: Without a tmpfs: how often the background walk measures a running job's dir.
FALLBACK_CHECK_INTERVAL_S = 0.5

_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


class WorkDirError(DeepExecError, RuntimeError):
    """The work root is unusable (a symlink, someone else's, writable by others)."""


def default_work_root(server_uid: int | None = None) -> Path:
    """Outside root's home (0700, the sandbox uid could not traverse it): /var/tmp."""
    uid = os.geteuid() if server_uid is None else server_uid
    # Checked by ensure_work_root (owner, no symlink), so a squatter is refused, not used.
    return Path(f"/var/tmp/deepexec-work-{uid}")  # noqa: S108


def ensure_work_root(path: Path) -> Path:
    """Create ``path`` 0711 owned by this process, or check an existing one is safe to use.

    0711: the sandbox uid may traverse into its own job dir but not list the others.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o711, parents=False)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise WorkDirError(f"work root {path} is not a plain directory")
    if st.st_uid != os.geteuid():
        raise WorkDirError(f"work root {path} is owned by uid {st.st_uid}, not by this server")
    if st.st_mode & 0o022:
        raise WorkDirError(f"work root {path} is writable by group or others")
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.chmod(path, 0o711)  # noqa: S103 - traversable, not listable: see docstring
    return path


# --- mounting ---------------------------------------------------------------------------------


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: Path) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {path}: {os.strerror(err)}")


def mount_tmpfs(path: Path, size_bytes: int, inodes: int, owner: RunAs | None) -> None:
    """Mount a tmpfs of ``size_bytes`` and ``inodes`` on ``path``, its root 0700 and owned by
    ``owner`` (else by this process). Raises OSError (EPERM when not allowed to mount)."""
    uid, gid = (owner.uid, owner.gid) if owner else (os.geteuid(), os.getegid())
    options = f"size={size_bytes},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}"
    result = _libc().mount(
        MOUNT_SOURCE.encode(), os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()
    )
    _check(result, "mount tmpfs on", path)


def unmount(path: Path) -> None:
    """Detach the mount at ``path`` (lazily: it goes once nothing uses it). OSError EINVAL if
    ``path`` is not a mount point."""
    _check(_libc().umount2(os.fsencode(path), MNT_DETACH), "umount", path)


def inode_limit(size_bytes: int) -> int:
    """How many files and directories a job's tmpfs of ``size_bytes`` may hold."""
    return max(MIN_INODES, size_bytes // BYTES_PER_INODE)


def mount_check(root: Path) -> tuple[bool, str]:
    """Can this server give job dirs a tmpfs under ``root``? (usable, detail): mounts and
    removes a small one."""
    probe = root / f"{os.getpid()}-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir(mode=0o700)
    except OSError as exc:
        return False, f"cannot create {probe}: {exc.strerror}"
    try:
        mount_tmpfs(probe, 1 << 20, MIN_INODES, None)
    except OSError as exc:
        os.rmdir(probe)
        who = "server is not root" if os.geteuid() != 0 else "mount refused"
        return False, f"{who} ({os.strerror(exc.errno or 0)})"
    try:
        unmount(probe)
    finally:
        os.rmdir(probe)
    return True, "per-job tmpfs mounted by the server"


def mounts_under(root: Path, mountinfo: bytes | None = None) -> list[Path]:
    """Mount points strictly under ``root``, from /proc/self/mountinfo, deepest first."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_bytes()
        except OSError:
            return []
    # mountinfo shows resolved paths.
    prefix = os.fsencode(os.path.realpath(root)).rstrip(b"/") + b"/"
    found: list[bytes] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # Field 5 is the mount point, with space, tab, newline and backslash as \ooo.
        point = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
        if point.startswith(prefix):
            found.append(point)
    found.sort(key=lambda p: p.count(b"/"), reverse=True)
    return [Path(os.fsdecode(p)) for p in found]


# --- job dirs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class JobDir:
    """One job's work dir."""

    path: Path
    #: The job's disk quota in bytes.
    quota_bytes: int
    #: True: a tmpfs the server mounted (the kernel enforces the quota).
    mounted: bool


def new_job_dir(
    root: Path, job_id: str, owner: RunAs | None, quota_bytes: int = 0, mount: bool = False
) -> JobDir:
    """A fresh 0700 dir for one job, owned by the sandbox uid; with ``mount``, a tmpfs of
    ``quota_bytes``. Its name starts with this server's pid so a start-up sweep can tell the
    leftovers of dead servers."""
    safe = "".join(c for c in job_id if c.isalnum() or c in "-_")[:64] or "job"
    path = root / f"{os.getpid()}-{safe}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    if mount:
        try:
            mount_tmpfs(path, quota_bytes, inode_limit(quota_bytes), owner)
        except BaseException:
            os.rmdir(path)
            raise
    elif owner is not None:
        os.chown(path, owner.uid, owner.gid)
    return JobDir(path, quota_bytes, mount)


class DiskFull(DeepExecError):
    """The files of a run do not fit in its work dir's quota (ENOSPC or EDQUOT)."""


def write_files(
    job_dir: Path, files: Mapping[str, bytes], dirs: Iterable[str], owner: RunAs | None
) -> None:
    """Write ``files`` (validated relative paths, never existing yet) into the job's work dir,
    then make each of ``dirs`` that does not exist yet, all owned by ``owner``. Raises
    ``DiskFull`` if they do not fit."""
    try:
        for name, content in files.items():
            _write_new(job_dir, name, content, owner)
        for name in dirs:
            if not (job_dir / name).exists():
                _write_new(job_dir, f"{name}/.keep", b"", owner)
                os.unlink(job_dir / name / ".keep")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(str(exc)) from exc
        raise


def _write_new(job_dir: Path, name: str, content: bytes, owner: RunAs | None) -> None:
    parent = job_dir
    for part in name.split("/")[:-1]:
        parent = parent / part
        if not parent.exists():
            parent.mkdir(mode=0o700)
            if owner is not None:
                os.chown(parent, owner.uid, owner.gid)
    path = job_dir / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)


def remove_job_dir(job: JobDir | Path) -> None:
    """Remove a job dir and everything in it; logs what it could not remove, never raises."""
    path = job.path if isinstance(job, JobDir) else job
    try:
        if isinstance(job, JobDir) and job.mounted:
            try:
                unmount(path)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: not mounted (any more)
                    raise
            else:
                os.rmdir(path)
                return
        remove_tree(path)
    except FileNotFoundError:
        pass
    except Exception:
        log.exception("could not remove the work dir %s", path)


def _is_stale(name: str) -> bool:
    pid_text = name.split("-", 1)[0]
    return pid_text.isdigit() and int(pid_text) != os.getpid() and not pid_alive(int(pid_text))


def sweep_stale_job_dirs(root: Path) -> list[Path]:
    """Remove the job dirs of dead servers (left behind by a crash): unmount their tmpfs
    first, then remove what is left. Returns them; logs, never raises, whatever they hold."""
    removed: list[Path] = []
    for point in mounts_under(root):
        top = point.relative_to(os.path.realpath(root)).parts[0]
        # A few tries: mounts may be stacked on one point.
        for _ in range(4) if _is_stale(top) else ():
            try:
                unmount(point)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    log.warning("could not unmount the stale job mount %s: %s", point, exc)
                break
    try:
        entries = list(root.iterdir())
    except OSError as exc:
        log.warning("could not list the work root %s: %s", root, exc)
        return removed
    for entry in entries:
        if not _is_stale(entry.name):
            continue
        try:
            remove_tree(entry)
        except FileNotFoundError:
            continue
        except Exception as exc:
            log.warning("could not remove the stale work dir %s: %s", entry, exc)
            continue
        removed.append(entry)
    return removed


# --- disk quota -------------------------------------------------------------------------------


def _quota_text(quota_bytes: int) -> str:
    mb = quota_bytes / (1 << 20)
    return f"{mb:g} MB"


class DiskGauge:
    """Whether a job has filled its disk quota: ``check`` is cheap enough for the run's
    periodic watch (on the event loop), ``final`` decides after the run."""

    def __init__(self, job: JobDir) -> None:
        self.job = job
        self.inodes = inode_limit(job.quota_bytes)
        self._lock = threading.Lock()
        self._walker: threading.Thread | None = None
        self._walked_at = 0.0
        self._verdict: str | None = None

    def _statvfs_verdict(self) -> str | None:
        try:
            st = os.statvfs(self.job.path)
        except OSError:
            return None
        if st.f_bfree == 0:
            return f"filled its disk quota of {_quota_text(self.job.quota_bytes)}"
        if st.f_ffree == 0:
            return f"created {self.inodes} files and directories, the most its disk quota allows"
        return None

    def _walk_verdict(self) -> str | None:
        try:
            usage = tree_usage(self.job.path, self.job.quota_bytes, self.inodes)
        except OSError:
            return None
        if usage.bytes >= self.job.quota_bytes:
            return f"filled its disk quota of {_quota_text(self.job.quota_bytes)}"
        if usage.entries >= self.inodes:
            return f"created {self.inodes} files and directories, the most its disk quota allows"
        return None

    def _walk_in_background(self) -> None:
        verdict = self._walk_verdict()
        with self._lock:
            self._verdict = self._verdict or verdict

    def check(self) -> str | None:
        """``disk_limit`` once the quota is reached (as last measured), else None."""
        if self.job.mounted:
            return "disk_limit" if self._statvfs_verdict() else None
        with self._lock:
            now = time.monotonic()
            idle = self._walker is None or not self._walker.is_alive()
            if idle and now - self._walked_at >= FALLBACK_CHECK_INTERVAL_S:
                self._walked_at = now
                self._walker = threading.Thread(
                    target=self._walk_in_background, name="deepexec-disk-walk", daemon=True
                )
                self._walker.start()
            return "disk_limit" if self._verdict else None

    def final(self) -> str | None:
        """After the run (blocking): why the job is over its quota, or None."""
        if self.job.mounted:
            return self._statvfs_verdict()
        with self._lock:
            walker = self._walker
        if walker is not None:
            walker.join()
        return self._verdict or self._walk_verdict()
