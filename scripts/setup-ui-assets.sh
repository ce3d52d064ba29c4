#!/usr/bin/env bash
# Bring the dashboard's front-end libraries (pinned, from npm) into the server package, where
# `deepexec serve` serves them at /ui/static/vendor/: nothing is fetched from a CDN at run time.
# Safe to run again: it does nothing when the pinned versions are already there. Needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."

HTMX=2.0.11
HTMX_SSE=2.2.4
HLJS=11.12.0
VENDOR=src/deepexec_server/ui/static/vendor
STAMP="$VENDOR/.versions"
WANT="htmx.org@$HTMX htmx-ext-sse@$HTMX_SSE @highlightjs/cdn-assets@$HLJS"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing: install Node.js >= 20, then run $0 (the dashboard needs it)" >&2
    exit 1
fi
printf '\033[1m==>\033[0m %s\n' "installing the dashboard's libraries: $WANT"
bash scripts/setup-npm-client.sh htmx.org "$HTMX" ui-htmx
bash scripts/setup-npm-client.sh htmx-ext-sse "$HTMX_SSE" ui-htmx-sse
bash scripts/setup-npm-client.sh @highlightjs/cdn-assets "$HLJS" ui-hljs
mkdir -p "$VENDOR"
cp .tools/ui-htmx/node_modules/htmx.org/dist/htmx.min.js "$VENDOR/htmx.min.js"
cp .tools/ui-htmx-sse/node_modules/htmx-ext-sse/dist/sse.min.js "$VENDOR/htmx-ext-sse.min.js"
HLJS_DIST=.tools/ui-hljs/node_modules/@highlightjs/cdn-assets
cp "$HLJS_DIST/highlight.min.js" "$VENDOR/highlight.min.js"
cp "$HLJS_DIST/styles/github.min.css" "$VENDOR/hljs-light.min.css"
cp "$HLJS_DIST/styles/github-dark.min.css" "$VENDOR/hljs-dark.min.css"
echo "$WANT" > "$STAMP"
