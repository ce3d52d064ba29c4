"""The seccomp filter given to every sandbox: escape-prone syscalls, and sockets of any family
but the allowed ones, fail with EPERM (docs/sandbox.md).

Compiled once per process with libseccomp (``pyseccomp``, ctypes over ``libseccomp.so.2``) to
classic BPF; each run gets the bytes on a fresh pipe whose read end is passed to
``bwrap --seccomp FD``. The default action is ALLOW (a deny-list, like Flatpak's): the empty
network namespace, the read-only root and the unprivileged uid remain the main walls.
Syscalls of another ABI (i386 on x86_64) hit libseccomp's bad-arch action and kill the thread.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import threading

from ...errors import DeepExecError

#: Syscalls that fail with EPERM in every sandbox.
DENIED_SYSCALLS: tuple[str, ...] = (
    "ptrace", "mount", "umount2", "unshare", "setns", "pivot_root", "chroot",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "open_by_handle_at", "name_to_handle_at", "userfaultfd",
    "process_vm_readv", "process_vm_writev", "syslog", "acct", "quotactl", "uselib",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # The new mount API.
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
)  # fmt: skip
#: The only socket families a sandboxed program may create: AF_UNIX always, plus IPv4 and IPv6
#: when the job may use the network. Everything else (netlink, packet, vsock, which reaches the
#: hypervisor on a VM host, bluetooth, alg, ...) is refused: an allow-list, so a family a newer
#: kernel adds is refused too.
LOCAL_FAMILIES: tuple[int, ...] = (socket.AF_UNIX,)
NETWORK_FAMILIES: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
#: Families below this are refused one by one; any value from it up (a family no kernel has yet,
#: or one with bits set above the 32 the kernel reads) by one range rule. libseccomp refuses two
#: comparisons of one argument in one rule, so "not AF_UNIX and not AF_INET" has to be spelled
#: this way.
FAMILY_BOUND = 64

_lock = threading.Lock()
_compiled: dict[bool, bytes] = {}


class SeccompUnavailable(DeepExecError, RuntimeError):
    """libseccomp or its Python binding is missing."""


def compile_filter(allow_network: bool) -> bytes:
    """The filter as BPF bytes (compiled on first use, then cached for the process)."""
    with _lock:
        cached = _compiled.get(allow_network)
        if cached is not None:
            return cached
        try:
            import pyseccomp as seccomp  # type: ignore[import-untyped]
        except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 missing
            raise SeccompUnavailable(f"pyseccomp/libseccomp unavailable: {exc}") from exc
        flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        deny = seccomp.ERRNO(errno.EPERM)
        for name in DENIED_SYSCALLS:
            try:
                flt.add_rule(deny, name)
            except (RuntimeError, ValueError, OSError):
                continue  # a syscall this kernel/arch does not have
        allowed = socket_families(allow_network)
        for call in ("socket", "socketpair"):
            for family in range(FAMILY_BOUND):
                if family not in allowed:
                    flt.add_rule(deny, call, seccomp.Arg(0, seccomp.EQ, family))
            flt.add_rule(deny, call, seccomp.Arg(0, seccomp.GE, FAMILY_BOUND))
        data = _export(flt)
        _compiled[allow_network] = data
        return data


def socket_families(allow_network: bool) -> frozenset[int]:
    """The socket families a program may create."""
    return frozenset(LOCAL_FAMILIES + (NETWORK_FAMILIES if allow_network else ()))


def _export(flt: object) -> bytes:
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)  # type: ignore[attr-defined]
        f.seek(0)
        return f.read()


def filter_pipe(bpf: bytes) -> int:
    """A pipe holding ``bpf``; returns its read end (the caller passes it to bwrap and closes
    it). The filter (a few hundred bytes) fits the pipe buffer, so the write never blocks."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, bpf)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd
