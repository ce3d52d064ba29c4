"""The ``data`` of the two job types, declared once.

``CodeExecutionData`` and ``TextGenerationData`` hold every field a job's ``data`` may have,
with its default, its bounds and the message a bad value gets. The clients build their requests
with them, the server's MCP tools derive their input schemas from them, and the server validates
a submitted job's data with them. What depends on the server (the languages it has installed,
its models, its configured maxima) is not here: the server checks it after.

A problem is reported as ``{"loc": ["data", field, ...], "msg": ...}`` (``job_data_problem``),
the ``details`` of the server's 422 answer.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

# --- code_execution ---------------------------------------------------------------------------

MAX_CODE_BYTES = 1024 * 1024
MAX_STDIN_BYTES = 1024 * 1024
MAX_ARGS = 100
MAX_ARG_BYTES = 64 * 1024
MAX_ENV_VARS = 64
MAX_ENV_VALUE_BYTES = 32 * 1024
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_NAME = re.compile(ENV_NAME_PATTERN)
#: Input files: how many, and how long a path.
MAX_INPUT_FILES = 100
MAX_FILE_PATH_CHARS = 255
DEFAULT_LANGUAGE = "python"
#: Test cases of one job, and the bytes of all their stdin and expected outputs together.
MAX_TESTS = 500
MAX_TESTS_BYTES = 8 * 1024 * 1024
Compare = Literal["exact", "trailing_whitespace", "tokens", "float"]
COMPARE_MODES: tuple[str, ...] = get_args(Compare)
DEFAULT_FLOAT_TOLERANCE = 1e-6

# --- text_generation --------------------------------------------------------------------------

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 256
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 200
MAX_MESSAGES = 1000
MAX_SEED = 2**32 - 2  # llama.cpp reads 2**32 - 1 as "pick a random seed"
Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)


def _problem(kind: str, msg: str, at: object = None) -> PydanticCustomError:
    """A validation error with our message. ``at``: a key below the field (the loc grows by
    it), or a tuple of fields the problem is reported on, one detail each."""
    return PydanticCustomError(kind, msg, {"at": at} if at is not None else None)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def _int_at_least(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _text(max_bytes: int, *, nul: bool = True) -> BeforeValidator:
    """A string of at most ``max_bytes`` UTF-8 bytes (without NUL unless ``nul``)."""

    def check(value: object) -> object:
        if isinstance(value, str):
            if _utf8_len(value) > max_bytes:
                raise _problem("too_long", f"longer than {max_bytes} bytes")
            if not nul and "\x00" in value:
                raise _problem("nul", "contains a NUL character")
        return value

    return BeforeValidator(check)


def _short(max_bytes: int, what: str) -> BeforeValidator:
    """An argument or env value: at most ``max_bytes`` bytes, without NUL."""

    def check(value: object) -> object:
        if isinstance(value, str) and ("\x00" in value or _utf8_len(value) > max_bytes):
            raise _problem("too_long", f"{what}must be at most {max_bytes} bytes, without NUL")
        return value

    return BeforeValidator(check)


def _none_is(default: Callable[[], object]) -> BeforeValidator:
    """``null`` means the default (a fresh one each time)."""
    return BeforeValidator(lambda value: default() if value is None else value)


def _env_name(value: object) -> object:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise _problem("env_name", f"name must match {ENV_NAME_PATTERN}")
    return value


def _file_path(name: object) -> object:
    if not isinstance(name, str):
        raise _problem("file_name", "file name must be a string")
    if not name or len(name) > MAX_FILE_PATH_CHARS:
        raise _problem("file_name", f"file name must be 1-{MAX_FILE_PATH_CHARS} characters")
    if "\x00" in name or "\\" in name:
        raise _problem("file_name", "file name may not contain NUL or backslash")
    if name.startswith("/"):
        raise _problem("file_name", "file name must be a relative path")
    if any(p in ("", ".", "..") for p in name.split("/")):
        raise _problem("file_name", "file name may not contain '..', '.' or empty path segments")
    return name


class Base64File(BaseModel):
    """A binary input file: ``{"content": base64, "encoding": "base64"}``."""

    content: str
    encoding: Literal["base64"]


def _file_content(value: object) -> object:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and value.get("encoding") == "base64":
        content = value.get("content")
        if not isinstance(content, str):
            raise _problem("base64", "must be a base64 string", at="content")
        try:
            base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise _problem("base64", "is not valid base64", at="content") from None
        return value
    raise _problem("file", 'must be a string or {"content": ..., "encoding": "base64"}')


def _no_file_under_a_file(files: dict[str, Any]) -> dict[str, Any]:
    for name in files:
        # "a" and "a/b" cannot both be files.
        for i in range(1, name.count("/") + 1):
            if name.rsplit("/", i)[0] in files:
                raise _problem("file_parent", "a parent of this path is also a file", at=name)
    return files


def _positive(value: object) -> object:
    if value is not None and not _int_at_least(value, 1):
        raise _problem("positive", "must be a positive integer")
    return value


Limit = Annotated[int, Field(ge=1), BeforeValidator(_positive)] | None
EnvName = Annotated[str, BeforeValidator(_env_name)]
FilePath = Annotated[str, BeforeValidator(_file_path)]
FileContent = Annotated[str | Base64File, BeforeValidator(_file_content)]
#: ``data.files``: ``{"rel/path": "text" | {"content": base64, "encoding": "base64"}}``.
InputFiles = Annotated[
    dict[FilePath, FileContent],
    Field(max_length=MAX_INPUT_FILES),
    AfterValidator(_no_file_under_a_file),
]


class CodeLimits(BaseModel):
    """``data.limits``: each optional; the defaults and maxima are the server's."""

    model_config = ConfigDict(extra="forbid")

    cpu_time_s: Limit = Field(default=None, description="CPU seconds of every process.")
    memory_mb: Limit = Field(default=None, description="Memory (and swap) in MiB.")
    max_processes: Limit = Field(default=None, description="Processes and threads.")
    max_output_bytes: Limit = Field(default=None, description="Bytes kept of each stream.")
    max_file_size_mb: Limit = Field(default=None, description="Largest file written, MiB.")
    disk_mb: Limit = Field(default=None, description="The work dir's size in MiB.")

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            raise _problem("object", "must be an object")
        unknown = sorted(str(k) for k in data if k not in LIMIT_NAMES)
        if unknown:
            allowed = ", ".join(LIMIT_NAMES)
            raise _problem("unknown_limit", f"unknown limit; allowed: {allowed}", at=unknown[0])
        return data


#: The limits a code job may set in ``data.limits`` (their maxima are the server's).
LIMIT_NAMES = tuple(CodeLimits.model_fields)


def _number_in(low: float, high: float, *, low_open: bool = False) -> BeforeValidator:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _problem("number", "must be a number")
        if not math.isfinite(value):
            raise _problem("number", "must be a number")
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise _problem("number_range", f"must be in {bracket}{low:g}, {high:g}]")
        return float(value)

    return BeforeValidator(check)


class TestCase(BaseModel):
    """One test of a multi-test job: the program's stdin and, optionally, its expected output
    (without one, the test passes when the program runs cleanly)."""

    model_config = ConfigDict(extra="forbid")

    stdin: Annotated[str, _none_is(str), _text(MAX_STDIN_BYTES)] = Field(
        default="", description="Text the program reads on stdin in this test."
    )
    expected_output: Annotated[str, _text(MAX_STDIN_BYTES)] | None = Field(
        default=None, description="What the program must print (compared by 'compare')."
    )
    name: Annotated[str, Field(max_length=200)] | None = Field(
        default=None, description="A label for this test, echoed in its result."
    )


def _tests_size(tests: list[TestCase] | None) -> list[TestCase] | None:
    total = sum(_utf8_len(t.stdin) + _utf8_len(t.expected_output or "") for t in tests or [])
    if total > MAX_TESTS_BYTES:
        raise _problem(
            "too_long", f"stdin and expected outputs total more than {MAX_TESTS_BYTES} bytes"
        )
    return tests


class CodeExecutionData(BaseModel):
    """The ``data`` of a ``code_execution`` job. The server also checks that ``language`` is
    installed, ``limits`` are within its maxima and ``files`` within its body size."""

    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, _text(MAX_CODE_BYTES, nul=False)] = Field(
        description="The program's source code."
    )
    language: Annotated[str, _none_is(lambda: DEFAULT_LANGUAGE)] = Field(
        default=DEFAULT_LANGUAGE, description="Language of the program."
    )
    stdin: Annotated[str, _none_is(str), _text(MAX_STDIN_BYTES)] = Field(
        default="", description="Text the program reads on stdin."
    )
    args: Annotated[
        list[Annotated[str, _short(MAX_ARG_BYTES, "")]], Field(max_length=MAX_ARGS), _none_is(list)
    ] = Field(default_factory=list, description="Command-line arguments.")
    env: Annotated[
        dict[EnvName, Annotated[str, _short(MAX_ENV_VALUE_BYTES, "value ")]],
        Field(max_length=MAX_ENV_VARS),
        _none_is(dict),
    ] = Field(default_factory=dict, description="Environment variables of the program.")
    limits: CodeLimits | None = Field(default=None, description="Resource limits of the run.")
    files: InputFiles | None = Field(
        default=None,
        description='Input files written to the work dir first: {"rel/path": "text" | '
        '{"content": base64, "encoding": "base64"}}.',
    )
    tests: (
        Annotated[
            list[TestCase], Field(min_length=1, max_length=MAX_TESTS), AfterValidator(_tests_size)
        ]
        | None
    ) = Field(
        default=None,
        description="Test cases: the program is compiled once and run once per test, each in a "
        "fresh sandbox, with the test's stdin; the result lists a verdict per test.",
    )
    compare: Compare = Field(
        default="trailing_whitespace",
        description="How outputs are compared with expected_output: exact, trailing_whitespace "
        "(trailing spaces and blank lines around do not count), tokens, float.",
    )
    float_tolerance: Annotated[float, Field(ge=0, le=1), _number_in(0.0, 1.0)] = Field(
        default=DEFAULT_FLOAT_TOLERANCE,
        description="compare=float: absolute or relative difference two numbers may have.",
    )
    stop_on_failure: bool = Field(
        default=False, description="Stop at the first test that is not accepted."
    )


# --- text_generation --------------------------------------------------------------------------


def _non_blank(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise _problem("non_blank", "must be a non-empty string")
    return value


def _int_in(low: int, high: int) -> BeforeValidator:
    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _problem("int_range", f"must be an integer from {low} to {high}")
        return value

    return BeforeValidator(check)


def _stop(value: object) -> object:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _problem("stop", "must be a string or a list of strings")
    if len(items) > MAX_STOP_SEQUENCES:
        raise _problem("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    if any(not s or len(s) > MAX_STOP_CHARS for s in items):
        raise _problem("stop", f"each stop sequence must be 1-{MAX_STOP_CHARS} characters")
    return items


def _messages(value: object) -> object:
    if not isinstance(value, list) or not value:
        raise _problem("messages", "must be a non-empty list of {role, content} objects")
    if len(value) > MAX_MESSAGES:
        raise _problem("messages", f"at most {MAX_MESSAGES} messages")
    return value


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            raise _problem("object", "must be an object with 'role' and 'content'")
        extra = sorted(set(data) - {"role", "content"})
        if extra:
            raise _problem("unknown_keys", f"unknown keys {extra}; allowed: role, content")
        return data


NonBlank = Annotated[str, Field(min_length=1), BeforeValidator(_non_blank)]


class TextGenerationData(BaseModel):
    """The ``data`` of a ``text_generation`` job: ``prompt`` or ``messages``, not both. The
    server also checks that ``model`` is one of its usable models and that ``max_tokens`` fits
    the model's context."""

    model_config = ConfigDict(extra="forbid")

    prompt: NonBlank | None = Field(default=None, description="The prompt to complete.")
    messages: (
        Annotated[
            list[ChatMessage],
            Field(min_length=1, max_length=MAX_MESSAGES),
            BeforeValidator(_messages),
        ]
        | None
    ) = Field(default=None, description="A conversation, instead of a prompt.")
    system: str | None = Field(default=None, description="Optional system instruction.")
    model: NonBlank | None = Field(
        default=None, description="Model name; default: the server's default model."
    )
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT), _int_in(1, MAX_TOKENS_LIMIT)] = (
        Field(default=DEFAULT_MAX_TOKENS, description="Most tokens to generate.")
    )
    temperature: Annotated[float, Field(ge=0, le=2), _number_in(0.0, 2.0)] | None = Field(
        default=None, description="Sampling temperature."
    )
    top_p: Annotated[float, Field(gt=0, le=1), _number_in(0.0, 1.0, low_open=True)] | None = Field(
        default=None, description="Nucleus sampling: the probability mass kept."
    )
    stop: (
        Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES), BeforeValidator(_stop)] | None
    ) = Field(default=None, description="A stop sequence, or a list of them.")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), _int_in(0, MAX_SEED)] | None = Field(
        default=None, description="Sampling seed, for repeatable output."
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TextGenerationData:
        if (self.prompt is None) == (self.messages is None):
            raise _problem(
                "prompt_or_messages",
                "give exactly one of 'prompt' (a string) or 'messages' (a list)",
                at=("prompt", "messages"),
            )
        return self


# --- problems ---------------------------------------------------------------------------------

JobDataProblem = tuple[str, list[dict[str, Any]]]

_MESSAGES = {
    "missing": "required",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "int_type": "must be an integer",
    "float_type": "must be a number",
}


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "too_long" and "max_length" in ctx:
        return f"at most {ctx['max_length']} items, got {ctx.get('actual_length')}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    return _MESSAGES.get(kind) or error["msg"]


def job_data_problem(
    exc: ValidationError, allowed: Iterable[str] = (), prefix: tuple[str, ...] = ()
) -> JobDataProblem:
    """The message and ``details`` naming the first bad field of a job's data (``loc`` starts
    with ``"data"``, then ``prefix``); unknown top-level fields are named all at once,
    with the ``allowed`` ones."""
    errors = exc.errors()
    base: list[str | int] = ["data", *prefix]
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"
                     and len(e["loc"]) == 1)  # fmt: skip
    if unknown:
        where = ".".join(str(p) for p in base)
        msg = f"unknown fields {unknown}; allowed: {', '.join(sorted(allowed))}"
        return f"{where}: {msg}", [{"loc": [*base, k], "msg": "unknown field"} for k in unknown]
    error = errors[0]
    loc = [*base, *(p for p in error["loc"] if p != "[key]")]
    at = (error.get("ctx") or {}).get("at")
    msg = _message(error)
    if isinstance(at, tuple):
        return f"{'.'.join(str(p) for p in loc)}: {msg}", [
            {"loc": [*loc, a], "msg": msg} for a in at
        ]
    if at is not None:
        loc.append(at)
    return f"{'.'.join(str(p) for p in loc)}: {msg}", [{"loc": loc, "msg": msg}]
