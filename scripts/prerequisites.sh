#!/usr/bin/env bash
# Installs what Quiver needs to build and run on Debian, skipping what is already there.
# Sourced by quickstart.sh and test.sh; safe to run on its own.
set -euo pipefail

quiver_log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

quiver_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

quiver_ensure_prerequisites() {
    # command → Debian package that provides it
    local -A wanted=(
        [etcd]=etcd-server
        [etcdctl]=etcd-client
        [protoc]=protobuf-compiler
        [cc]=build-essential
        [pkg-config]=pkg-config
        [curl]=curl
    )
    local missing=()
    local command
    for command in "${!wanted[@]}"; do
        command -v "$command" >/dev/null 2>&1 || missing+=("${wanted[$command]}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        quiver_log "installing Debian packages: ${missing[*]}"
        quiver_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        quiver_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # etcd-server's package starts a system etcd on 127.0.0.1:2379; Quiver's scripts and
    # tests run their own on other ports, so it is left alone.
    if ! command -v cargo >/dev/null 2>&1; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            echo "Rust is missing: install it with rustup (https://rustup.rs), then run this again." >&2
            return 1
        fi
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    quiver_ensure_prerequisites
fi
