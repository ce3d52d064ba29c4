"""The seccomp filter given to every sandbox: escape-prone syscalls and network sockets fail
with EPERM (notes/sandbox.md §5.2).

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
#: Socket families refused unless the job may use the network.
NETWORK_FAMILIES: tuple[int, ...] = (
    socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET,
)  # fmt: skip

_lock = threading.Lock()
_compiled: dict[bool, bytes] = {}


class SeccompUnavailable(RuntimeError):
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
        if not allow_network:
            for family in NETWORK_FAMILIES:
                flt.add_rule(deny, "socket", seccomp.Arg(0, seccomp.EQ, family))
        data = _export(flt)
        _compiled[allow_network] = data
        return data


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
