"""The progress channel between a sandboxed program and its job: a pipe and a line format.

A code job's program finds the write end of a pipe in the environment variable
``DEEPEXEC_PROGRESS_FD`` and writes lines ``PERCENT [message]\\n`` to it, for example
``40 loading data``. PERCENT is a number (decimals allowed), clamped to 0-100. Lines that do
not parse are ignored; a line longer than ``MAX_LINE_BYTES`` is dropped. One-liners:

python::

    import os; os.write(int(os.environ["DEEPEXEC_PROGRESS_FD"]), b"40 loading\\n")

javascript::

    require("fs").writeSync(Number(process.env.DEEPEXEC_PROGRESS_FD), "40 loading\\n");

bash::

    echo "40 loading" >&"$DEEPEXEC_PROGRESS_FD"

Everything here is pure: the executor feeds the bytes it reads and reports what comes out.
"""

from __future__ import annotations

import dataclasses
import math

#: Environment variable naming the progress file descriptor inside the sandbox.
PROGRESS_FD_ENV = "DEEPEXEC_PROGRESS_FD"
#: Longest accepted line, newline excluded; longer lines are discarded whole.
MAX_LINE_BYTES = 1024
#: Longest message kept from a line, in characters.
MAX_MESSAGE_CHARS = 200


@dataclasses.dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """One parsed progress line."""

    percent: int
    message: str | None


def parse_progress_line(line: bytes) -> ProgressUpdate | None:
    """Parse ``PERCENT [message]``; None for anything else (garbage is ignored, not fatal)."""
    text = line.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    head, _, rest = text.partition(" ")
    try:
        value = float(head.rstrip("%"))
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    percent = int(min(100.0, max(0.0, value)))
    message = rest.strip()[:MAX_MESSAGE_CHARS] or None
    return ProgressUpdate(percent, message)


class ProgressLineBuffer:
    """Splits a byte stream into bounded lines: memory stays under ``MAX_LINE_BYTES``.

    Only the latest valid line of each chunk counts: a program may write progress as fast as
    it can, and parsing every line (≈3 µs each, ≈300 in a 4 KiB read) held the event loop that
    serves every other request. The lines of a chunk are read backwards from its end until one
    parses, so a chunk costs one parse however many lines it carries.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max = max_line
        self._buf = bytearray()
        self._overlong = False  # inside a line already known to be too long

    def feed(self, data: bytes) -> list[ProgressUpdate]:
        """Add bytes; return the update of the latest complete, valid line they finish (a
        list of at most one)."""
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            self._keep(data)
            return []
        update = self._latest(data, last_nl)
        self._buf.clear()
        self._overlong = False
        self._keep(data[last_nl + 1 :])
        return [] if update is None else [update]

    def _latest(self, data: bytes, end: int) -> ProgressUpdate | None:
        """The latest valid line among those of ``data`` ending at or before ``end``."""
        while True:
            start = data.rfind(b"\n", 0, end) + 1
            if start == 0:
                # The chunk's first line continues what earlier chunks left.
                if self._overlong or len(self._buf) + end > self._max:
                    return None
                return parse_progress_line(bytes(self._buf) + data[:end])
            if end - start <= self._max:
                update = parse_progress_line(data[start:end])
                if update is not None:
                    return update
            end = start - 1

    def _keep(self, piece: bytes) -> None:
        """Hold the start of a line not finished yet, unless it is already too long."""
        if self._overlong:
            return
        if len(self._buf) + len(piece) > self._max:
            self._overlong = True
            self._buf.clear()
        else:
            self._buf += piece
