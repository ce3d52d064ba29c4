"""The languages a code job may use: names, aliases, interpreters and how to call them.

Interpreters are found by absolute path in system directories only, never through ``PATH``: a
version-manager shim (pyenv) costs ~60 ms a run and may read files the sandbox hides, and the
sandbox's ``--clearenv`` would break it anyway.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
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

    def argv(self, interpreter: str, args: Iterable[str]) -> list[str]:
        """The command line that runs the job's file with its arguments."""
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
    """A language available on this host."""

    language: Language
    path: str
    version: str

    def to_dict(self) -> dict[str, str]:
        """The public description used by ``describe()``."""
        return {"name": self.language.name, "version": self.version, "path": self.path}


def parse_version(output: str) -> str:
    """The version from an interpreter's ``--version`` output (``Python 3.11.2``, ``v20.1.0``,
    ``GNU bash, version 5.2.15(1)-release ...``)."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    for word in first.replace(",", " ").split():
        candidate = word.lstrip("v")
        if candidate[:1].isdigit() and "." in candidate:
            return candidate.split("(")[0]
    return first or "unknown"


def detect_interpreters(timeout: float = 10.0) -> dict[str, Interpreter]:
    """Find each language's interpreter and ask its version (one subprocess each).

    Blocking: call off the event loop. Languages whose interpreter is missing are left out.
    """
    found: dict[str, Interpreter] = {}
    for lang in LANGUAGES:
        path = find_executable(lang.executables)
        if path is None:
            continue
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
        found[lang.name] = Interpreter(lang, path, version)
    return found


def language_table(interpreters: Mapping[str, Interpreter]) -> list[dict[str, str]]:
    """``describe()``'s list of languages, in display order."""
    return [interpreters[n].to_dict() for n in supported_names() if n in interpreters]
