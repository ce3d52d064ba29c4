#!/usr/bin/env bash
# Install one pinned npm package into .tools/<dir>: the independent clients the tests drive
# DeepExec with (the MCP Inspector CLI, the Piston API's piston-client). Safe to run again: it
# does nothing when the pinned version is already there. Needs Node.js >= 20 and npm.
#
#   scripts/setup-npm-client.sh <package> <version> <dir>
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="$1"
VERSION="$2"
PREFIX=".tools/$3"
MANIFEST="$PREFIX/node_modules/$PACKAGE/package.json"

if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing: install Node.js >= 20 to get $PACKAGE (only the tests need it)" >&2
    exit 1
fi
if grep -q "\"version\": \"$VERSION\"" "$MANIFEST" 2>/dev/null; then
    exit 0
fi
printf '\033[1m==>\033[0m %s\n' "installing $PACKAGE@$VERSION into $PREFIX"
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "$PACKAGE@$VERSION"
test -f "$MANIFEST"
