"""The languages a code job may use: names, aliases, interpreters and how to call them.

Interpreters are found by absolute path in system directories only, never through ``PATH``: a
version-manager shim (pyenv) costs ~60 ms a run and may read files the sandbox hides, and the
sandbox's ``--clearenv`` would break it anyway.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import threading
from collections.abc import Iterable, Mapping

#: Where interpreters are looked for, in order. Deliberately no user or shim directories.
SYSTEM_BIN_DIRS: tuple[str, ...] = ("/usr/bin", "/bin", "/usr/local/bin")


@dataclasses.dataclass(frozen=True, slots=True)
class Language:
    """A supported language: how to find its interpreter and run a source file with it."""

    name: str
    aliases: tuple[str, ...]
    #: Executable names tried in ``SYSTEM_BIN_DIRS``, best first.
    executables: tuple[str, ...]
    #: File the job's code is written to inside the work dir.
    filename: str
    #: Arguments between the interpreter and the file name.
    flags: tuple[str, ...] = ()
    #: Arguments that make the interpreter print its version.
    version_args: tuple[str, ...] = ("--version",)
    #: Compiled languages: arguments after the compiler (``executables``) that build the
    #: job's file inside the work dir. None: an interpreted language.
    compile_flags: tuple[str, ...] | None = None
    #: Compiled languages: the command that runs the build (``{runtime}`` is replaced by the
    #: path of the first of ``runtime_executables`` found, e.g. ``java``).
    run_command: tuple[str, ...] = ()
    runtime_executables: tuple[str, ...] = ()

    @property
    def compiled(self) -> bool:
        """Whether a job in this language has a compile step."""
        return self.compile_flags is not None

    def compile_argv(self, compiler: str) -> list[str]:
        """The compile step's command line (compiled languages only)."""
        return [compiler, *(self.compile_flags or ())]

    def argv(self, interpreter: str, args: Iterable[str], runtime: str | None = None) -> list[str]:
        """The command line that runs the job's file (or its build) with its arguments."""
        if self.compiled:
            run = [runtime or "" if part == "{runtime}" else part for part in self.run_command]
            return [*run, *args]
        return [interpreter, *self.flags, self.filename, *args]


LANGUAGES: tuple[Language, ...] = (
    Language(
        name="python",
        aliases=("py", "python3"),
        executables=("python3",),
        filename="main.py",
        # -s: the sandbox uid has no user site-packages anyway; skip the lookup.
        flags=("-s",),
    ),
    Language(
        name="javascript",
        aliases=("js", "node", "nodejs"),
        executables=("node", "nodejs"),
        filename="main.js",
    ),
    Language(
        name="bash",
        aliases=("sh", "shell"),
        executables=("bash",),
        filename="main.sh",
    ),
    Language(
        name="c",
        aliases=("gcc",),
        executables=("gcc",),
        filename="main.c",
        compile_flags=("-O2", "-std=gnu17", "-o", "main", "main.c", "-lm"),
        run_command=("./main",),
    ),
    Language(
        name="cpp",
        aliases=("c++", "g++", "cxx"),
        executables=("g++",),
        filename="main.cpp",
        compile_flags=("-O2", "-std=gnu++17", "-o", "main", "main.cpp"),
        run_command=("./main",),
    ),
    Language(
        name="java",
        aliases=(),
        executables=("javac",),
        filename="Main.java",
        version_args=("-version",),
        # One compiler thread: the JVM sizes its pools by CPUs; the cgroup caps processes.
        compile_flags=(
            "-J-XX:+UseSerialGC",
            "-J-XX:TieredStopAtLevel=1",
            "-J-Xss1m",
            "-encoding",
            "UTF-8",
            "Main.java",
        ),
        run_command=(
            "{runtime}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            ".",
            "Main",
        ),
        runtime_executables=("java",),
    ),
    Language(
        name="rust",
        aliases=("rs",),
        executables=("rustc",),
        filename="main.rs",
        compile_flags=("-O", "-o", "main", "main.rs"),
        run_command=("./main",),
    ),
    Language(
        name="go",
        aliases=("golang",),
        executables=("go",),
        filename="main.go",
        version_args=("version",),
        compile_flags=("build", "-o", "main", "main.go"),
        run_command=("./main",),
    ),
)

_BY_NAME: dict[str, Language] = {
    key: lang for lang in LANGUAGES for key in (lang.name, *lang.aliases)
}


def supported_names() -> list[str]:
    """Canonical language names, in display order."""
    return [lang.name for lang in LANGUAGES]


def resolve_language(name: str) -> Language | None:
    """The language called ``name`` or one of its aliases (case-insensitive), else None."""
    return _BY_NAME.get(name.strip().lower())


def find_executable(names: Iterable[str], dirs: Iterable[str] = SYSTEM_BIN_DIRS) -> str | None:
    """Absolute path of the first executable file among ``dirs`` × ``names``, else None."""
    dir_list = list(dirs)
    for name in names:
        for d in dir_list:
            path = os.path.join(d, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Interpreter:
    """A language available on this host (for compiled ones, ``path`` is the compiler)."""

    language: Language
    path: str
    version: str
    #: The runtime a compiled program needs (``java``), if any.
    runtime: str | None = None

    def to_dict(self) -> dict[str, str]:
        """The public description used by ``describe()``."""
        return {"name": self.language.name, "version": self.version, "path": self.path}


def parse_version(output: str) -> str:
    """The version from an interpreter's ``--version`` output (``Python 3.11.2``, ``v20.1.0``,
    ``GNU bash, version 5.2.15(1)-release ...``, ``go version go1.19.8 linux/amd64``)."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    for word in first.replace(",", " ").split():
        candidate = word.strip('"').removeprefix("go").lstrip("v")
        if candidate[:1].isdigit() and "." in candidate:
            return candidate.split("(")[0].rstrip(")")
    return first or "unknown"


def all_names() -> list[str]:
    """Every language name and alias, for error messages."""
    return [key for lang in LANGUAGES for key in (lang.name, *lang.aliases)]


_detected: dict[str, Interpreter] | None = None
_detect_lock = threading.Lock()


def detect_interpreters(timeout: float = 10.0) -> dict[str, Interpreter]:
    """Find each language's interpreter or compiler and ask its version (one subprocess each,
    run in parallel; ``javac -version`` alone takes ~0.5 s). Cached for the process: the
    toolchains do not change under a running server.

    Blocking: call off the event loop. Languages whose toolchain is missing are left out.
    """
    global _detected
    with _detect_lock:
        if _detected is None:
            with concurrent.futures.ThreadPoolExecutor(len(LANGUAGES)) as pool:
                results = pool.map(lambda lang: _detect_one(lang, timeout), LANGUAGES)
                _detected = {i.language.name: i for i in results if i is not None}
        return dict(_detected)


def _detect_one(lang: Language, timeout: float) -> Interpreter | None:
    path = find_executable(lang.executables)
    if path is None:
        return None
    runtime = None
    if lang.runtime_executables:
        runtime = find_executable(lang.runtime_executables)
        if runtime is None:
            return None
    try:
        proc = subprocess.run(
            [path, *lang.version_args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            check=False,
        )
        version = parse_version(proc.stdout or proc.stderr)
    except (OSError, subprocess.TimeoutExpired):
        version = "unknown"
    return Interpreter(lang, path, version, runtime)


def language_table(interpreters: Mapping[str, Interpreter]) -> list[dict[str, str]]:
    """``describe()``'s list of languages, in display order."""
    return [interpreters[n].to_dict() for n in supported_names() if n in interpreters]
