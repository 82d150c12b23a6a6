#!/usr/bin/env bash
# The project's test command: bash scripts/test.sh [extra cargo test args]
#
# Installs what is missing (scripts/setup.sh), then checks formatting, builds
# the workspace in debug (the cluster tests run target/debug/swarmnet), runs
# clippy with warnings denied and every test binary. Must run as root: the
# privileged tests make network namespaces and load eBPF programs, and fail
# (never skip) without it. Extra arguments go to `cargo test`, e.g.
#   bash scripts/test.sh -p swarmnet-dataplane -- --nocapture
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/test.sh: must run as root: the tests create network namespaces" \
        "and load eBPF programs (try: sudo -E bash scripts/test.sh)" >&2
    exit 1
fi

START=$SECONDS
section() {
    printf '\n==== %s ==== (%d s elapsed)\n' "$*" "$((SECONDS - START))"
}

section "setup: scripts/setup.sh"
bash scripts/setup.sh

section "test images: scripts/images.sh (cached after the first build)"
bash scripts/images.sh

section "registry storage: scripts/registry.sh seed"
bash scripts/registry.sh seed "${SWARMNET_REGISTRY_DATA:-/var/cache/swarmnet/registry}"

section "format: cargo fmt --all --check"
cargo fmt --all --check

section "build: cargo build --workspace"
cargo build --workspace

section "lint: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "test: cargo test --workspace $*"
cargo test --workspace "$@"

section "all checks passed"
