"""Hostile programs against the hardened sandbox (bwrap + per-job cgroup + seccomp + rlimits).

Each test runs a real attack in the real sandbox as the unprivileged ``deepexec-sandbox`` user,
checks the documented outcome, and then that nothing of the job is left on the server: no
process of the sandbox uid, no job cgroup, no work dir. Needs root, bwrap, cgroups and the
sandbox user (``scripts/setup-sandbox.sh``); the whole file runs in well under 90 s.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from deepexec_server.domain import ErrorType
from deepexec_server.executors.base import Outcome
from deepexec_server.executors.code import CodeExecutor
from deepexec_server.executors.sandbox.cgroups import pending_removals
from deepexec_server.settings import Settings
from tests.conftest import sandbox_uid_processes

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (uid drop and cgroups)"),
]

SANDBOX_USER = "deepexec-sandbox"


class Ctx:
    """The engine's ExecutionContext, recording what the job reports."""

    def __init__(self, timeout: float = 10) -> None:
        self.job_id = "job_" + secrets.token_hex(4)
        self.timeout = timeout
        self.cancel_requested = asyncio.Event()
        self.outputs: list[tuple[str, str]] = []

    def report_progress(self, progress: int | None, message: str | None = None) -> None:
        pass

    def emit_output(self, stream: str, text: str) -> None:
        self.outputs.append((stream, text))


def our_job_cgroups(ex: CodeExecutor) -> list[Path]:
    host = ex.cgroups
    assert host is not None
    prefix = f"{os.getpid()}-"
    return [
        child
        for parent in host.all_parents()
        for child in parent.iterdir()
        if child.is_dir() and child.name.startswith(prefix)
    ]


def _snapshot(ex: CodeExecutor) -> dict[str, set[object]]:
    assert ex.work_root is not None
    return {
        "processes": set(sandbox_uid_processes()),
        "cgroups": set(our_job_cgroups(ex)),
        "work_dirs": {p for p in ex.work_root.iterdir() if p.name.startswith(f"{os.getpid()}-")},
    }


#: What existed before the test (e.g. zombies adopted from servers other tests in this process
#: killed): only what appeared since counts as left behind.
_BASELINE: dict[int, dict[str, set[object]]] = {}


def leftovers(ex: CodeExecutor) -> dict[str, object]:
    before = _BASELINE.get(id(ex), {})
    found = {k: v - before.get(k, set()) for k, v in _snapshot(ex).items()}
    return {k: sorted(map(str, v)) for k, v in found.items() if v}


async def assert_nothing_left(ex: CodeExecutor, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (left := leftovers(ex)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert left == {}
    assert pending_removals() == 0


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[CodeExecutor]:
    settings = Settings(
        data_dir=tmp_path / "data",
        credentials_file=tmp_path / "cred" / "credentials.json",
        max_output_bytes=64 * 1024,
    )
    ex = CodeExecutor(settings)
    await ex.start()
    sandbox = ex.describe()["sandbox"]
    if sandbox["mode"] != "bubblewrap" or not sandbox["cgroups"] or not sandbox["seccomp"]:
        pytest.skip(f"hardened sandbox unavailable here: {sandbox}")
    _BASELINE[id(ex)] = _snapshot(ex)
    yield ex
    await assert_nothing_left(ex)
    await ex.close()
    _BASELINE.pop(id(ex), None)


async def run(
    ex: CodeExecutor, data: dict[str, Any], timeout: float = 10, ctx: Ctx | None = None
) -> Outcome:
    ctx = ctx or Ctx(timeout)
    return await ex.execute(ex.validate(data, int(timeout) or 1), ctx)


def error_type(outcome: Outcome) -> str | None:
    return outcome.error.type if outcome.error else None


def stdout(outcome: Outcome) -> str:
    assert outcome.result is not None
    return str(outcome.result["stdout"])


# --- resource limits --------------------------------------------------------------------------


async def test_fork_bomb_is_contained_and_the_host_stays_responsive(
    executor: CodeExecutor,
) -> None:
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    job = asyncio.create_task(
        run(executor, {"code": code, "limits": {"max_processes": 32}}, timeout=2)
    )
    await asyncio.sleep(1.0)
    started = time.monotonic()
    await asyncio.to_thread(subprocess.run, ["/bin/true"], check=True)
    assert time.monotonic() - started < 0.5  # the host still forks promptly
    outcome = await asyncio.wait_for(job, 10)
    assert error_type(outcome) == ErrorType.TIMEOUT
    await assert_nothing_left(executor)


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "x = b'a' * (2 << 30)\nprint('allocated')"),
        (
            "javascript",
            "const b = Buffer.alloc(2 * 1024 ** 3); b.fill(1); console.log('allocated')",
        ),
    ],
)
async def test_allocating_2_gib_under_256_mb_is_memory_limit(
    executor: CodeExecutor, language: str, code: str
) -> None:
    outcome = await run(
        executor, {"code": code, "language": language, "limits": {"memory_mb": 256}}
    )
    assert error_type(outcome) == ErrorType.MEMORY_LIMIT, outcome
    assert outcome.result is not None
    assert outcome.result["oom_killed"] is True
    assert "allocated" not in outcome.result["stdout"]
    assert outcome.result["memory_peak_kb"] <= 256 * 1024
    assert outcome.result["memory_peak_kb"] > 200 * 1024
    await assert_nothing_left(executor)


async def test_infinite_loop_under_one_cpu_second_is_cpu_limit(executor: CodeExecutor) -> None:
    started = time.monotonic()
    outcome = await run(executor, {"code": "while True: pass", "limits": {"cpu_time_s": 1}})
    assert error_type(outcome) == ErrorType.CPU_LIMIT
    assert time.monotonic() - started < 4
    # RLIMIT_CPU fires on tick-granular accounting; the cgroup counter may lag it slightly
    assert outcome.result is not None and outcome.result["cpu_time_ms"] >= 800


async def test_four_busy_processes_share_one_cpu_and_one_cpu_budget(
    executor: CodeExecutor,
) -> None:
    code = "for i in 1 2 3 4; do (while :; do :; done) & done; wait"
    outcome = await run(executor, {"code": code, "language": "bash", "limits": {"cpu_time_s": 1}})
    # Per-process RLIMIT_CPU alone would allow 4 s of CPU; the cgroup counts all of them.
    assert error_type(outcome) == ErrorType.CPU_LIMIT
    assert outcome.result is not None
    cpu, wall = outcome.result["cpu_time_ms"], outcome.result["wall_time_ms"]
    assert 900 <= cpu < 2500
    # The quota of one core held: CPU time never ran ahead of wall time.
    assert cpu <= wall * 1.15 + 50


async def test_sleep_past_the_timeout_is_timeout(executor: CodeExecutor) -> None:
    outcome = await run(executor, {"code": "import time\ntime.sleep(30)"}, timeout=1)
    assert error_type(outcome) == ErrorType.TIMEOUT
    assert outcome.result is not None and outcome.result["timed_out"] is True


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_endless_printing_is_capped_and_server_memory_stays_flat(
    executor: CodeExecutor,
) -> None:
    code = (
        "import sys\nwhile True:\n"
        "    sys.stdout.write('y' * 65536)\n    sys.stderr.write('z' * 65536)\n"
    )
    before = _rss_kb()
    outcome = await run(
        executor, {"code": code, "limits": {"max_output_bytes": 1024 * 1024}}, timeout=10
    )
    assert error_type(outcome) == ErrorType.OUTPUT_LIMIT
    assert outcome.result is not None
    assert len(outcome.result["stdout"]) <= 1024 * 1024
    assert outcome.result["stdout_truncated"] or outcome.result["stderr_truncated"]
    assert _rss_kb() - before < 32 * 1024


# --- network ----------------------------------------------------------------------------------


async def test_tcp_udp_and_dns_all_fail(executor: CodeExecutor) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    tcp_port, udp_port = listener.getsockname()[1], udp.getsockname()[1]
    code = f"""
import socket
def attempt(name, fn):
    try:
        fn(); print(name, 'OK')
    except OSError as e:
        print(name, 'failed', e.errno)
attempt('tcp', lambda: socket.create_connection(('127.0.0.1', {tcp_port}), timeout=2))
attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
    b'x', ('127.0.0.1', {udp_port})))
attempt('dns', lambda: socket.getaddrinfo('example.com', 80))
attempt('raw', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
"""
    try:
        out = stdout(await run(executor, {"code": code}))
        lines = dict(line.split(" ", 1) for line in out.splitlines())
        assert set(lines) == {"tcp", "udp", "dns", "raw", "netlink"}
        assert all(v.startswith("failed") for v in lines.values()), out
        assert lines["tcp"] == "failed 1"  # seccomp's EPERM, before the empty netns
        with pytest.raises(BlockingIOError):
            listener.accept()
        with pytest.raises(BlockingIOError):
            udp.recv(10)
    finally:
        listener.close()
        udp.close()


#: Socket families a program tries to open: (name, family, type). AF_VSOCK reaches the
#: hypervisor's services on a VM host; the others are kernel attack surface a job has no use for.
FAMILIES_TRIED = [
    ("unix", "socket.AF_UNIX", "SOCK_STREAM"), ("inet", "socket.AF_INET", "SOCK_DGRAM"),
    ("inet6", "socket.AF_INET6", "SOCK_DGRAM"), ("vsock", "socket.AF_VSOCK", "SOCK_STREAM"),
    ("netlink", "socket.AF_NETLINK", "SOCK_RAW"), ("packet", "socket.AF_PACKET", "SOCK_RAW"),
    ("alg", "socket.AF_ALG", "SOCK_SEQPACKET"), ("key", "15", "SOCK_RAW"),
    ("unused_family_43", "43", "SOCK_DGRAM"), ("beyond_af_max", "200", "SOCK_DGRAM"),
    ("upper_bits_vsock", "(1 << 32) | socket.AF_VSOCK", "SOCK_STREAM"),
]  # fmt: skip
#: The raw syscall, so the family reaches the kernel as a full 64-bit register value (libc's
#: socket() would cut it to the 32 bits the kernel reads).
FAMILY_PROBE = (
    "import ctypes, os, socket\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "NR = {'x86_64': 41, 'aarch64': 198}[os.uname().machine]\n"
) + "".join(
    f"fd = libc.syscall(NR, ctypes.c_long({family}), ctypes.c_long(socket.{kind}), 0)\n"
    f"print('{name}', 'OK' if fd >= 0 else f'errno {{ctypes.get_errno()}}')\n"
    for name, family, kind in FAMILIES_TRIED
)


async def test_only_unix_sockets_without_network_and_inet_too_with_it(
    executor: CodeExecutor, tmp_path: Path
) -> None:
    out = stdout(await run(executor, {"code": FAMILY_PROBE}))
    found = dict(line.split(" ", 1) for line in out.splitlines())
    assert found == {name: ("OK" if name == "unix" else "errno 1") for name, _, _ in FAMILIES_TRIED}

    settings = Settings(
        data_dir=tmp_path / "net-data",
        credentials_file=tmp_path / "net-cred" / "credentials.json",
        allow_network=True,
    )
    networked = CodeExecutor(settings)
    await networked.start()
    try:
        out = stdout(await run(networked, {"code": FAMILY_PROBE}))
    finally:
        await networked.close()
    found = dict(line.split(" ", 1) for line in out.splitlines())
    allowed = {"unix", "inet", "inet6"}
    assert found == {
        name: ("OK" if name in allowed else "errno 1") for name, _, _ in FAMILIES_TRIED
    }


# --- filesystem and secrets -------------------------------------------------------------------


async def test_writes_outside_the_work_dir_and_reading_secrets_fail(
    executor: CodeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("DEEPEXEC_HOSTILE_SECRET", secret)
    code = r"""
import os
for path in ['/usr/evil', '/etc/evil', '/evil', '/var/evil', '/sys/kernel/evil',
             '/proc/sys/kernel/hostname', '/sys/fs/cgroup/memory/deepexec/evil']:
    try:
        with open(path, 'w') as f: f.write('x')
        print('WROTE', path)
    except OSError as e:
        print('denied', path, e.errno)
for path in ['/etc/shadow', '/proc/1/environ']:
    try:
        print('READ', path, open(path, 'rb').read())
    except OSError as e:
        print('denied', path, e.errno)
print('ENV', dict(os.environ))
open('ok.txt', 'w').write('fine'); print('workdir ok')
"""
    out = stdout(await run(executor, {"code": code}))
    assert "WROTE" not in out
    assert "READ /etc/shadow" not in out
    assert secret not in out
    assert "DEEPEXEC_HOSTILE_SECRET" not in out
    assert "workdir ok" in out


async def test_the_host_trees_other_jobs_and_the_cgroup_hierarchy_are_out_of_sight(
    executor: CodeExecutor,
) -> None:
    # A neighbour job holds a cgroup and a work dir while the probe looks around.
    neighbour = asyncio.create_task(run(executor, {"code": "import time; time.sleep(3)"}))
    deadline = time.monotonic() + 5
    while not our_job_cgroups(executor) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert our_job_cgroups(executor), "the neighbour job never started"
    source_tree = Path(__file__).resolve().parents[1]
    code = f"""
import os
for path in ['/sys', '/sys/fs/cgroup', '/var/lib', '/opt', '/root', '/srv', '/mnt', '/run',
             {str(source_tree)!r}, {str(executor.work_root)!r}, '/proc/1/root/sys']:
    print('EXISTS' if os.path.exists(path) else 'absent', path)
print('cgroup', open('/proc/self/cgroup').read().count('deepexec'))
print('python', os.path.exists('/usr/bin/python3'), 'etc', os.path.exists('/etc/passwd'))
"""
    out = stdout(await run(executor, {"code": code}))
    await neighbour
    assert "EXISTS" not in out, out
    assert out.count("absent") == 11
    assert "python True etc True" in out
    # Its own cgroup namespace: the job's cgroup is its root, named nowhere.
    assert "cgroup 0" in out


async def test_escape_syscalls_fail_with_eperm(executor: CodeExecutor) -> None:
    code = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def check(name, rc):
    print(name, rc, ctypes.get_errno())
check('ptrace', libc.ptrace(0, 0, 0, 0))
check('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))
check('unshare', libc.unshare(0x10000000))
check('setns', libc.setns(0, 0))
check('keyctl', libc.syscall(250, 0, 0, 0, 0))
check('bpf', libc.syscall(321, 0, 0, 0))
"""
    out = stdout(await run(executor, {"code": code}))
    results = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert set(results) == {"ptrace", "mount", "unshare", "setns", "keyctl", "bpf"}
    for name, (rc, err) in results.items():
        assert (rc, err) == ("-1", "1"), f"{name}: {rc} errno {err}"


async def test_raising_rlimits_fails(executor: CodeExecutor) -> None:
    code = r"""
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
try:
    resource.setrlimit(resource.RLIMIT_CPU, (hard + 100, hard + 100)); print('raised')
except (ValueError, OSError) as e:
    print('denied', hard)
"""
    out = stdout(await run(executor, {"code": code, "limits": {"cpu_time_s": 5}}))
    assert out == "denied 6\n"


async def test_kill_minus_one_only_kills_the_sandbox(executor: CodeExecutor) -> None:
    uid = pwd.getpwnam(SANDBOX_USER).pw_uid
    # A host process of the same uid, outside the sandbox: must survive.
    victim = subprocess.Popen(
        ["/bin/sleep", "30"], user=uid, group=uid, extra_groups=[], start_new_session=True
    )
    try:
        code = "sleep 20 & kill -9 -1; wait $!; echo after $?"
        outcome = await run(executor, {"code": code, "language": "bash"}, timeout=5)
        # The program's own background job was killed; the host process was not.
        assert stdout(outcome) == "after 137\n"
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


async def test_another_running_jobs_files_are_unreachable(executor: CodeExecutor) -> None:
    secret = "other-job-" + secrets.token_hex(8)
    holder = asyncio.create_task(
        run(
            executor,
            {"code": f"open('secret.txt', 'w').write('{secret}')\nimport time\ntime.sleep(3)"},
        )
    )
    await asyncio.sleep(0.5)
    assert executor.work_root is not None
    host_paths = [
        str(p / "secret.txt")
        for p in executor.work_root.iterdir()
        if p.name.startswith(f"{os.getpid()}-")
    ]
    assert host_paths  # the other job's file exists on the host right now
    code = f"""
import glob, os
paths = {host_paths!r} + glob.glob('/var/tmp/*/*/secret.txt') + glob.glob('/proc/*/cwd/secret.txt')
for p in paths:
    try:
        print('READ', open(p).read())
    except OSError as e:
        print('denied', e.errno)
print('done', len(paths))
"""
    out = stdout(await run(executor, {"code": code}))
    assert secret not in out
    assert "done" in out
    await holder


async def test_setsid_double_fork_daemon_dies_at_job_end_and_at_cancel(
    executor: CodeExecutor,
) -> None:
    marker = "hostile-" + secrets.token_hex(4)
    daemon = (
        "import os, time, subprocess\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        subprocess.Popen(['/bin/sleep', '60', '{marker}'])\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('parent done')\n"
    )
    outcome = await run(executor, {"code": daemon})
    assert stdout(outcome) == "parent done\n"
    await assert_nothing_left(executor)

    ctx = Ctx(10)
    job = asyncio.create_task(run(executor, {"code": daemon + "time.sleep(30)\n"}, ctx=ctx))
    await asyncio.sleep(0.8)
    ctx.cancel_requested.set()
    outcome = await asyncio.wait_for(job, 3)
    assert outcome.canceled
    await assert_nothing_left(executor)


async def test_fifty_concurrent_jobs_get_their_own_outputs(executor: CodeExecutor) -> None:
    tokens = [secrets.token_hex(6) for _ in range(50)]
    code = "import sys\nprint(sys.stdin.read()[::-1])"
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(run(executor, {"code": code, "stdin": t}) for t in tokens)), 45
    )
    bad = [o for o in outcomes if o.error]
    assert not bad, bad[:2]
    assert [stdout(o) for o in outcomes] == [t[::-1] + "\n" for t in tokens]


# --- disk -------------------------------------------------------------------------------------


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def test_writing_many_large_files_is_disk_limit_within_the_quota(
    executor: CodeExecutor,
) -> None:
    # 48 files of 60 MiB, each under the 64 MiB RLIMIT_FSIZE: 2.8 GB without a disk quota.
    code = r"""
import sys
chunk = b"x" * (60 << 20)
for i in range(48):
    with open(f"big{i}", "wb") as f:
        f.write(chunk)
    print("wrote", i, flush=True)
"""
    assert executor.work_root is not None
    watched = {str(executor.work_root), "/"}
    before = {path: _free_bytes(path) for path in watched}
    lowest = dict(before)
    done = asyncio.Event()

    async def watch_free_space() -> None:
        while not done.is_set():
            for path in watched:
                lowest[path] = min(lowest[path], _free_bytes(path))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch_free_space())
    try:
        outcome = await run(executor, {"code": code}, timeout=30)
    finally:
        done.set()
        await watcher
    assert error_type(outcome) == ErrorType.DISK_LIMIT, outcome
    assert outcome.error is not None and "256 MB" in outcome.error.message
    assert outcome.result is not None
    # At most the files that fit in 256 MiB were written whole.
    assert stdout(outcome).count("wrote") <= 4
    quota = 256 << 20
    for path in watched:
        assert before[path] - lowest[path] <= quota, (path, before[path] - lowest[path])


async def test_a_job_asks_for_a_smaller_disk_and_gets_it(executor: CodeExecutor) -> None:
    code = "open('f', 'wb').write(b'x' * (40 << 20))\nprint('fit')"
    small = await run(executor, {"code": code, "limits": {"disk_mb": 16}})
    assert error_type(small) == ErrorType.DISK_LIMIT, small
    assert small.error is not None and "16 MB" in small.error.message
    roomy = await run(executor, {"code": code, "limits": {"disk_mb": 64}})
    assert roomy.error is None, roomy
    assert stdout(roomy) == "fit\n"


async def test_files_beyond_the_memory_limit_are_memory_limit(executor: CodeExecutor) -> None:
    # The work dir is a tmpfs: its pages count against the job's memory (docs/sandbox.md).
    code = (
        "chunk = b'x' * (16 << 20)\n"
        "with open('f', 'wb') as f:\n"
        "    for _ in range(25):\n"
        "        f.write(chunk)\n"
        "print('wrote 400 MB')\n"
    )
    limits = {"memory_mb": 256, "disk_mb": 512, "max_file_size_mb": 512}
    outcome = await run(executor, {"code": code, "limits": limits})
    assert error_type(outcome) == ErrorType.MEMORY_LIMIT, outcome
    assert "wrote" not in stdout(outcome)


async def test_three_thousand_nested_directories_end_with_the_output_kept(
    executor: CodeExecutor,
) -> None:
    code = r"""
import os
os.chdir("outputs")
open("top.txt", "w").write("top")
for i in range(3000):
    os.mkdir("d")
    os.chdir("d")
    if i == 2:
        open("shallow.txt", "w").write("three down")
open("bottom.txt", "w").write("deep")
print("built")
"""
    outcome = await run(executor, {"code": code}, timeout=30)
    assert outcome.error is None, outcome
    assert outcome.result is not None
    assert stdout(outcome) == "built\n"
    assert outcome.result["files"] == {"top.txt": "top", "d/d/d/shallow.txt": "three down"}
    skipped = outcome.result["files_skipped"]
    assert len(skipped) == 1
    assert skipped[0]["reason"] == "deeper than 32 directory levels"
    assert skipped[0]["path"] == "d/" * 33


async def test_output_names_that_are_not_utf8_are_reported_skipped(
    executor: CodeExecutor,
) -> None:
    code = r"""
import os
open(b"outputs/\xff.txt", "wb").write(b"raw name")
os.mkdir(b"outputs/caf\xe9")
open(b"outputs/caf\xe9/inside.txt", "w").write("hidden")
open("outputs/ok.txt", "w").write("fine")
"""
    outcome = await run(executor, {"code": code})
    assert outcome.error is None, outcome
    assert outcome.result is not None
    assert outcome.result["files"] == {"ok.txt": "fine"}
    assert outcome.result["files_skipped"] == [
        {"path": "caf\\xe9/", "reason": "directory name is not valid UTF-8"},
        {"path": "\\xff.txt", "reason": "file name is not valid UTF-8"},
    ]


# --- files ------------------------------------------------------------------------------------


async def test_input_files_in_and_output_files_out(executor: CodeExecutor) -> None:
    code = r"""
import os
print(open('data/in.txt').read(), open('blob.bin', 'rb').read().hex())
os.makedirs('outputs/sub', exist_ok=True)
open('outputs/result.txt', 'w').write('résultat')
open('outputs/sub/raw.bin', 'wb').write(bytes([0, 255, 1]))
os.symlink('/etc/shadow', 'outputs/shadow')
"""
    data = {
        "code": code,
        "files": {
            "data/in.txt": "hello",
            "blob.bin": {"content": base64.b64encode(b"\x00\xff").decode(), "encoding": "base64"},
        },
    }
    outcome = await run(executor, data)
    assert outcome.error is None, outcome
    assert stdout(outcome) == "hello 00ff\n"
    assert outcome.result is not None
    assert outcome.result["files"] == {
        "result.txt": "résultat",
        "sub/raw.bin": {
            "content": base64.b64encode(b"\x00\xff\x01").decode(),
            "encoding": "base64",
        },
    }
    assert outcome.result["files_truncated"] is False


async def test_output_files_are_capped(executor: CodeExecutor) -> None:
    code = "for i in range(3):\n    open(f'outputs/f{i}', 'w').write('x' * 400_000)\n"
    outcome = await run(executor, {"code": code})
    assert outcome.result is not None
    assert sorted(outcome.result["files"]) == ["f0", "f1"]
    assert outcome.result["files_truncated"] is True


async def test_result_reports_cgroup_accounting(executor: CodeExecutor) -> None:
    outcome = await run(
        executor, {"code": "x = bytearray(50 << 20)\nx[::4096] = b'1' * len(x[::4096])"}
    )
    assert outcome.error is None
    assert outcome.result is not None
    assert outcome.result["oom_killed"] is False
    assert outcome.result["memory_peak_kb"] >= 50 * 1024
    assert outcome.result["cpu_time_ms"] >= 1


async def test_interrupting_the_executor_at_any_moment_leaves_nothing(
    executor: CodeExecutor,
) -> None:
    # What a server shutdown does: cancel the job's task, wherever it is (creating the cgroup,
    # at the launch gate, running).
    for delay in (0.0, 0.005, 0.02, 0.05, 0.3):
        task = asyncio.create_task(run(executor, {"code": "import time\ntime.sleep(30)"}))
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_nothing_left(executor)
