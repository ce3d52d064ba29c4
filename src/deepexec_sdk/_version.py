"""The SDK's version, sent as ``User-Agent: deepexec-sdk/<version>``."""

from __future__ import annotations

from importlib import metadata


def _installed_version() -> str:
    # One source of truth: the distribution's metadata (pyproject.toml). A source tree that was
    # never installed still imports, with a version that says so.
    try:
        return metadata.version("deepexec")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()
