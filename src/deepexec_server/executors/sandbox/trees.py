"""Iterative walks of a tree a job made: removing it, measuring it.

A job controls the shape of its tree: 3,000 nested dirs make a path longer than PATH_MAX and
make recursive walkers (``shutil.rmtree``, ``os.walk``) raise RecursionError. Every walk here
is iterative and holds one directory open at a time: it descends with ``openat(O_NOFOLLOW)``,
climbs with ``..`` checked against the device and inode it recorded on the way down, and never
crosses into another filesystem (docs/sandbox.md, "Bounds").
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Callable
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


#: ``(dir_fd, entry, is_dir)`` for every entry; False stops the walk.
EntryVisitor = Callable[[int, os.DirEntry[str], bool], bool]


@dataclasses.dataclass(slots=True)
class _Level:
    name: str
    dev: int
    ino: int
    subdirs: list[str]


def _open_subdir(name: str, dir_fd: int, fix_modes: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if not fix_modes:
            raise
        # Not root: a job running as our own uid may have made a dir unreadable.
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def walk_tree(
    path: Path,
    on_entry: EntryVisitor,
    on_dir_done: Callable[[int, str], None] | None = None,
) -> bool:
    """Visit every entry under ``path`` depth-first, iteratively, with one directory open at a
    time (see the module docstring); ``on_dir_done(parent_fd, name)`` once a directory's
    entries were all visited. Does not enter other filesystems. Returns False if ``on_entry``
    stopped it. Raises OSError if ``path`` cannot be opened or a directory moved meanwhile."""
    fix_modes = os.geteuid() != 0
    fd = os.open(path, _DIR_FLAGS)
    try:
        st = os.fstat(fd)
        root_dev = st.st_dev
        levels = [_Level("", st.st_dev, st.st_ino, [])]

        def scan(level: _Level) -> bool:
            with os.scandir(fd) as entries:
                for entry in entries:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if not on_entry(fd, entry, is_dir):
                        return False
                    if is_dir:
                        level.subdirs.append(entry.name)
            return True

        if not scan(levels[0]):
            return False
        while True:
            level = levels[-1]
            if level.subdirs:
                name = level.subdirs.pop()
                try:
                    child = _open_subdir(name, fd, fix_modes)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        continue  # gone, or replaced by a file or a symlink
                    raise
                cst = os.fstat(child)
                if cst.st_dev != root_dev:
                    os.close(child)
                    continue
                if fix_modes:
                    os.fchmod(child, 0o700)
                os.close(fd)
                fd = child
                levels.append(_Level(name, cst.st_dev, cst.st_ino, []))
                if not scan(levels[-1]):
                    return False
                continue
            if len(levels) == 1:
                return True
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            done = levels.pop()
            pst = os.fstat(fd)
            if (pst.st_dev, pst.st_ino) != (levels[-1].dev, levels[-1].ino):
                raise OSError(errno.ESTALE, f"a directory under {path} moved during the walk")
            if on_dir_done is not None:
                on_dir_done(fd, done.name)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it, whatever its depth (never follows symlinks).
    FileNotFoundError if ``path`` does not exist."""

    def unlink(dir_fd: int, entry: os.DirEntry[str], is_dir: bool) -> bool:
        if not is_dir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=dir_fd)
        return True

    def rmdir(dir_fd: int, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(name, dir_fd=dir_fd)

    try:
        walk_tree(path, unlink, rmdir)
    except NotADirectoryError:
        os.unlink(path)
        return
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # a symlink: removed below, never followed
            raise
        os.unlink(path)
        return
    os.rmdir(path)


@dataclasses.dataclass(frozen=True, slots=True)
class TreeUsage:
    """What a tree takes on disk (every block and inode), as far as it was counted."""

    bytes: int
    entries: int


def tree_usage(path: Path, stop_bytes: int, stop_entries: int) -> TreeUsage:
    """Blocks and entries under ``path``; stops counting once past either bound."""
    total = entries = 0
    linked: set[int] = set()

    def count(dir_fd: int, entry: os.DirEntry[str], is_dir: bool) -> bool:
        nonlocal total, entries
        entries += 1
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return True
        if st.st_nlink > 1 and not is_dir:
            if st.st_ino in linked:
                return True
            linked.add(st.st_ino)
        total += st.st_blocks * 512
        return total < stop_bytes and entries < stop_entries

    walk_tree(path, count)
    return TreeUsage(total, entries)
