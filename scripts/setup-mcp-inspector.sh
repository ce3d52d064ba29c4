#!/usr/bin/env bash
# Install the MCP Inspector CLI (an independent MCP client, used by tests/test_mcp_inspector.py)
# into .tools/inspector, from npm. Safe to run again: it does nothing when the pinned version is
# already there. Needs Node.js >= 20 and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${MCP_INSPECTOR_VERSION:-2.12.0}"
PREFIX=.tools/inspector
BIN="$PREFIX/node_modules/.bin/mcp-inspector"
MANIFEST="$PREFIX/node_modules/@modelcontextprotocol/inspector/package.json"

if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing: install Node.js >= 20 to get the MCP Inspector (only the tests need it)" >&2
    exit 1
fi
if [ -x "$BIN" ] && grep -q "\"version\": \"$VERSION\"" "$MANIFEST" 2>/dev/null; then
    exit 0
fi
printf '\033[1m==>\033[0m %s\n' "installing @modelcontextprotocol/inspector@$VERSION into $PREFIX"
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/inspector@$VERSION"
test -x "$BIN"
