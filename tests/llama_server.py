"""llama.cpp's own HTTP server (OpenAI-compatible, through xllamacpp) on 127.0.0.1 with an API
key, serving the embedded model: the upstream an ``openai`` catalog entry points at."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepexec_server.executors.models import embedded_gguf_path


@dataclasses.dataclass
class OpenAIServer:
    url: str
    key: str

    def catalog(self, path: Path, name: str = "local-llama") -> Path:
        """A models file whose one entry, ``name``, is this server (its key in
        ``LOCAL_LLAMA_KEY``)."""
        entry = {
            "name": name,
            "backend": "openai",
            "base_url": f"{self.url}/v1",
            "model": "smollm2",
            "api_key_env": "LOCAL_LLAMA_KEY",
        }
        path.write_text(json.dumps({"models": [entry]}), encoding="utf-8")
        return path


@pytest.fixture(scope="module")
def openai_server() -> Iterator[OpenAIServer]:
    import xllamacpp as xlc

    path = embedded_gguf_path()
    assert path is not None
    params = xlc.CommonParams()
    params.model.path = path
    params.n_ctx = 4096
    params.n_parallel = 2
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    params.verbosity = 0
    params.ui = False
    key = secrets.token_hex(16)
    params.api_keys = [key]
    server = xlc.Server(params)
    yield OpenAIServer(server.listening_address, key)
    del server
