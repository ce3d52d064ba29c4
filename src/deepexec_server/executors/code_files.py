"""The files a code job's program leaves under ``outputs/``, collected for its result after
every process of the job is dead (docs/sandbox.md, "The process model")."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import stat
from pathlib import Path

from .code_data import MAX_INPUT_FILES

#: Output files returned in the result (total decoded bytes).
MAX_RESULT_FILES_BYTES = 1024 * 1024
OUTPUTS_DIR = "outputs"
#: How far the collection of output files looks: directory levels, entries, and how many
#: left-out names the result lists.
MAX_OUTPUT_DEPTH = 32
MAX_OUTPUT_ENTRIES = 10_000
MAX_SKIPPED_REPORTED = 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclasses.dataclass(frozen=True, slots=True)
class OutputFiles:
    """What came back from ``outputs/``."""

    files: dict[str, bytes]
    #: A budget (bytes, files, entries looked at) was reached: some files were not returned.
    truncated: bool
    #: The first ``MAX_SKIPPED_REPORTED`` files or directories left out for their name or
    #: depth: ``{"path": ..., "reason": ...}``, names shown with undecodable bytes escaped.
    skipped: list[dict[str, str]]


def _shown(rel: bytes) -> str:
    """A job-made path as text for the result: never a lone surrogate (which neither the
    stores nor JSON encoders accept), at most 200 characters."""
    text = rel.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= 200 else text[:200] + "..."


def collect_output_files(
    outputs: Path,
    owner_uid: int | None,
    budget: int = MAX_RESULT_FILES_BYTES,
    max_files: int = MAX_INPUT_FILES,
) -> OutputFiles:
    """Regular files under ``outputs`` (names relative to it), at most ``budget`` bytes in all
    and ``max_files`` files. Runs after every process of the job is dead; symlinks,
    devices, fifos and files of another owner are left out, never followed. The walk is
    iterative and by directory fd (a job's tree may be deeper than PATH_MAX allows), at most
    ``MAX_OUTPUT_DEPTH`` levels and ``MAX_OUTPUT_ENTRIES`` entries; a name that is not UTF-8
    is reported in ``skipped``."""
    walk = _Collector(owner_uid, budget, max_files)
    try:
        root = os.open(outputs, _DIR_FLAGS)
    except OSError:
        return walk.result()
    # (dir fd, its path relative to outputs, its subdirectories still to visit)
    stack: list[tuple[int, bytes, list[str]]] = []
    fd, prefix = root, b""
    try:
        while True:
            subdirs = walk.visit(fd, prefix, depth=len(stack))
            subdirs.reverse()
            stack.append((fd, prefix, subdirs))
            fd = -1
            while stack and fd < 0:
                parent_fd, parent_prefix, todo = stack[-1]
                if not todo or walk.seen > MAX_OUTPUT_ENTRIES:
                    os.close(parent_fd)
                    stack.pop()
                    continue
                name = todo.pop()
                with contextlib.suppress(OSError):
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                    prefix = parent_prefix + os.fsencode(name) + b"/"
            if fd < 0:
                break
    finally:
        for parent_fd, _, _ in stack:
            os.close(parent_fd)
        if fd >= 0:
            os.close(fd)
    return walk.result()


class _Collector:
    """The budgets and findings of one ``collect_output_files`` walk."""

    def __init__(self, owner_uid: int | None, budget: int, max_files: int) -> None:
        self.owner_uid = owner_uid
        self.budget = budget
        self.max_files = max_files
        self.found: dict[str, bytes] = {}
        self.skipped: list[dict[str, str]] = []
        self.truncated = False
        self.seen = 0

    def result(self) -> OutputFiles:
        return OutputFiles(self.found, self.truncated, self.skipped)

    def _skip(self, rel: bytes, reason: str) -> None:
        if len(self.skipped) < MAX_SKIPPED_REPORTED:
            self.skipped.append({"path": _shown(rel), "reason": reason})

    def visit(self, fd: int, prefix: bytes, depth: int) -> list[str]:
        """Take the files of the directory ``fd`` (``prefix`` relative to outputs, ``depth``
        levels down); return its subdirectories to visit."""
        subdirs: list[str] = []
        try:
            with os.scandir(fd) as it:
                # Never more than the entries still allowed, however large the dir.
                room = MAX_OUTPUT_ENTRIES - self.seen + 1
                entries = sorted(itertools.islice(it, room), key=lambda e: e.name)
        except OSError:
            entries = []
        for entry in entries:
            self.seen += 1
            if self.seen > MAX_OUTPUT_ENTRIES:
                self.truncated = True
                break
            rel = prefix + os.fsencode(entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if not is_dir and not stat.S_ISREG(st.st_mode):
                continue
            if self.owner_uid is not None and st.st_uid != self.owner_uid:
                continue
            try:
                rel.decode("utf-8")
            except UnicodeDecodeError:
                kind = "directory name" if is_dir else "file name"
                self._skip(rel + (b"/" if is_dir else b""), f"{kind} is not valid UTF-8")
                continue
            if not is_dir:
                self._take(fd, entry.name, rel, st.st_size)
            elif depth + 1 > MAX_OUTPUT_DEPTH:
                self._skip(rel + b"/", f"deeper than {MAX_OUTPUT_DEPTH} directory levels")
            else:
                subdirs.append(entry.name)
        return subdirs

    def _take(self, dir_fd: int, name: str, rel: bytes, size: int) -> None:
        if size > self.budget or len(self.found) >= self.max_files:
            self.truncated = True
            return
        try:
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return
        try:
            with os.fdopen(file_fd, "rb") as f:
                content = f.read(self.budget + 1)
        except OSError:
            return
        if len(content) > self.budget:
            self.truncated = True
            return
        self.budget -= len(content)
        self.found[rel.decode("utf-8")] = content
