"""The SSE parser and the conversion of SSE events into the SDK's job events."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepexec_sdk import MCPProtocolError
from deepexec_sdk._follow import job_event
from deepexec_sdk.streaming import ServerSentEvent, SSEDecoder
from tests.sdk.conftest import job_json


def parse_all(raw: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = decoder.feed(raw)
    return events + decoder.flush()


def test_named_event_with_multi_line_data() -> None:
    raw = b"event: output\ndata: line one\ndata: line two\n\n"
    assert parse_all(raw) == [ServerSentEvent("output", "line one\nline two")]


def test_comments_and_keep_alives_produce_no_events() -> None:
    raw = b": keep-alive\n\n: another\nevent: status\n: in the middle\ndata: {}\n\n"
    assert parse_all(raw) == [ServerSentEvent("status", "{}")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_understood(eol: bytes) -> None:
    raw = eol.join([b"event: progress", b"data: 1", b"", b"data: 2", b"", b""])
    assert parse_all(raw) == [ServerSentEvent("progress", "1"), ServerSentEvent("message", "2")]


def test_only_one_leading_space_is_removed_and_colonless_lines_are_fields() -> None:
    raw = b"data:no space\ndata:  two spaces\ndata\n\n"
    assert parse_all(raw) == [ServerSentEvent("message", "no space\n two spaces\n")]


def test_event_without_data_is_not_dispatched_and_type_resets() -> None:
    raw = b"event: status\n\ndata: x\n\n"
    assert parse_all(raw) == [ServerSentEvent("message", "x")]


def test_id_and_retry_fields_are_kept_unknown_fields_ignored() -> None:
    raw = b"id: 7\nretry: 1500\nretry: soon\nfoo: bar\ndata: x\n\n"
    assert parse_all(raw) == [ServerSentEvent("message", "x", id="7", retry=1500)]


def test_unterminated_last_event_is_dropped_at_end_of_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: complete\n\ndata: cut off") == [
        ServerSentEvent("message", "complete")
    ]
    assert decoder.flush() == []


def test_bom_at_the_start_is_ignored() -> None:
    assert parse_all("\ufeffdata: x\n\n".encode()) == [ServerSentEvent("message", "x")]


def test_cr_then_lf_in_the_next_chunk_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent("message", "a")]
    assert decoder.feed(b"\ndata: b\r\r") == [ServerSentEvent("message", "b")]


def test_utf8_character_split_across_chunks() -> None:
    raw = "data: héllo ✓\n\n".encode()
    decoder = SSEDecoder()
    out = [e for i in range(len(raw)) for e in decoder.feed(raw[i : i + 1])]
    assert out == [ServerSentEvent("message", "héllo ✓")]


# --- property: chunk boundaries anywhere -------------------------------------------------------

line_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
event_names = st.sampled_from(["", "status", "progress", "output", "other"])
events_st = st.lists(
    st.tuples(event_names, st.lists(line_text, min_size=1, max_size=4), st.booleans()),
    max_size=6,
)


def serialize(events: list[tuple[str, list[str], bool]], eol: str) -> bytes:
    out = []
    for name, lines, comment in events:
        if comment:
            out.append(": keep-alive" + eol)
        if name:
            out.append(f"event: {name}{eol}")
        out.extend(f"data: {line}{eol}" for line in lines)
        out.append(eol)
    return "".join(out).encode()


@settings(max_examples=300, deadline=None)
@given(
    events=events_st,
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_any_chunking_yields_the_same_events(
    events: list[tuple[str, list[str], bool]], eol: str, cuts: list[int]
) -> None:
    raw = serialize(events, eol)
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    decoder = SSEDecoder()
    got: list[ServerSentEvent] = []
    for start, end in itertools.pairwise(points):
        got += decoder.feed(raw[start:end])
    got += decoder.flush()
    expected = [ServerSentEvent(name or "message", "\n".join(lines)) for name, lines, _ in events]
    assert got == expected


# --- SSE event → job event --------------------------------------------------------------------


def test_status_event_carries_the_full_job() -> None:
    event = job_event("job_1", ServerSentEvent("status", json.dumps(job_json("COMPLETED"))))
    assert event is not None and event.type == "status"
    assert event.job is not None and event.job.status == "COMPLETED" and event.job.is_terminal


def test_progress_and_output_events() -> None:
    progress = job_event("job_1", ServerSentEvent("progress", '{"progress": 40, "message": "m"}'))
    assert progress is not None
    assert (progress.type, progress.job_id, progress.progress, progress.message) == (
        "progress",
        "job_1",
        40,
        "m",
    )
    output = job_event("job_1", ServerSentEvent("output", '{"stream": "stdout", "text": "hi\\n"}'))
    assert output is not None and (output.stream, output.text) == ("stdout", "hi\n")


def test_unknown_event_types_are_skipped_for_forward_compatibility() -> None:
    assert job_event("job_1", ServerSentEvent("message", "{}")) is None
    assert job_event("job_1", ServerSentEvent("future_kind", "{}")) is None


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '{"job_id": "job_1"}'])
def test_malformed_status_event_is_a_protocol_error(data: str) -> None:
    with pytest.raises(MCPProtocolError):
        job_event("job_1", ServerSentEvent("status", data))
