"""MCP sessions over Streamable HTTP against the real server: capped per API key, with a clear
429 over the cap, and closed once idle."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serverproc import ServerProcess

PER_KEY = 3
IDLE_SECONDS = 3


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("home"),
        env={
            "DEEPEXEC_MCP_SESSIONS_PER_KEY": str(PER_KEY),
            "DEEPEXEC_MCP_SESSION_IDLE_SECONDS": str(IDLE_SECONDS),
        },
    ).start()
    yield srv
    srv.stop()


def initialize(http: httpx.Client) -> httpx.Response:
    return http.post(
        "/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "session-test", "version": "0"},
            },
        },
    )


def ping(http: httpx.Client, sid: str) -> httpx.Response:
    return http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
        headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"},
    )


def mcp_client(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"},
        timeout=30,
    )


def test_sessions_are_capped_per_key_and_idle_ones_expire(mcp_server: ServerProcess) -> None:
    other_key = mcp_server.new_tenant_key("other")
    with (
        mcp_client(mcp_server, mcp_server.api_key) as http,
        mcp_client(mcp_server, other_key) as other,
    ):
        sids = []
        for _ in range(PER_KEY):
            r = initialize(http)
            assert r.status_code == 200, r.text
            sids.append(r.headers["mcp-session-id"])

        over = initialize(http)
        assert over.status_code == 429, over.text
        error = over.json()["error"]
        assert "mcp_sessions_per_key" in error["message"] and str(PER_KEY) in error["message"]
        assert over.json()["id"] is None
        assert 1 <= int(over.headers["retry-after"]) <= IDLE_SECONDS

        # The cap is per key: another key still opens sessions.
        assert initialize(other).status_code == 200
        # Sessions in use stay open.
        assert ping(http, sids[0]).status_code == 200

        # Once idle for the timeout, sessions are closed: their ids are gone, and room is back.
        # (A probe would itself be activity: look once, after the timeout and a margin.)
        time.sleep(IDLE_SECONDS + 2)
        assert ping(http, sids[1]).status_code == 404
        assert ping(http, sids[0]).status_code == 404
        assert initialize(http).status_code == 200
