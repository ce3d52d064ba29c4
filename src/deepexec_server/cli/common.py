"""What every ``deepexec`` command shares: its usage error, and the server settings and
logging the server-side commands take from their flags."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, TypeAlias

from ..errors import DeepExecError
from ..settings import Settings

if TYPE_CHECKING:
    #: What ``ArgumentParser.add_subparsers`` returns, to which each command adds its parser.
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


class CliError(DeepExecError):
    """A usage problem; printed as ``deepexec: error: ...`` with exit status 2."""


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        database_url=getattr(args, "database_url", None),
        unsafe_no_sandbox=True if getattr(args, "unsafe_no_sandbox", False) else None,
        auth_enabled=False if getattr(args, "no_auth", False) else None,
        concurrency=_concurrency_arg(getattr(args, "concurrency", None)),
    )


def _concurrency_arg(raw: str | None) -> dict[str, int] | None:
    if not raw:
        return None
    from ..settings import _parse_concurrency

    return {**Settings().concurrency, **_parse_concurrency(raw)}


def configure_logging(level: str) -> None:
    from ..api.connections import AcceptErrorFilter

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("asyncio").addFilter(AcceptErrorFilter())


def server_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        help="sqlite:///path.db or postgresql://... "
        "(default: SQLite in the data dir; env DEEPEXEC_DATABASE_URL)",
    )


def client_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        help="server URL (default: DEEPEXEC_BASE_URL, then the local "
        "credentials file, then http://127.0.0.1:8765)",
    )
    p.add_argument(
        "--api-key", help="API key (default: DEEPEXEC_API_KEY, then the local credentials file)"
    )
