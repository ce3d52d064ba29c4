"""An incremental Server-Sent Events parser, free of I/O.

Feed it bytes as they arrive, in chunks cut anywhere (inside a line, between ``\\r`` and
``\\n``, inside a multi-byte UTF-8 character); it returns each event once its blank line has
arrived. It follows the WHATWG "event stream interpretation" rules: ``event:``, multi-line
``data:``, ``id:``, ``retry:``, comment lines starting with ``:``, and ``\\r\\n``, ``\\n`` or
``\\r`` line endings.
"""

from __future__ import annotations

import codecs
import dataclasses


@dataclasses.dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event. ``event`` is ``"message"`` when the stream named none."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns a byte stream into :class:`ServerSentEvent` values; one instance per connection."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        # A chunk that ends in "\r" may be followed by the "\n" of the same CRLF.
        self._skip_lf = False
        self._at_start = True
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse the next bytes of the stream; return the events they complete."""
        return self._feed_text(self._utf8.decode(chunk))

    def flush(self) -> list[ServerSentEvent]:
        """The stream ended. Per the spec, an event without its closing blank line is dropped,
        so this returns nothing; it exists to finish decoding and reset the parser."""
        self._feed_text(self._utf8.decode(b"", final=True))
        self._buffer = ""
        self._event, self._data = "", []
        return []

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if self._at_start and text:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        self._buffer += text
        events: list[ServerSentEvent] = []
        start = 0
        buf = self._buffer
        while True:
            cr = buf.find("\r", start)
            lf = buf.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                line, start = buf[start:lf], lf + 1
            else:
                line = buf[start:cr]
                if cr + 1 < len(buf):
                    start = cr + 2 if buf[cr + 1] == "\n" else cr + 1
                else:
                    start = cr + 1
                    self._skip_lf = True
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buffer = buf[start:]
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment, e.g. the server's keep-alive
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # Any other field is ignored, as the spec says.
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(
            event=event or "message", data="\n".join(data), id=self._last_id, retry=self._retry
        )
