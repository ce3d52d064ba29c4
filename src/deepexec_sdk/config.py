"""Where the SDK finds its server and key: arguments, then environment, then the local
credentials file that ``deepexec serve`` writes (user-only permissions).

The file lives at ``$DEEPEXEC_CREDENTIALS_FILE``, else
``$XDG_CONFIG_HOME/deepexec/credentials.json`` (``~/.config/deepexec/credentials.json``), and
holds ``{"base_url": ..., "api_key": ...}``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

DEFAULT_BASE_URL = "http://127.0.0.1:8765"
ENV_BASE_URL = "DEEPEXEC_BASE_URL"
ENV_API_KEY = "DEEPEXEC_API_KEY"
ENV_CREDENTIALS = "DEEPEXEC_CREDENTIALS_FILE"

logger = logging.getLogger("deepexec_sdk")


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    raw = env.get(var)
    return Path(raw) if raw else Path.home() / fallback


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    explicit = env.get(ENV_CREDENTIALS)
    if explicit:
        return Path(explicit).expanduser()
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "deepexec" / "credentials.json"


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    explicit = env.get("DEEPEXEC_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return _xdg(env, "XDG_DATA_HOME", ".local/share") / "deepexec"


@dataclasses.dataclass(frozen=True)
class ResolvedConfig:
    base_url: str
    api_key: str | None
    #: Where each value came from, for error messages ("argument", "environment", file path).
    source: str


def read_credentials_file(path: Path) -> dict[str, str]:
    """The file's ``base_url`` and ``api_key``; empty if it is missing or unreadable.

    A file that other users can read is still used (it is ours), but we warn: the key in it
    grants access to every job of its tenant.
    """
    try:
        st = path.stat()
        raw = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("credentials file %s is readable by other users; chmod 600 it", path)
    try:
        data = json.loads(raw)
    except ValueError:
        logger.warning("ignoring credentials file %s: not valid JSON", path)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in ("base_url", "api_key") and isinstance(v, str)}


def resolve(
    base_url: str | None, api_key: str | None, env: Mapping[str, str] | None = None
) -> ResolvedConfig:
    """Apply the precedence: arguments > environment > credentials file > defaults."""
    env = os.environ if env is None else env
    source = "argument"
    url = base_url
    key = api_key
    if url is None and env.get(ENV_BASE_URL):
        url, source = env[ENV_BASE_URL], "environment"
    if key is None and env.get(ENV_API_KEY):
        key = env[ENV_API_KEY]
        source = "environment" if url is None or source == "environment" else source
    if url is None or key is None:
        path = credentials_path(env)
        creds = read_credentials_file(path)
        if url is None and key is None and creds:
            source = str(path)
        if url is None and "base_url" in creds:
            url = creds["base_url"]
        if key is None and "api_key" in creds:
            key = creds["api_key"]
    return ResolvedConfig(
        base_url=(url or DEFAULT_BASE_URL).rstrip("/"), api_key=key, source=source
    )


def write_credentials_file(path: Path, base_url: str, api_key: str) -> None:
    """Write the file atomically with mode 0600 (directory 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"base_url": base_url, "api_key": api_key}, fh)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
