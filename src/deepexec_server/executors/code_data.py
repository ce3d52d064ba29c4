"""A ``code_execution`` job's data: checked and normalised before the job is stored (pure).

Its fields, bounds and messages are ``deepexec_sdk.job_data.CodeExecutionData``; this module
adds what depends on the host: the language is known and installed, the limits within the
server's maxima, the files within its body size and apart from the program's own file, and no
variable the sandbox sets itself.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from deepexec_sdk.job_data import (
    MAX_INPUT_FILES,
    Base64File,
    CodeExecutionData,
    CodeLimits,
    InputFiles,
)

from ..settings import Settings
from . import languages as langs
from .job_data import bad, parse_data
from .limits import JobLimits, LimitPolicy
from .sandbox import env_name_problem

__all__ = [
    "MAX_INPUT_FILES",
    "encode_files",
    "validate_code_data",
    "validate_files",
    "validate_limits",
]


class _Files(BaseModel):
    """``data.files`` on its own, as ``CodeExecutionData`` declares it."""

    files: InputFiles | None = None


def _limits(parsed: CodeLimits | None, policy: LimitPolicy) -> JobLimits:
    if parsed is None:
        return policy.defaults
    values = parsed.model_dump(exclude_none=True)
    for key, value in values.items():
        if value > policy.maxima[key]:
            raise bad(["limits", key], f"{key} {value} exceeds the maximum {policy.maxima[key]}")
    return dataclasses.replace(policy.defaults, **values)


def validate_limits(raw: object, policy: LimitPolicy) -> JobLimits:
    """``data.limits`` → effective limits; ``JobDataError`` names a bad or too-large one."""
    if raw is None:
        return policy.defaults
    return _limits(parse_data(CodeLimits, raw, ("limits",)), policy)


def _decode(files: Mapping[str, str | Base64File] | None, max_total: int) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    total = 0
    for name, value in (files or {}).items():
        if isinstance(value, str):
            content = value.encode("utf-8", errors="surrogatepass")
        else:
            content = base64.b64decode(value.content, validate=True)
        total += len(content)
        if total > max_total:
            raise bad("files", f"files total more than {max_total} bytes")
        out[name] = content
    return out


def validate_files(raw: object, max_total: int) -> dict[str, bytes]:
    """``data.files`` → {relative path: content}; ``JobDataError`` names the bad entry."""
    return _decode(parse_data(_Files, {"files": raw}).files, max_total)


def encode_files(files: Mapping[str, bytes]) -> dict[str, Any]:
    """Files as JSON values: text when UTF-8, else ``{"content": base64, "encoding"}``."""
    out: dict[str, Any] = {}
    for name, content in files.items():
        try:
            out[name] = content.decode("utf-8")
        except UnicodeDecodeError:
            out[name] = {"content": base64.b64encode(content).decode(), "encoding": "base64"}
    return out


def _language(raw: str, available: Mapping[str, object] | None) -> langs.Language:
    language = langs.resolve_language(raw)
    supported = langs.supported_names()
    if language is None:
        raise bad(
            "language",
            f"unsupported language {raw!r}; supported: {', '.join(supported)} "
            f"(aliases: {', '.join(n for n in langs.all_names() if n not in supported)})",
        )
    if available is not None and language.name not in available:
        raise bad(
            "language",
            f"{language.name} is not installed on this server; available: "
            f"{', '.join(n for n in supported if n in available) or 'none'}",
        )
    return language


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
    parsed = parse_data(CodeExecutionData, data)
    language = _language(parsed.language, available)
    for name in parsed.env:
        problem = env_name_problem(name)
        if problem:
            raise bad(["env", name], problem)
    limits = _limits(parsed.limits, policy or LimitPolicy.from_settings(Settings()))
    files = _decode(parsed.files, max_files_bytes)
    if language.filename in files:
        raise bad(["files", language.filename], "is the program's own file name")
    normal: dict[str, Any] = {
        "code": parsed.code,
        "language": language.name,
        "stdin": parsed.stdin,
        "args": parsed.args,
        "env": parsed.env,
        "limits": limits.to_dict(),
        "files": encode_files(files),
    }
    if parsed.tests is not None:
        normal.update(
            tests=[t.model_dump() for t in parsed.tests],
            compare=parsed.compare,
            float_tolerance=parsed.float_tolerance,
            stop_on_failure=parsed.stop_on_failure,
        )
    return normal
