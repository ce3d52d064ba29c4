"""Per-job cgroups: memory, process-count and CPU limits, accounting, and a kill that misses
nothing (docs/sandbox.md, "The layers" and "Stopping a run").

Layout: a service parent ``deepexec`` under each controller's hierarchy, one child per job::

    cgroup v2:  /sys/fs/cgroup/deepexec/<job>            memory.max, memory.swap.max=0,
                                                         memory.oom.group, pids.max, cpu.max
    cgroup v1:  /sys/fs/cgroup/{memory,pids,cpu,cpuacct}/deepexec/<job>
                (+ /sys/fs/cgroup/unified/deepexec/<job> on hybrid hosts, for cgroup.kill)

Job cgroup names start with the server's pid (like work dirs), so the start-up sweep can tell
the leftovers of a dead server. ``rmdir`` of a just-emptied cgroup often fails with EBUSY for a
few milliseconds: removal retries on one background thread with exponential backoff.

``CgroupHost.detect`` decides; ``JobCgroup`` acts (thin file writes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import heapq
import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path

from ...errors import DeepExecError

log = logging.getLogger("deepexec_server.sandbox")

CGROUP_ROOT = Path("/sys/fs/cgroup")
SERVICE_NAME = "deepexec"
V1_CONTROLLERS: tuple[str, ...] = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS: tuple[str, ...] = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
#: CPU bandwidth of every job, in cores.
CPU_CORES = 1.0
#: How long the background remover keeps retrying one cgroup before giving up (and logging).
REMOVE_GIVE_UP_S = 120.0


class CgroupError(DeepExecError, OSError):
    """A job cgroup could not be created or joined."""


@dataclasses.dataclass(frozen=True, slots=True)
class CgroupStats:
    """Accounting read from a job's cgroup after (or during) the run."""

    cpu_time_ms: int | None
    memory_peak_kb: int | None
    oom_killed: bool


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def parse_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.events, cpu.stat, memory.oom_control) as a dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value.strip())
    return out


def job_cgroup_name(job_id: str) -> str:
    """``<server pid>-<job id>-<random>``: unique, and sweepable after a crash."""
    safe = "".join(c for c in job_id if c.isalnum() or c in "-_")[:64] or "job"
    return f"{os.getpid()}-{safe}-{secrets.token_hex(4)}"


def owner_pid(name: str) -> int | None:
    """The server pid a job cgroup name starts with, or None for foreign names."""
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


# --- background removal -----------------------------------------------------------------------


class _Remover:
    """One daemon thread removing emptied cgroup dirs, retrying EBUSY with backoff."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: list[tuple[float, float, float, str]] = []  # (due, delay, give_up, path)
        self._thread: threading.Thread | None = None

    def submit(self, path: Path) -> None:
        now = time.monotonic()
        with self._lock:
            heapq.heappush(self._queue, (now + 0.005, 0.005, now + REMOVE_GIVE_UP_S, str(path)))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="deepexec-cgroup-remover", daemon=True
                )
                self._thread.start()
            self._lock.notify()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                due, delay, give_up, path = self._queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._queue)
            if try_rmdir(Path(path)):
                continue
            if time.monotonic() > give_up:
                log.warning("could not remove cgroup %s (still busy)", path)
                continue
            _kill_procs(Path(path))
            with self._lock:
                nd = min(delay * 2, 1.0)
                heapq.heappush(self._queue, (time.monotonic() + nd, nd, give_up, path))


_REMOVER = _Remover()


def pending_removals() -> int:
    """Cgroup dirs still waiting for removal (tests wait for 0)."""
    return _REMOVER.pending()


def try_rmdir(path: Path) -> bool:
    """Remove an empty cgroup dir; True if gone (or never there), False if still busy."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.EAGAIN):
            return False
        log.warning("cannot remove cgroup %s: %s", path, exc)
        return True
    return True


def _procs(path: Path) -> list[int]:
    text = _read(path / "cgroup.procs") or ""
    return [int(p) for p in text.split() if p.isdigit()]


def _kill_procs(path: Path) -> int:
    pids = _procs(path)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


# --- the host ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CgroupHost:
    """Where this server's job cgroups live. ``dirs``: controller → service parent dir."""

    version: int
    dirs: dict[str, Path]
    #: A cgroup2 service parent used only for ``cgroup.kill`` on a v1 (hybrid) host.
    kill_dir: Path | None = None

    @classmethod
    def detect(
        cls, root: Path = CGROUP_ROOT, name: str = SERVICE_NAME
    ) -> tuple[CgroupHost | None, str]:
        """The usable cgroup layout and a one-line description, or (None, why not).

        Creates the service parents (and, on v2, enables the controllers for them), then
        checks a probe child can be created, limited and removed.
        """
        try:
            host = cls._v2(root, name) or cls._v1(root, name)
        except OSError as exc:
            return None, f"cannot create the service cgroups: {exc}"
        if host is None:
            return None, "neither cgroup v2 with memory+pids+cpu nor cgroup v1 " + (
                "memory, pids, cpu and cpuacct hierarchies are mounted"
            )
        try:
            name = f"{os.getpid()}-probe-{secrets.token_hex(4)}"
            probe = JobCgroup.create(host, name, memory_bytes=64 << 20, max_pids=16)
            probe.remove()
        except OSError as exc:
            return None, f"cannot create a job cgroup: {exc}"
        return host, host.describe()

    @classmethod
    def _v2(cls, root: Path, name: str) -> CgroupHost | None:
        controllers = (_read(root / "cgroup.controllers") or "").split()
        if not set(V2_CONTROLLERS) <= set(controllers):
            return None
        enabled = (_read(root / "cgroup.subtree_control") or "").split()
        missing = [c for c in V2_CONTROLLERS if c not in enabled]
        if missing:
            _write(root / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
        parent = root / name
        parent.mkdir(exist_ok=True)
        enabled = (_read(parent / "cgroup.subtree_control") or "").split()
        missing = [c for c in V2_CONTROLLERS if c not in enabled]
        if missing:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
        return cls(2, {"unified": parent})

    @classmethod
    def _v1(cls, root: Path, name: str) -> CgroupHost | None:
        if not all((root / c / "tasks").exists() for c in V1_CONTROLLERS):
            return None
        dirs: dict[str, Path] = {}
        for ctrl in V1_CONTROLLERS:
            # cpu and cpuacct may be co-mounted (symlinks to cpu,cpuacct): then one dir.
            dirs[ctrl] = (root / ctrl).resolve() / name
            dirs[ctrl].mkdir(exist_ok=True)
        kill_dir = None
        unified = root / "unified"
        if (unified / "cgroup.procs").exists():
            with contextlib.suppress(OSError):
                (unified / name).mkdir(exist_ok=True)
                kill_dir = unified / name
        return cls(1, dirs, kill_dir)

    def all_parents(self) -> list[Path]:
        """Every distinct service parent dir (including the kill-only one)."""
        out: list[Path] = []
        for p in [*self.dirs.values(), *([self.kill_dir] if self.kill_dir else [])]:
            if p not in out:
                out.append(p)
        return out

    def describe(self) -> str:
        """What a job cgroup applies, for the probe line."""
        if self.version == 2:
            return (
                f"cgroup v2 at {self.dirs['unified']}: per job memory.max (swap 0, oom.group), "
                "pids.max, cpu.max 1 core, CPU time and peak memory accounting, cgroup.kill"
            )
        kill = f" + cgroup.kill via {self.kill_dir}" if self.kill_dir else ""
        return (
            f"cgroup v1 under {CGROUP_ROOT}/{{{','.join(V1_CONTROLLERS)}}}/{SERVICE_NAME}: per "
            "job memory (+swap) limit, pids.max, CPU quota 1 core, CPU time and peak memory "
            f"accounting, OOM detection{kill}"
        )

    def sweep(self) -> list[Path]:
        """Kill and remove job cgroups of servers that are gone; return what was removed."""
        removed: list[Path] = []
        for parent in self.all_parents():
            try:
                children = [p for p in parent.iterdir() if p.is_dir()]
            except OSError:
                continue
            for child in children:
                pid = owner_pid(child.name)
                if pid is None or pid == os.getpid() or pid_alive(pid):
                    continue
                _kill_procs(child)
                if not try_rmdir(child):
                    _REMOVER.submit(child)
                removed.append(child)
        return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (the owner of a job cgroup or work dir, by name)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- one job ----------------------------------------------------------------------------------


class JobCgroup:
    """The cgroup(s) of one job. Create, attach the launcher, read stats, kill, remove."""

    def __init__(self, host: CgroupHost, name: str) -> None:
        self.host = host
        self.name = name
        dirs: list[Path] = []
        for parent in host.all_parents():
            if parent / name not in dirs:
                dirs.append(parent / name)
        self.dirs = dirs

    def _dir(self, ctrl: str) -> Path:
        return self.host.dirs["unified" if self.host.version == 2 else ctrl] / self.name

    @classmethod
    def create(cls, host: CgroupHost, name: str, *, memory_bytes: int, max_pids: int) -> JobCgroup:
        """Make the job's cgroups and set their limits (memory, without swap; processes and
        threads; ``CPU_CORES``); on failure nothing is left behind."""
        cg = cls(host, name)
        try:
            for d in cg.dirs:
                d.mkdir()
            cg._apply(memory_bytes, max_pids)
        except OSError as exc:
            cg.remove()
            raise CgroupError(exc.errno, f"job cgroup {name}: {exc}") from exc
        return cg

    def _apply(self, memory_bytes: int, max_pids: int) -> None:
        quota = max(1000, int(CPU_CORES * CPU_PERIOD_US))
        if self.host.version == 2:
            d = self._dir("memory")
            _write(d / "memory.max", str(memory_bytes))
            with contextlib.suppress(FileNotFoundError):
                _write(d / "memory.swap.max", "0")
            with contextlib.suppress(FileNotFoundError):
                _write(d / "memory.oom.group", "1")
            _write(d / "pids.max", str(max_pids))
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        mem = self._dir("memory")
        _write(mem / "memory.limit_in_bytes", str(memory_bytes))
        # Without this, a job could push its pages to swap and exceed the limit (if swap).
        with contextlib.suppress(FileNotFoundError):
            _write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))
        _write(self._dir("pids") / "pids.max", str(max_pids))
        cpu = self._dir("cpu")
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))

    def attach(self, pid: int) -> None:
        """Move ``pid`` (a launcher that has not forked yet) into every job cgroup."""
        try:
            for d in self.dirs:
                _write(d / "cgroup.procs", str(pid))
        except OSError as exc:
            raise CgroupError(exc.errno, f"cannot move pid {pid} into {self.name}: {exc}") from exc

    def cpu_time_ms(self) -> int | None:
        """Total CPU time of every process that ran in the job so far."""
        if self.host.version == 2:
            usec = parse_keyed(_read(self._dir("cpu") / "cpu.stat")).get("usage_usec")
            return None if usec is None else usec // 1000
        text = _read(self._dir("cpuacct") / "cpuacct.usage")
        return None if text is None or not text.strip().isdigit() else int(text) // 1_000_000

    def stats(self) -> CgroupStats:
        """CPU time, peak memory and whether the kernel OOM-killed something in the job."""
        mem = self._dir("memory")
        if self.host.version == 2:
            peak = _read(mem / "memory.peak")
            events = parse_keyed(_read(mem / "memory.events"))
            oom = events.get("oom_kill", 0) > 0
        else:
            peak = _read(mem / "memory.max_usage_in_bytes")
            control = parse_keyed(_read(mem / "memory.oom_control"))
            if "oom_kill" in control:
                oom = control["oom_kill"] > 0
            else:  # kernels before 4.13: the swap+memory limit was hit
                failcnt = (_read(mem / "memory.memsw.failcnt") or "0").strip()
                oom = failcnt.isdigit() and int(failcnt) > 0
        peak_kb = int(peak) // 1024 if peak and peak.strip().isdigit() else None
        return CgroupStats(self.cpu_time_ms(), peak_kb, oom)

    def pids(self) -> list[int]:
        """Every pid still in the job (any controller)."""
        seen: list[int] = []
        for d in self.dirs:
            seen += [p for p in _procs(d) if p not in seen]
        return seen

    def kill(self) -> None:
        """SIGKILL everything in the job: ``cgroup.kill`` where there is one, then each pid
        listed (repeated: a process may fork between the read and the kill)."""
        kill_file = (
            self._dir("memory") / "cgroup.kill"
            if self.host.version == 2
            else (self.host.kill_dir / self.name / "cgroup.kill" if self.host.kill_dir else None)
        )
        if kill_file is not None:
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
        for _ in range(20):
            if sum(_kill_procs(d) for d in self.dirs) == 0:
                return
            time.sleep(0.002)

    def remove(self) -> None:
        """Remove the job's dirs now if they are empty, else on the background thread."""
        for d in self.dirs:
            if not try_rmdir(d):
                _REMOVER.submit(d)
