#!/usr/bin/env bash
# Brings up a local swarmnet demo cluster: bash scripts/demo.sh [args]
# Installs what is missing, builds (debug), then hands over to
# `swarmnet demo up`, which takes the extra arguments. Stop it with
# `target/debug/swarmnet demo down`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/demo.sh: must run as root: the demo creates network namespaces" \
        "and loads eBPF programs" >&2
    exit 1
fi

bash scripts/setup.sh
bash scripts/images.sh
bash scripts/registry.sh seed /var/cache/swarmnet/registry
cargo build
exec target/debug/swarmnet demo up "$@"
