"""A ``code_execution`` job's data: checked and normalised before the job is stored (pure)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ..settings import CODE_LIMIT_NAMES, Settings
from . import languages as langs
from .base import JobDataError
from .limits import JobLimits, LimitPolicy
from .sandbox import env_name_problem

MAX_CODE_BYTES = 1024 * 1024
MAX_STDIN_BYTES = 1024 * 1024
MAX_ARGS = 100
MAX_ARG_BYTES = 64 * 1024
MAX_ENV_VARS = 64
MAX_ENV_VALUE_BYTES = 32 * 1024
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ALLOWED_KEYS = frozenset({"code", "language", "stdin", "args", "env", "limits", "files"})

#: Input files: how many, and how long a path.
MAX_INPUT_FILES = 100
MAX_FILE_PATH_CHARS = 255


# --- validation (pure) ------------------------------------------------------------------------


def _bad(field: str | list[str | int], msg: str) -> JobDataError:
    loc = ["data", *(field if isinstance(field, list) else [field])]
    where = ".".join(str(p) for p in loc)
    return JobDataError(f"{where}: {msg}", details=[{"loc": loc, "msg": msg}])


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def validate_limits(raw: object, policy: LimitPolicy) -> JobLimits:
    """``data.limits`` → effective limits; ``JobDataError`` names a bad or too-large one."""
    if raw is None:
        return policy.defaults
    if not isinstance(raw, Mapping):
        raise _bad("limits", "must be an object")
    unknown = sorted(str(k) for k in raw if k not in CODE_LIMIT_NAMES)
    if unknown:
        raise _bad(["limits", unknown[0]], f"unknown limit; allowed: {', '.join(CODE_LIMIT_NAMES)}")
    values: dict[str, int] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(["limits", key], "must be a positive integer")
        if value > policy.maxima[key]:
            raise _bad(["limits", key], f"{key} {value} exceeds the maximum {policy.maxima[key]}")
        values[key] = value
    return dataclasses.replace(policy.defaults, **values)


def _file_path_problem(name: str) -> str | None:
    if not name or len(name) > MAX_FILE_PATH_CHARS:
        return f"file name must be 1-{MAX_FILE_PATH_CHARS} characters"
    if "\x00" in name or "\\" in name:
        return "file name may not contain NUL or backslash"
    if name.startswith("/"):
        return "file name must be a relative path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "file name may not contain '..', '.' or empty path segments"
    return None


def validate_files(raw: object, max_total: int) -> dict[str, bytes]:
    """``data.files`` → {relative path: content}; ``JobDataError`` names the bad entry."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _bad("files", "must be an object of path: content")
    if len(raw) > MAX_INPUT_FILES:
        raise _bad("files", f"at most {MAX_INPUT_FILES} files, got {len(raw)}")
    out: dict[str, bytes] = {}
    total = 0
    for name, value in raw.items():
        if not isinstance(name, str):
            raise _bad(["files", str(name)], "file name must be a string")
        problem = _file_path_problem(name)
        if problem:
            raise _bad(["files", name], problem)
        if isinstance(value, str):
            content = value.encode("utf-8", errors="surrogatepass")
        elif isinstance(value, Mapping) and value.get("encoding") == "base64":
            text = value.get("content")
            if not isinstance(text, str):
                raise _bad(["files", name, "content"], "must be a base64 string")
            try:
                content = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise _bad(["files", name, "content"], "is not valid base64") from None
        else:
            raise _bad(
                ["files", name], 'must be a string or {"content": ..., "encoding": "base64"}'
            )
        total += len(content)
        if total > max_total:
            raise _bad("files", f"files total more than {max_total} bytes")
        out[name] = content
    for name in out:
        # "a" and "a/b" cannot both be files.
        for i in range(1, name.count("/") + 1):
            if name.rsplit("/", i)[0] in out:
                raise _bad(["files", name], "a parent of this path is also a file")
    return out


def encode_files(files: Mapping[str, bytes]) -> dict[str, Any]:
    """Files as JSON values: text when UTF-8, else ``{"content": base64, "encoding"}``."""
    out: dict[str, Any] = {}
    for name, content in files.items():
        try:
            out[name] = content.decode("utf-8")
        except UnicodeDecodeError:
            out[name] = {"content": base64.b64encode(content).decode(), "encoding": "base64"}
    return out


def validate_code_data(
    data: Mapping[str, Any],
    available: Mapping[str, object] | None = None,
    *,
    policy: LimitPolicy | None = None,
    max_files_bytes: int = 2 * 1024 * 1024,
) -> dict[str, Any]:
    """Check a code job's ``data`` and return it normalised (canonical language name, every
    field present). ``available``: languages this host can run, if known.

    Raises ``JobDataError`` naming the first bad field.
    """
    if not isinstance(data, Mapping):
        raise JobDataError(
            "data must be an object", details=[{"loc": ["data"], "msg": "not an object"}]
        )
    unknown = sorted(str(k) for k in data if k not in ALLOWED_KEYS)
    if unknown:
        raise _bad(
            unknown[0],
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(ALLOWED_KEYS))}",
        )

    code = data.get("code")
    if not isinstance(code, str):
        raise _bad("code", "required, a string" if code is None else "must be a string")
    if _utf8_len(code) > MAX_CODE_BYTES:
        raise _bad("code", f"longer than {MAX_CODE_BYTES} bytes")
    if "\x00" in code:
        raise _bad("code", "contains a NUL character")

    raw_lang = data.get("language", "python")
    if raw_lang is None:
        raw_lang = "python"
    if not isinstance(raw_lang, str):
        raise _bad("language", "must be a string")
    language = langs.resolve_language(raw_lang)
    supported = langs.supported_names()
    if language is None:
        raise _bad(
            "language",
            f"unsupported language {raw_lang!r}; supported: {', '.join(supported)} "
            f"(aliases: {', '.join(n for n in langs.all_names() if n not in supported)})",
        )
    if available is not None and language.name not in available:
        raise _bad(
            "language",
            f"{language.name} is not installed on this server; available: "
            f"{', '.join(n for n in supported if n in available) or 'none'}",
        )

    stdin = data.get("stdin", "")
    if stdin is None:
        stdin = ""
    if not isinstance(stdin, str):
        raise _bad("stdin", "must be a string")
    if _utf8_len(stdin) > MAX_STDIN_BYTES:
        raise _bad("stdin", f"longer than {MAX_STDIN_BYTES} bytes")

    args = data.get("args", [])
    if args is None:
        args = []
    if not isinstance(args, list):
        raise _bad("args", "must be a list of strings")
    if len(args) > MAX_ARGS:
        raise _bad("args", f"at most {MAX_ARGS} arguments, got {len(args)}")
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise _bad(["args", i], "must be a string")
        if "\x00" in arg or _utf8_len(arg) > MAX_ARG_BYTES:
            raise _bad(["args", i], f"must be at most {MAX_ARG_BYTES} bytes, without NUL")

    env = data.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, Mapping):
        raise _bad("env", "must be an object of string values")
    if len(env) > MAX_ENV_VARS:
        raise _bad("env", f"at most {MAX_ENV_VARS} variables, got {len(env)}")
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise _bad(["env", str(name)], "name must match ^[A-Za-z_][A-Za-z0-9_]*$")
        problem = env_name_problem(name)
        if problem:
            raise _bad(["env", name], problem)
        if not isinstance(value, str):
            raise _bad(["env", name], "value must be a string")
        if "\x00" in value or _utf8_len(value) > MAX_ENV_VALUE_BYTES:
            raise _bad(
                ["env", name], f"value must be at most {MAX_ENV_VALUE_BYTES} bytes, without NUL"
            )

    limits = validate_limits(data.get("limits"), policy or LimitPolicy.from_settings(Settings()))
    files = validate_files(data.get("files"), max_files_bytes)
    if language.filename in files:
        raise _bad(["files", language.filename], "is the program's own file name")
    return {
        "code": code,
        "language": language.name,
        "stdin": stdin,
        "args": list(args),
        "env": dict(env),
        "limits": limits.to_dict(),
        "files": encode_files(files),
    }
