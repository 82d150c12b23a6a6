#!/usr/bin/env bash
# Installs what swarmnet needs to build and test on a fresh machine of the
# project's kind (Debian 12, root): Debian packages, the nightly rust-src and
# bpf-linker that build the eBPF programs, and the Python docker SDK that the
# tests drive the Docker-compatible API with. Idempotent: every step checks
# before it installs, so a second run takes a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START=$SECONDS

BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22
LLVM_PREFIX=/usr/lib/llvm-$LLVM_MAJOR
APT_PACKAGES=(
    "llvm-$LLVM_MAJOR-dev" "libclang-$LLVM_MAJOR-dev" libzstd-dev
    iproute2 tshark bpftool tcpdump ethtool iputils-ping netcat-openbsd
    dnsutils curl runc python3-pip iperf3
)

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (installs Debian packages)"
fi

export PATH="$HOME/.cargo/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_install() {
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@"
}

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# --- Debian packages ---------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    # tshark's wireshark-common asks whether non-root users may capture.
    echo "wireshark-common wireshark-common/install-setuid boolean false" |
        debconf-set-selections
    apt_install "${missing[@]}"
else
    log "Debian packages: all ${#APT_PACKAGES[@]} present"
fi

# --- docker CLI (the client only; the tests talk to swarmnet, not dockerd) ---
if command -v docker >/dev/null 2>&1; then
    log "docker CLI: $(command -v docker)"
else
    # Debian's docker.io ships dockerd too; keep its postinst from starting it.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt_install docker.io
    rm -f "$policy"
    trap - EXIT
    command -v docker >/dev/null 2>&1 || die "docker CLI still missing after installing docker.io"
fi

# --- Rust toolchains ---------------------------------------------------------
command -v rustup >/dev/null 2>&1 || die "rustup not found (expected in ~/.cargo/bin)"
pinned="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")"
if ! rustup toolchain list | grep -q "^$pinned-"; then
    log "rustup toolchain install $pinned (rust-toolchain.toml)"
    rustup toolchain install "$pinned" --profile minimal -c rustfmt -c clippy
fi
if ! rustup toolchain list | grep -q '^nightly-'; then
    log "rustup toolchain install nightly (builds the eBPF programs)"
    rustup toolchain install nightly --profile minimal
fi
if rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "nightly rust-src: present"
else
    log "rustup component add rust-src --toolchain nightly"
    rustup component add rust-src --toolchain nightly
fi

# --- bpf-linker (links the eBPF crate; must match rustc's LLVM major) --------
have_linker="$(bpf-linker --version 2>/dev/null || true)"
if [[ $have_linker == *" $BPF_LINKER_VERSION"* ]]; then
    log "bpf-linker: $have_linker"
else
    log "cargo install bpf-linker $BPF_LINKER_VERSION (LLVM $LLVM_MAJOR; about a minute)"
    # Its build script finds LLVM through LLVM_PREFIX; without it, it picks
    # Debian's default llvm-config (LLVM 14) and fails to link -lLLVM.
    (cd / && LLVM_PREFIX=$LLVM_PREFIX cargo install bpf-linker \
        --version "$BPF_LINKER_VERSION" --no-default-features \
        --features "llvm-$LLVM_MAJOR")
    bpf-linker --version
fi

# --- Python docker SDK (tests drive the Docker Engine API with it) -----------
python=python3
command -v "$python" >/dev/null 2>&1 || die "python3 not found"
if "$python" -c 'import docker' 2>/dev/null; then
    log "python docker SDK: present for $(command -v "$python")"
else
    log "pip install docker for $(command -v "$python")"
    pip_args=(-m pip install --quiet --disable-pip-version-check docker)
    # Debian's own python3 refuses (PEP 668); pyenv's accepts the plain form.
    if ! "$python" "${pip_args[@]}"; then
        "$python" "${pip_args[@]}" --break-system-packages
    fi
    "$python" -c 'import docker' || die "python docker SDK still not importable"
fi

log "done in $((SECONDS - START)) s"
