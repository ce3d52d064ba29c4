"""The job data models: what the clients send fits them, and a bad value is named by field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from deepexec_sdk import CodeExecutionData, TextGenerationData
from deepexec_sdk._requests import code_execution_data, text_generation_data
from deepexec_sdk.job_data import MAX_TOKENS_LIMIT, job_data_problem


def test_what_the_clients_build_fits_the_models() -> None:
    code = code_execution_data(
        "x", "bash", stdin="in", args=("a",), files={"d/f.txt": "t"}, env={"A": "1"}
    )
    assert CodeExecutionData.model_validate(code).model_dump(exclude_unset=True) == code
    text = text_generation_data(
        "hi", "m", 5, temperature=0, top_p=1, stop=("\n",), seed=1, system="s"
    )
    parsed = TextGenerationData.model_validate(text)
    assert parsed.model_dump(exclude_unset=True) == text
    assert parsed.temperature == 0.0 and isinstance(parsed.temperature, float)


def test_defaults_are_the_servers() -> None:
    code = CodeExecutionData.model_validate({"code": "1", "language": None, "args": None})
    assert (code.language, code.stdin, code.args, code.env) == ("python", "", [], {})
    assert code.limits is None and code.files is None
    assert TextGenerationData.model_validate({"prompt": "x"}).max_tokens == 256


def problem(model: type[Any], data: object) -> tuple[str, list[dict[str, Any]]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return job_data_problem(info.value, model.model_fields)


@pytest.mark.parametrize(
    ("model", "data", "message", "locs"),
    [
        (CodeExecutionData, {"code": "a\x00"}, "data.code: contains a NUL character", [["code"]]),
        (
            CodeExecutionData,
            {"code": "", "files": {"a": {"content": 1, "encoding": "base64"}}},
            "data.files.a.content: must be a base64 string",
            [["files", "a", "content"]],
        ),
        (
            CodeExecutionData,
            {"code": "", "env": {"A": "x\x00"}},
            "data.env.A: value must be at most 32768 bytes, without NUL",
            [["env", "A"]],
        ),
        (
            TextGenerationData,
            {"prompt": "x", "max_tokens": MAX_TOKENS_LIMIT + 1},
            f"data.max_tokens: must be an integer from 1 to {MAX_TOKENS_LIMIT}",
            [["max_tokens"]],
        ),
        (
            TextGenerationData,
            {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
            "data: give exactly one of 'prompt' (a string) or 'messages' (a list)",
            [["prompt"], ["messages"]],
        ),
        (TextGenerationData, [], "data: must be an object", [[]]),
    ],
)
def test_a_problem_names_its_field(
    model: type[Any], data: object, message: str, locs: list[list[Any]]
) -> None:
    got, details = problem(model, data)
    assert got == message
    assert [d["loc"] for d in details] == [["data", *loc] for loc in locs]


def test_schemas_carry_the_fixed_bounds() -> None:
    text = TextGenerationData.model_json_schema()["properties"]
    assert text["max_tokens"]["maximum"] == MAX_TOKENS_LIMIT
    assert text["max_tokens"]["minimum"] == 1
    code = CodeExecutionData.model_json_schema()
    assert code["required"] == ["code"]
    assert code["properties"]["args"]["maxItems"] == 100
    assert code["properties"]["env"]["maxProperties"] == 64
