"""The ``deepexec`` command: the server-side commands in ``server``, the client-side ones
(through the SDK) in ``client``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from deepexec_sdk import DeepExecError

from ..settings import SettingsError
from . import client, server, tenants, webhooks
from .common import CliError
from .server import listen_socket

__all__ = ["CliError", "build_parser", "listen_socket", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepexec",
        description="DeepExec: sandboxed code execution and text generation as jobs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.add_run_parsers(sub)
    client.add_parsers(sub)
    webhooks.add_parsers(sub)
    server.add_admin_parsers(sub)
    tenants.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CliError, SettingsError) as exc:
        print(f"deepexec: error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"deepexec: {exc}", file=sys.stderr)
        return 124
    except DeepExecError as exc:
        print(f"deepexec: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
