#!/usr/bin/env bash
# A local Docker registry (Debian's docker-registry, distribution 2.8) serving
# the images scripts/images.sh built: plain HTTP, no auth, filesystem storage.
#
#   bash scripts/registry.sh start ADDR DIR   serve on ADDR (e.g. 127.0.0.1:5000),
#                                             storing in DIR/data; DIR/registry.pid,
#                                             DIR/registry.log, DIR/config.yml
#   bash scripts/registry.sh stop DIR         stop the registry started with DIR
#   bash scripts/registry.sh status DIR       is it running? (exit 0 if so)
#   bash scripts/registry.sh seed DIR [CACHE]
#                                             make DIR a registry storage root
#                                             holding every cached image (pushed
#                                             in a network namespace of its own);
#                                             the test harness serves it read-only
#   bash scripts/registry.sh push ADDR [CACHE]
#                                             push every cached image to
#                                             ADDR/library/NAME:latest (CACHE:
#                                             SWARMNET_IMAGE_CACHE, default
#                                             /var/cache/swarmnet/images)
#
# push keeps the OCI manifests (gzip layers, the digests of the cache). The
# registry then answers GET /v2/NAME/manifests/TAG only if Accept lists
# application/vnd.oci.image.manifest.v1+json (else 404 MANIFEST_UNKNOWN "OCI
# manifest found, but accept header does not support OCI manifests").
# SWARMNET_IMAGE_FORMAT=v2s2 pushes Docker schema 2 manifests instead.
#
# Uses nothing of the root network namespace: it may run inside one, e.g.
#   ip netns exec NS bash scripts/registry.sh start 198.18.0.2:5000 DIR
# (the registry then lives in NS; `stop DIR` works from any namespace).
# Pull with any client that allows plain HTTP for ADDR (skopeo
# --src-tls-verify=false, dockerd --insecure-registry ADDR).
# The packages come from scripts/images.sh (docker-registry, skopeo, curl).
set -euo pipefail

CACHE="${SWARMNET_IMAGE_CACHE:-/var/cache/swarmnet/images}"

log() { printf '[registry] %s\n' "$*"; }
die() { printf '[registry] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

need() {
    command -v "$1" >/dev/null ||
        die "$1 not found (Debian package $2; bash scripts/images.sh installs it)"
}

check_addr() {
    [[ "$1" =~ ^[^:]+:[0-9]+$ || "$1" =~ ^\[[0-9a-fA-F:]+\]:[0-9]+$ ]] ||
        die "ADDR must be HOST:PORT, e.g. 127.0.0.1:5000 (got '$1')"
}

# The PID in DIR/registry.pid if that process is our docker-registry.
running_pid() {
    local dir=$1 pid
    [[ -f "$dir/registry.pid" ]] || return 1
    pid=$(<"$dir/registry.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    # Only ours: docker-registry serve DIR/config.yml (never a recycled PID).
    tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF "docker-registry serve $dir/config.yml" || return 1
    echo "$pid"
}

# curl http://ADDR/v2/ (no proxy: the registry is local or in this namespace).
ping_v2() {
    curl -fsS --noproxy '*' -m 2 -o /dev/null "http://$1/v2/" 2>/dev/null
}

cmd_start() {
    [[ $# -eq 2 ]] || { usage >&2; exit 2; }
    local addr=$1 dir pid i
    check_addr "$addr"
    need docker-registry docker-registry
    need curl curl
    mkdir -p "$2"
    dir=$(cd "$2" && pwd)
    if pid=$(running_pid "$dir"); then
        if grep -qxF "  addr: $addr" "$dir/config.yml" && ping_v2 "$addr"; then
            log "already running (pid $pid) on $addr, storage $dir/data"
            return 0
        fi
        die "a registry (pid $pid) already runs with $dir; stop it first"
    fi
    if ping_v2 "$addr"; then
        die "something already answers http://$addr/v2/"
    fi
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<EOF
# written by scripts/registry.sh start: plain HTTP, no auth
version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $addr
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
EOF
    # Not a process group leader here, so setsid execs in place: $! is the
    # registry itself, in its own session (survives this shell and its
    # terminal), and in whatever network namespace this script runs in.
    setsid docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/registry.pid"
    for i in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$dir/registry.log" >&2
            rm -f "$dir/registry.pid"
            die "docker-registry exited (log: $dir/registry.log)"
        fi
        if ping_v2 "$addr"; then
            running_pid "$dir" >/dev/null || die "pid $pid is not docker-registry"
            log "started pid $pid on http://$addr/ (storage $dir/data, log $dir/registry.log)"
            return 0
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    rm -f "$dir/registry.pid"
    die "http://$addr/v2/ did not answer within 10 s (log: $dir/registry.log)"
}

cmd_stop() {
    [[ $# -eq 1 ]] || { usage >&2; exit 2; }
    local dir pid i
    [[ -d "$1" ]] || { log "no $1: nothing to stop"; return 0; }
    dir=$(cd "$1" && pwd)
    if ! pid=$(running_pid "$dir"); then
        rm -f "$dir/registry.pid"
        log "not running ($dir)"
        return 0
    fi
    kill -TERM "$pid"
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for 10 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/registry.pid"
    log "stopped pid $pid"
}

cmd_status() {
    [[ $# -eq 1 ]] || { usage >&2; exit 2; }
    local dir pid addr
    dir=$(cd "$1" 2>/dev/null && pwd) || { log "not running (no $1)"; return 1; }
    if pid=$(running_pid "$dir"); then
        addr=$(sed -n 's/^  addr: //p' "$dir/config.yml")
        log "running: pid $pid, http://$addr/, storage $dir/data"
    else
        log "not running ($dir)"
        return 1
    fi
}

cmd_push() {
    [[ $# -eq 1 || $# -eq 2 ]] || { usage >&2; exit 2; }
    local addr=$1 cache=${2:-$CACHE} oci name t0 n=0 policy=()
    check_addr "$addr"
    need skopeo skopeo
    need curl curl
    ping_v2 "$addr" || die "no registry answers http://$addr/v2/ (start one first)"
    # Local addresses only: never send them to an HTTP proxy from the env.
    export NO_PROXY="${addr%:*}${NO_PROXY:+,$NO_PROXY}" no_proxy="${addr%:*}${no_proxy:+,$no_proxy}"
    [[ -f /etc/containers/policy.json ]] || policy=(--insecure-policy)
    local format=()
    case "${SWARMNET_IMAGE_FORMAT:-oci}" in
        oci) ;;
        v2s2) format=(--format v2s2) ;;
        *) die "SWARMNET_IMAGE_FORMAT must be oci or v2s2" ;;
    esac
    for oci in "$cache"/oci/*/; do
        [[ -f "$oci/index.json" ]] || continue
        oci=${oci%/}
        name=${oci##*/}
        t0=$SECONDS
        skopeo "${policy[@]}" copy -q --retry-times 3 --dest-tls-verify=false "${format[@]}" \
            "oci:$oci:latest" "docker://$addr/library/$name:latest"
        log "pushed $addr/library/$name:latest ($((SECONDS - t0)) s)"
        n=$((n + 1))
    done
    [[ $n -gt 0 ]] || die "no images in $cache/oci (run bash scripts/images.sh)"
}

# The cache's images and their digests: what a seeded DIR must hold.
seed_stamp() {
    local cache=$1 oci
    for oci in "$cache"/oci/*/; do
        [[ -f "$oci/index.json" ]] || continue
        printf '%s %s\n' "$(basename "$oci")" "$(sha256sum <"$oci/index.json" | cut -d' ' -f1)"
    done
}

cmd_seed() {
    [[ $# -eq 1 || $# -eq 2 ]] || { usage >&2; exit 2; }
    local dir=$1 cache=${2:-$CACHE} stamp ns work
    need docker-registry docker-registry
    need skopeo skopeo
    stamp=$(seed_stamp "$cache")
    [[ -n "$stamp" ]] || die "no images in $cache/oci (run bash scripts/images.sh)"
    if [[ -f "$dir/.seeded" && "$(<"$dir/.seeded")" == "$stamp" ]]; then
        log "seeded already: $dir"
        return 0
    fi
    mkdir -p "$(dirname "$dir")"
    exec 8>"$dir.lock"
    flock 8
    if [[ -f "$dir/.seeded" && "$(<"$dir/.seeded")" == "$stamp" ]]; then
        log "seeded already: $dir"
        return 0
    fi
    ns="snseed$$"
    work=$(mktemp -d "$dir.work.XXXXXX")
    # The registry listens on loopback inside a namespace of its own.
    ip netns add "$ns"
    # shellcheck disable=SC2064
    trap "bash '${BASH_SOURCE[0]}' stop '$work' >/dev/null 2>&1 || true; ip netns del '$ns' 2>/dev/null || true; rm -rf '$work'" EXIT
    ip -n "$ns" link set lo up
    ip netns exec "$ns" bash "${BASH_SOURCE[0]}" start 127.0.0.1:5000 "$work"
    ip netns exec "$ns" bash "${BASH_SOURCE[0]}" push 127.0.0.1:5000 "$cache"
    bash "${BASH_SOURCE[0]}" stop "$work"
    printf '%s\n' "$stamp" >"$work/data/.seeded"
    rm -rf "$dir"
    mv "$work/data" "$dir"
    log "seeded $dir with: $(echo "$stamp" | cut -d' ' -f1 | tr '\n' ' ')"
}

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    push) cmd_push "$@" ;;
    seed) cmd_seed "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
