"""Output capture: a run's stdout and stderr read through bounded buffers, its progress lines
parsed, its stdin fed (see docs/sandbox.md, "Bounds")."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
from collections.abc import Callable

from .progress import ProgressLineBuffer, ProgressUpdate

#: Read size for the output pipes. The StreamReader buffer bounds what sits in memory.
READ_CHUNK = 64 * 1024

#: ``(stream name, text)``: live output of a run.
OutputSink = Callable[[str, str], None]
ProgressSink = Callable[[ProgressUpdate], None]


class StreamCapture:
    """Keeps the first ``limit`` bytes of a stream and decodes UTF-8 incrementally for live
    output; the rest is counted and dropped, so memory stays flat whatever the program writes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self.total_bytes = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> str:
        """Record ``chunk``; return the newly decodable text of the kept part ('' if none)."""
        self.total_bytes += len(chunk)
        room = self.limit - len(self.data)
        if room <= 0:
            self.truncated = self.truncated or bool(chunk)
            return ""
        kept = chunk[:room]
        if len(kept) < len(chunk):
            self.truncated = True
        self.data += kept
        final = len(self.data) >= self.limit
        return self._decoder.decode(kept, final=final)

    def finish(self) -> str:
        """Flush the decoder (an incomplete trailing character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)

    def text(self) -> str:
        """Everything kept, decoded."""
        return bytes(self.data).decode("utf-8", errors="replace")


async def pump(
    reader: asyncio.StreamReader,
    capture: StreamCapture,
    name: str,
    sink: OutputSink,
    overflow: asyncio.Event,
) -> None:
    while chunk := await reader.read(READ_CHUNK):
        text = capture.feed(chunk)
        if text:
            sink(name, text)
        if capture.truncated:
            overflow.set()
    tail = capture.finish()
    if tail:
        sink(name, tail)


async def pump_progress(reader: asyncio.StreamReader, sink: ProgressSink) -> None:
    lines = ProgressLineBuffer()
    last: ProgressUpdate | None = None
    while chunk := await reader.read(4096):
        for update in lines.feed(chunk):
            if update != last:
                sink(update)
                last = update


async def feed_stdin(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    # The program may exit or close stdin without reading it all.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            proc.stdin.write(data)
            await proc.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
        proc.stdin.close()
        await proc.stdin.wait_closed()


async def open_pipe_reader(read_fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader)
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    return reader, transport
