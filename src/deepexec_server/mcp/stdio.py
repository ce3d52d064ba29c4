"""``deepexec mcp``: MCP over stdio for one host process, relaying to a running server.

Credentials are resolved exactly as the SDK does (``DEEPEXEC_BASE_URL``/``DEEPEXEC_API_KEY``,
then the local credentials file ``deepexec serve`` writes). stdout carries only MCP messages;
logs go to stderr.
"""

from __future__ import annotations

import logging
import sys

import anyio
from mcp.server.stdio import stdio_server

from deepexec_sdk import DeepExecAsyncClient
from deepexec_sdk.config import resolve

from ..settings import Settings
from .client_ops import ClientJobOps
from .server import build_server

logger = logging.getLogger("deepexec_server.mcp")


async def serve_stdio() -> None:
    """Serve one MCP connection on this process's stdin/stdout until stdin closes."""
    config = resolve(None, None)
    logger.info("MCP over stdio; jobs run on %s (from %s)", config.base_url, config.source)
    if config.api_key is None:
        logger.warning(
            "no API key: set DEEPEXEC_API_KEY or run `deepexec serve` as this user so it "
            "writes the credentials file"
        )
    async with DeepExecAsyncClient(base_url=config.base_url, api_key=config.api_key) as client:
        ops = ClientJobOps(client)
        server = build_server(lambda ctx: ops)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


def run_stdio(settings: Settings) -> int:
    """Serve MCP over stdio; the exit status of ``deepexec mcp``."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        # One line per REST call would bury the host's view of this server's log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        anyio.run(serve_stdio)
    except KeyboardInterrupt:
        return 130
    return 0
