#!/usr/bin/env bash
# Prepare this host for DeepExec's code_execution sandbox (run as root; safe to run again):
#   - install bubblewrap (bwrap) if it is missing;
#   - install libseccomp2 (the library pyseccomp loads for the sandbox's seccomp filter);
#   - install the compiled languages' toolchains that are missing from /usr/bin (gcc, g++,
#     javac, rustc, go) from Debian's packages; DEEPEXEC_SKIP_TOOLCHAINS=1 skips this step
#     (jobs in those languages are then refused with the list of what the host runs);
#   - create the unprivileged system user `deepexec-sandbox` (no home, no login shell) that
#     sandboxed programs run as on the host.
# It only does what is missing and says what it did.
set -euo pipefail

SANDBOX_USER="${DEEPEXEC_SANDBOX_USER:-deepexec-sandbox}"

say() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup-sandbox.sh must run as root (it installs a package and creates a system user)" >&2
    exit 1
fi

if command -v bwrap >/dev/null 2>&1; then
    say "bubblewrap present: $(bwrap --version)"
else
    say "installing bubblewrap"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y bubblewrap; then
        say "install failed; refreshing the package index and retrying"
        apt-get update
        apt-get install -y bubblewrap
    fi
    say "installed: $(bwrap --version)"
fi

if ldconfig -p 2>/dev/null | grep 'libseccomp\.so\.2' >/dev/null; then
    say "libseccomp2 present"
else
    say "installing libseccomp2"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y libseccomp2 || { apt-get update && apt-get install -y libseccomp2; }
fi

# Toolchains are looked for in system directories only (a rustup or pyenv copy under /root is
# unreadable to the sandbox uid), so check /usr/bin, not PATH.
if [ "${DEEPEXEC_SKIP_TOOLCHAINS:-0}" = 1 ]; then
    say "toolchains: skipped (DEEPEXEC_SKIP_TOOLCHAINS=1)"
else
    missing=()
    for pair in gcc:gcc g++:g++ javac:default-jdk-headless rustc:rustc go:golang-go; do
        [ -x "/usr/bin/${pair%%:*}" ] || missing+=("${pair#*:}")
    done
    if [ "${#missing[@]}" = 0 ]; then
        say "toolchains present: gcc g++ javac rustc go"
    else
        say "installing toolchains: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" \
            || { apt-get update && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
    fi
fi

if getent passwd "$SANDBOX_USER" >/dev/null; then
    say "user $SANDBOX_USER present (uid $(id -u "$SANDBOX_USER"))"
else
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    # Reuse a group of the same name left behind by an earlier, removed user.
    if getent group "$SANDBOX_USER" >/dev/null; then group_opt=(--gid "$SANDBOX_USER")
    else group_opt=(--user-group); fi
    useradd --system "${group_opt[@]}" --no-create-home --home-dir /nonexistent \
        --shell "$nologin" "$SANDBOX_USER"
    say "created system user $SANDBOX_USER (uid $(id -u "$SANDBOX_USER"), no home, no login)"
fi
