"""Every exception the server defines is under one root, ``errors.DeepExecError``, except"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import deepexec_server
from deepexec_server.errors import DeepExecError, ServiceError
from deepexec_server.executors.llm_backends import BackendError
from deepexec_server.executors.models import CatalogError
from deepexec_server.mcp.jobs import JobOpsError
from deepexec_server.settings import SettingsError


def _server_exceptions() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for info in pkgutil.walk_packages(deepexec_server.__path__, "deepexec_server."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.add(obj)
    return found


def test_every_server_exception_is_under_the_root() -> None:
    outside = {
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _server_exceptions()
        if not issubclass(cls, DeepExecError)
    }
    assert not outside, sorted(outside)


def test_the_parts_errors_keep_their_old_bases() -> None:
    assert issubclass(ServiceError, DeepExecError)
    for cls in (SettingsError, CatalogError):
        assert issubclass(cls, DeepExecError) and issubclass(cls, ValueError)
    assert issubclass(BackendError, DeepExecError) and issubclass(JobOpsError, DeepExecError)
