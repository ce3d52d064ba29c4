"""The Judge0 CE 1.13.1 API's tables and information routes over this host: language ids,
statuses, defaults and maxima, ``/config_info`` and ``/about`` (pure). The submissions'
mapping is ``judge0_model``; the routes are ``judge0``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The version ``/about`` reports: the ids below are 1.13.1's, which self-hosted clients
#: hard-code (the official Python client picks its language table by this string).
VERSION = "1.13.1"
#: Tag on every job this API submits.
TAG = "judge0"
MAX_BATCH = 20
#: Judge0's defaults and maxima (``config.rb``), in its units; the server's own maxima cap them.
DEFAULTS: Mapping[str, float] = {
    "cpu_time_limit": 5.0,
    "cpu_extra_time": 1.0,
    "wall_time_limit": 10.0,
    "memory_limit": 128_000,
    "stack_limit": 64_000,
    "max_processes_and_or_threads": 60,
    "max_file_size": 1024,
    "number_of_runs": 1,
}
MAXIMA: Mapping[str, float] = {
    "cpu_time_limit": 15.0,
    "cpu_extra_time": 5.0,
    "wall_time_limit": 20.0,
    "memory_limit": 512_000,
    "stack_limit": 128_000,
    "max_processes_and_or_threads": 120,
    "max_file_size": 4096,
    "number_of_runs": 20,
}
MINIMA: Mapping[str, float] = {"wall_time_limit": 1.0, "memory_limit": 2048}
#: Extra wall-clock seconds a compiled language's job gets for its compile step.
COMPILE_ALLOWANCE_S = 20

STATUSES: Sequence[tuple[int, str]] = (
    (1, "In Queue"),
    (2, "Processing"),
    (3, "Accepted"),
    (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"),
    (6, "Compilation Error"),
    (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"),
    (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"),
    (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"),
    (13, "Internal Error"),
    (14, "Exec Format Error"),
)
STATUS_TEXT = dict(STATUSES)
STATUS_BY_SIGNAL = {"SIGSEGV": 7, "SIGXFSZ": 8, "SIGFPE": 9, "SIGABRT": 10}

#: Judge0 1.13.1 language id -> (DeepExec language, Judge0's name without its version). The
#: GCC ids of one language all run this host's GCC.
LANGUAGE_IDS: Mapping[int, tuple[str, str]] = {
    44: ("bash", "Executable"),
    46: ("bash", "Bash ({v})"),
    48: ("c", "C (GCC {v})"),
    49: ("c", "C (GCC {v})"),
    50: ("c", "C (GCC {v})"),
    52: ("cpp", "C++ (GCC {v})"),
    53: ("cpp", "C++ (GCC {v})"),
    54: ("cpp", "C++ (GCC {v})"),
    60: ("go", "Go ({v})"),
    62: ("java", "Java (OpenJDK {v})"),
    63: ("javascript", "JavaScript (Node.js {v})"),
    71: ("python", "Python ({v})"),
    73: ("rust", "Rust ({v})"),
}
#: Judge0's "Executable": ``source_code`` is a program binary (base64), run as it is. A job in
#: DeepExec's sandbox like any other: a bash job that runs the binary, given as an input file.
EXECUTABLE_ID = 44
EXECUTABLE_FILE = "a.out"
#: Source file names and commands as ``/languages/{id}`` shows them.
_FILES: Mapping[str, tuple[str, str | None, str]] = {
    "bash": ("script.sh", None, "/bin/bash script.sh"),
    "c": ("main.c", "gcc %s main.c", "./a.out"),
    "cpp": ("main.cpp", "g++ %s main.cpp", "./a.out"),
    "go": ("main.go", "go build %s main.go", "./main"),
    "java": ("Main.java", "javac %s Main.java", "java Main"),
    "javascript": ("script.js", None, "node script.js"),
    "python": ("script.py", None, "python3 script.py"),
    "rust": ("main.rs", "rustc %s main.rs", "./main"),
}
COMPILED_LANGUAGES = frozenset({"c", "cpp", "go", "java", "rust"})


@dataclasses.dataclass(frozen=True, slots=True)
class Language:
    """A Judge0 language id this host runs."""

    id: int
    name: str
    language: str

    def row(self, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name}
        if full:
            source, compile_cmd, run_cmd = (
                (EXECUTABLE_FILE, None, f"./{EXECUTABLE_FILE}")
                if self.id == EXECUTABLE_ID
                else _FILES[self.language]
            )
            out.update(
                is_archived=False, source_file=source, compile_cmd=compile_cmd, run_cmd=run_cmd
            )
        return out


def language_table(languages: Iterable[Mapping[str, Any]]) -> list[Language]:
    """The Judge0 ids of the host's languages (``GET /v1/languages`` rows), by id."""
    versions = {str(row.get("name")): _short_version(row.get("version")) for row in languages}
    return [
        Language(lang_id, label.format(v=versions[name]), name)
        for lang_id, (name, label) in sorted(LANGUAGE_IDS.items())
        if name in versions
    ]


def _short_version(version: object) -> str:
    words = str(version or "").split()
    found = next((w for w in words if w[:1].isdigit()), "")
    return found.split("-")[0].split("+")[0] or "?"


@dataclasses.dataclass(frozen=True, slots=True)
class ServerMaxima:
    """The server's limits in Judge0's units (they cap Judge0's own maxima)."""

    cpu_time_s: float
    wall_time_s: float
    memory_kb: float
    processes: float
    file_size_kb: float

    def of(self, field: str) -> float | None:
        return {
            "cpu_time_limit": self.cpu_time_s,
            "wall_time_limit": self.wall_time_s,
            "memory_limit": self.memory_kb,
            "max_processes_and_or_threads": self.processes,
            "max_file_size": self.file_size_kb,
        }.get(field)


# --- information routes -----------------------------------------------------------------------


#: ``max_queue_size`` of a server without a cap on its queue (Judge0 has no "none").
NO_QUEUE_CAP = 2**31 - 1


def config_info(
    maxima: ServerMaxima,
    callback_tries: int = 10,
    callback_timeout: float = 15.0,
    max_queue_size: int = 100_000,
) -> dict[str, Any]:
    """``GET /config_info``: every key of 1.13.1's, this server's values. Callbacks are
    webhooks: ``callback_tries`` attempts at most, each within ``callback_timeout`` s;
    ``max_queue_size`` is the server's ``max_pending_jobs`` (past it a submit is 503
    ``queue is full``)."""
    return {
        "maintenance_mode": False,
        "enable_wait_result": True,
        "enable_compiler_options": False,
        "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": True,
        "enable_submission_delete": True,
        "enable_callbacks": True,
        "callbacks_max_tries": callback_tries,
        "callbacks_timeout": callback_timeout,
        "enable_additional_files": False,
        "max_queue_size": max_queue_size,
        "cpu_time_limit": DEFAULTS["cpu_time_limit"],
        "max_cpu_time_limit": min(MAXIMA["cpu_time_limit"], maxima.cpu_time_s),
        "cpu_extra_time": DEFAULTS["cpu_extra_time"],
        "max_cpu_extra_time": MAXIMA["cpu_extra_time"],
        "wall_time_limit": DEFAULTS["wall_time_limit"],
        "max_wall_time_limit": min(MAXIMA["wall_time_limit"], maxima.wall_time_s),
        "memory_limit": int(DEFAULTS["memory_limit"]),
        "max_memory_limit": int(min(MAXIMA["memory_limit"], maxima.memory_kb)),
        "stack_limit": int(DEFAULTS["stack_limit"]),
        "max_stack_limit": int(MAXIMA["stack_limit"]),
        "max_processes_and_or_threads": int(DEFAULTS["max_processes_and_or_threads"]),
        "max_max_processes_and_or_threads": int(
            min(MAXIMA["max_processes_and_or_threads"], maxima.processes)
        ),
        "enable_per_process_and_thread_time_limit": False,
        "allow_enable_per_process_and_thread_time_limit": False,
        "enable_per_process_and_thread_memory_limit": False,
        "allow_enable_per_process_and_thread_memory_limit": False,
        "max_file_size": int(DEFAULTS["max_file_size"]),
        "max_max_file_size": int(min(MAXIMA["max_file_size"], maxima.file_size_kb)),
        "number_of_runs": 1,
        "max_number_of_runs": int(MAXIMA["number_of_runs"]),
        "redirect_stderr_to_stdout": False,
        "max_extract_size": 0,
        "enable_batched_submissions": True,
        "max_submission_batch_size": MAX_BATCH,
        "submission_cache_duration": 0.0,
        "use_docs_as_homepage": False,
        "allow_enable_network": False,
        "enable_network": False,
    }


def about() -> dict[str, Any]:
    return {
        "version": VERSION,
        "homepage": "/docs",
        "source_code": "DeepExec (a Judge0 CE 1.13.1-compatible API over its code jobs)",
        "maintainer": "this server's operator",
    }
