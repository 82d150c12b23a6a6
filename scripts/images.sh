#!/usr/bin/env bash
# Builds the container images the tests and the demo use, from Debian packages
# only (no Docker Hub), into a cache, and optionally checks that they run.
#
#   bash scripts/images.sh [--force] [--refresh] [--verify] [NAME...]
#
#   NAME       busybox, nginx, tools (default: all three)
#   --force    rebuild the images even if they are cached (the downloaded
#              Debian packages are reused)
#   --refresh  also download the Debian packages again (implies --force)
#   --verify   after building, run the images under runc in network
#              namespaces of their own: nginx must serve its hostname page,
#              tools must reach it with curl and ping, busybox must run sh
#
# Cache (SWARMNET_IMAGE_CACHE, default /var/cache/swarmnet/images):
#   oci/NAME/                 OCI image layout, tag "latest" (umoci, gzip layer)
#   docker-archive/NAME.tar   the same image for `docker load` (library/NAME:latest)
#   debootstrap/SUITE-ARCH/   the Debian packages of nginx and tools (debootstrap
#                             --cache-dir: each .deb is downloaded once)
#
# The images:
#   busybox  /bin/busybox (busybox-static) and its applet links, root and
#            nobody in /etc/passwd and /etc/group, /tmp; Cmd ["sh"]
#   nginx    Debian bookworm minbase + nginx; Entrypoint /docker-entrypoint.sh
#            writes an index page naming the container's hostname
#            (<h1>hostname: H</h1>, H on a line of its own, and /hostname
#            holding just H), then execs Cmd ["nginx","-g","daemon off;"];
#            port 80, access log to stdout, errors to stderr, StopSignal SIGQUIT
#   tools    Debian bookworm minbase + dig, curl, ping, ip, iperf3, nc;
#            Cmd sleeps forever but exits at once on SIGTERM
#
# Idempotent: installs the Debian packages it needs only when missing, and
# skips every image whose output is already in the cache. Must run as root.
# scripts/registry.sh serves the cached images from a local registry.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWARMNET_IMAGE_CACHE:-/var/cache/swarmnet/images}"
SUITE=bookworm
ALL_IMAGES=(busybox nginx tools)
NGINX_PACKAGES=(nginx)
TOOLS_PACKAGES=(dnsutils curl ca-certificates iputils-ping iproute2 iperf3 netcat-openbsd)
APT_PACKAGES=(
    debootstrap umoci skopeo busybox-static docker-registry ca-certificates
    curl jq runc iproute2
)
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

FORCE=0
REFRESH=0
VERIFY=0
IMAGES=()

log() { printf '[images] %s\n' "$*"; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) FORCE=1 ;;
        --refresh) FORCE=1; REFRESH=1 ;;
        --verify) VERIFY=1 ;;
        -h|--help) usage; exit 0 ;;
        busybox|nginx|tools) IMAGES+=("$1") ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=("${ALL_IMAGES[@]}")

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (installs Debian packages, debootstraps, runs runc)"
fi
export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

# --- timing ------------------------------------------------------------------
now_us() { local t=$EPOCHREALTIME; echo "${t//[!0-9]/}"; }
fmt_us() { local d=$1; printf '%d.%01ds' $((d / 1000000)) $(((d / 100000) % 10)); }
since() { fmt_us $(($(now_us) - $1)); }
T_START=$(now_us)

# --- Debian packages -----------------------------------------------------------
is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

ensure_packages() {
    local missing=() pkg t0 guard=0
    for pkg in "${APT_PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Debian packages: all ${#APT_PACKAGES[@]} present"
        return
    fi
    t0=$(now_us)
    # docker-registry ships an init script: never let its postinst start a
    # registry on the default port. policy-rc.d exit 101 = "do not start".
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        guard=1
    fi
    # apt-get update only when a package is unknown or the install fails
    # (stale lists point at files the mirror no longer has).
    local need_update=0
    for pkg in "${missing[@]}"; do
        apt-cache show "$pkg" >/dev/null 2>&1 || need_update=1
    done
    local rc=0
    if [[ $need_update -eq 1 ]]; then
        log "apt-get update"
        apt-get update -qq || rc=$?
    fi
    if [[ $rc -eq 0 ]]; then
        log "apt-get install ${missing[*]}"
        if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
            if [[ $need_update -eq 0 ]]; then
                log "install failed; apt-get update and retry"
                apt-get update -qq &&
                    apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
            else
                rc=1
            fi
        fi
    fi
    [[ $guard -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $rc -eq 0 ]] || die "could not install ${missing[*]}"
    log "Debian packages installed in $(since "$t0")"
}

# The mirror apt already uses for $SUITE (one-line or deb822 sources).
debian_mirror() {
    if [[ -n "${SWARMNET_DEBIAN_MIRROR:-}" ]]; then
        echo "$SWARMNET_DEBIAN_MIRROR"
        return
    fi
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v s="$SUITE" '$1 == "deb" {
            for (i = 2; i < NF; i++) if ($i ~ /^[a-z+]+:\/\//) {
                if ($(i + 1) == s) { print $i; exit } else break } }')
    if [[ -z "$m" ]]; then
        m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
            awk -v s="$SUITE" 'BEGIN { RS = ""; FS = "\n" } {
                types = uris = suites = ""; enabled = 1
                for (i = 1; i <= NF; i++) {
                    split($i, kv, ":[ \t]*"); k = tolower(kv[1])
                    v = substr($i, length(kv[1]) + 2); sub(/^[ \t]+/, "", v)
                    if (k == "types") types = v
                    else if (k == "uris") uris = v
                    else if (k == "suites") suites = v
                    else if (k == "enabled" && v ~ /^no/) enabled = 0
                }
                if (enabled && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " s " ")) {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                } }')
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

# --- work area ------------------------------------------------------------------
mkdir -p "$CACHE"/{oci,docker-archive,debootstrap}
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    log "another images.sh holds $CACHE/.lock; waiting"
    flock 9
fi

WORK=""
VERIFY_CLEANUP=()
BG_PIDS=()
cleanup() {
    local rc=$? f p
    for p in "${BG_PIDS[@]}"; do kill_tree "$p"; done
    [[ ${#BG_PIDS[@]} -eq 0 ]] || wait 2>/dev/null || true
    for f in "${VERIFY_CLEANUP[@]}"; do eval "$f" >/dev/null 2>&1 || true; done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        # debootstrap mounts proc/sys in the target; never rm across a mount.
        { findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r || true; } |
            while read -r m; do umount -l "$m" || true; done
        rm -rf --one-file-system "$WORK" || true
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

new_work() {
    [[ -n "$WORK" ]] || WORK=$(mktemp -d "$CACHE/.build.XXXXXX")
}

ARCH=$(dpkg --print-architecture)

is_cached() {
    [[ -f "$CACHE/oci/$1/index.json" && -f "$CACHE/docker-archive/$1.tar" ]]
}

# --- rootfs -> OCI layout + docker-archive ------------------------------------
# make_image NAME ROOTFS [umoci config args...]
make_image() {
    local name=$1 rootfs=$2
    shift 2
    local oci="$WORK/$name.oci" tar="$WORK/$name.docker.tar" layer="$WORK/$name.layer.tar"
    local t0
    t0=$(now_us)
    rm -rf "$oci" "$tar" "$layer"
    # One layer, made with GNU tar so ownership, modes, hard links and file
    # capabilities (ping) are exactly the rootfs's; umoci gzips it.
    (cd "$rootfs" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort |
        tar --numeric-owner --xattrs --xattrs-include='security.capability' \
            --sort=name -cf "$layer" -T -)
    umoci init --layout "$oci"
    umoci new --image "$oci:latest"
    umoci raw add-layer --image "$oci:latest" \
        --history.created_by "scripts/images.sh $name" "$layer"
    rm -f "$layer"
    umoci config --image "$oci:latest" --architecture "$ARCH" --os linux \
        --config.env "$PATH_ENV" \
        --config.label "org.opencontainers.image.title=$name" \
        --config.label "org.opencontainers.image.description=swarmnet test image (scripts/images.sh), Debian packages only" \
        --history.created_by "scripts/images.sh: umoci config" \
        "$@"
    umoci gc --layout "$oci"
    local policy=()
    [[ -f /etc/containers/policy.json ]] || policy=(--insecure-policy)
    skopeo "${policy[@]}" copy -q "oci:$oci:latest" "docker-archive:$tar:library/$name:latest"
    rm -rf "$CACHE/oci/$name" "$CACHE/docker-archive/$name.tar"
    mv "$oci" "$CACHE/oci/$name"
    mv "$tar" "$CACHE/docker-archive/$name.tar"
    log "$name: OCI layout and docker-archive in $(since "$t0")"
}

# --- busybox -------------------------------------------------------------------
build_busybox() {
    local r="$WORK/busybox.rootfs" bb
    bb=$(dpkg -L busybox-static | grep -xE '(/usr)?/bin/busybox' | head -n1)
    [[ -x "$bb" ]] || die "busybox-static's /bin/busybox not found"
    rm -rf "$r"
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,var,dev,proc,sys,tmp}
    chmod 1777 "$r/tmp"
    chmod 700 "$r/root"
    install -m 755 "$bb" "$r/bin/busybox"
    # Absolute argv[0]: in a chroot without /proc busybox links to argv[0].
    chroot "$r" /bin/busybox --install -s
    cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$r/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
EOF
    cat >"$r/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
    local ver
    ver=$(dpkg-query -W -f='${Version}' busybox-static)
    log "busybox: rootfs with $(find "$r" -type l | wc -l) applet links ($(du -sh "$r" | cut -f1))"
    make_image busybox "$r" \
        --config.cmd sh \
        --config.label "org.opencontainers.image.version=busybox-static $ver"
}

# --- Debian rootfs (nginx, tools) --------------------------------------------------
# Debian packages are downloaded once into debootstrap's --cache-dir (checked
# against the mirror's checksums) and shared by nginx and tools and by later
# rebuilds; only the mirror's package index is fetched again per rootfs.
DEB_CACHE="$CACHE/debootstrap/$SUITE-$ARCH"
if [[ $REFRESH -eq 1 ]]; then
    rm -rf "$DEB_CACHE"
fi
mkdir -p "$DEB_CACHE"

# debian_rootfs NAME PACKAGES...  -> $WORK/NAME.rootfs
debian_rootfs() {
    local name=$1
    shift
    local r="$WORK/$name.rootfs" include t0 mirror
    include=$(IFS=,; echo "$*")
    mirror=$(debian_mirror)
    t0=$(now_us)
    rm -rf "$r"
    debootstrap --variant=minbase --arch="$ARCH" --include="$include" \
        --cache-dir="$DEB_CACHE" "$SUITE" "$r" "$mirror" >"$WORK/$name.debootstrap.log" 2>&1 ||
        { tail -n 30 "$WORK/$name.debootstrap.log" >&2; die "debootstrap of $name failed"; }
    if findmnt -rn -o TARGET | grep -qF "$r/"; then
        die "debootstrap left mounts under $r"
    fi
    log "$name: debootstrap $SUITE minbase + $include from $mirror in $(since "$t0") ($(du -sh "$r" | cut -f1))"
    t0=$(now_us)
    # Keep it small: no package caches, lists, docs (except copyright), man
    # pages, translations, logs; no host files or device nodes.
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin \
        "$r"/var/lib/apt/lists/* "$r"/var/cache/debconf/*-old \
        "$r"/var/lib/dpkg/*-old "$r"/var/log/* "$r"/usr/share/man/* \
        "$r"/usr/share/info/* "$r"/usr/share/lintian "$r"/usr/share/locale/* \
        "$r"/usr/share/common-licenses "$r"/dev/* "$r"/etc/hostname "$r"/etc/resolv.conf \
        "$r"/etc/machine-id "$r"/var/lib/dbus/machine-id
    mkdir -p "$r/var/lib/apt/lists/partial" "$r/var/cache/apt/archives/partial"
    find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
    cat >"$r/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
    log "$name: rootfs trimmed to $(du -sh "$r" | cut -f1) in $(since "$t0")"
}

build_nginx() {
    debian_rootfs nginx "${NGINX_PACKAGES[@]}"
    local r="$WORK/nginx.rootfs" ver
    ver=$(chroot "$r" dpkg-query -W -f='${Version}' nginx)
    # Configuration laid out like the official image: conf.d/default.conf
    # serves /usr/share/nginx/html on port 80.
    rm -f "$r"/etc/nginx/sites-enabled/*
    cat >"$r/etc/nginx/nginx.conf" <<'EOF'
# swarmnet test image (scripts/images.sh): logs go to the container's
# stdout/stderr, servers live in /etc/nginx/conf.d/*.conf.
user www-data;
worker_processes auto;
pid /run/nginx.pid;
error_log /dev/stderr notice;
include /etc/nginx/modules-enabled/*.conf;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" "$http_user_agent"';
    access_log /dev/stdout main;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
EOF
    cat >"$r/etc/nginx/conf.d/default.conf" <<'EOF'
server {
    listen 80 default_server;
    server_name _;
    root /usr/share/nginx/html;
    index index.html;
    location = /hostname {
        default_type text/plain;
    }
}
EOF
    # Messages logged before the configuration is read use the compiled-in
    # paths: send those to stdout/stderr too, as the official image does.
    mkdir -p "$r/var/log/nginx" "$r/usr/share/nginx/html"
    ln -sf /dev/stdout "$r/var/log/nginx/access.log"
    ln -sf /dev/stderr "$r/var/log/nginx/error.log"
    cat >"$r/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# swarmnet nginx test image: write a page naming this container's hostname,
# then run the command (by default nginx -g 'daemon off;').
# SWARMNET_KEEP_INDEX=1 leaves the web root alone (e.g. a mounted one).
set -e
host=$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname)
root=/usr/share/nginx/html
if [ -z "${SWARMNET_KEEP_INDEX:-}" ]; then
    {
        printf '<!DOCTYPE html>\n<html>\n<head><title>%s</title></head>\n<body>\n' "$host"
        printf '<h1>hostname: %s</h1>\n<pre>\n%s\n</pre>\n</body>\n</html>\n' "$host" "$host"
    } >"$root/index.html" 2>/dev/null &&
        printf '%s\n' "$host" >"$root/hostname" 2>/dev/null ||
        echo "docker-entrypoint.sh: cannot write $root/index.html" >&2
fi
exec "$@"
EOF
    chmod 755 "$r/docker-entrypoint.sh"
    chroot "$r" /usr/sbin/nginx -t -q || die "nginx -t failed in the nginx rootfs"
    make_image nginx "$r" \
        --config.entrypoint /docker-entrypoint.sh \
        --config.cmd nginx --config.cmd -g --config.cmd 'daemon off;' \
        --config.exposedports 80/tcp \
        --config.stopsignal SIGQUIT \
        --config.label "org.opencontainers.image.version=nginx $ver"
}

build_tools() {
    debian_rootfs tools "${TOOLS_PACKAGES[@]}"
    local r="$WORK/tools.rootfs" bin
    for bin in dig curl ping ip iperf3 nc; do
        chroot "$r" sh -c "command -v $bin" >/dev/null || die "tools: $bin missing"
    done
    # A bare `sleep infinity` as PID 1 ignores SIGTERM (no handler, and the
    # kernel drops default-action signals to PID 1), so `docker stop` would
    # wait its full timeout; this shell exits on TERM/INT at once.
    make_image tools "$r" \
        --config.cmd sh --config.cmd -c \
        --config.cmd 'trap "exit 0" TERM INT; sleep infinity & wait'
}

# --- build ----------------------------------------------------------------------------
packages_of() {
    case "$1" in
        nginx) echo "${NGINX_PACKAGES[@]}" ;;
        tools) echo "${TOOLS_PACKAGES[@]}" ;;
    esac
}

# Download every .deb the Debian images need into the cache first (one
# debootstrap --download-only of the union), so that their debootstraps can
# then run side by side without racing on the cache.
prefetch_debs() {
    local union t0 mirror d="$WORK/download-only"
    union=$(for n in "$@"; do packages_of "$n"; done | tr ' ' '\n' | sort -u | paste -sd, -)
    mirror=$(debian_mirror)
    t0=$(now_us)
    debootstrap --download-only --variant=minbase --arch="$ARCH" --include="$union" \
        --cache-dir="$DEB_CACHE" "$SUITE" "$d" "$mirror" >"$WORK/download-only.log" 2>&1 ||
        { tail -n 30 "$WORK/download-only.log" >&2; die "debootstrap --download-only failed"; }
    rm -rf "$d"
    log "Debian packages for $*: in $DEB_CACHE ($(du -sh "$DEB_CACHE" | cut -f1)) after $(since "$t0")"
}

build_image() {
    local name=$1 t0
    t0=$(now_us)
    "build_$name"
    rm -rf "$WORK/$name.rootfs"
    log "$name: built in $(since "$t0")"
}

# Kill a process we started and everything it started (debootstrap, dpkg...).
kill_tree() {
    local c
    for c in $(pgrep -P "$1" || true); do kill_tree "$c"; done
    kill "$1" 2>/dev/null || true
}

ensure_packages
built=()
debian=()
for name in "${IMAGES[@]}"; do
    if is_cached "$name" && [[ $FORCE -eq 0 ]]; then
        log "$name: cached (--force rebuilds)"
    elif [[ $name == busybox ]]; then
        new_work
        build_image busybox
        built+=(busybox)
    else
        debian+=("$name")
    fi
done
if [[ ${#debian[@]} -gt 0 ]]; then
    new_work
    t_debian=$(now_us)
    prefetch_debs "${debian[@]}"
    pids=()
    for name in "${debian[@]}"; do
        build_image "$name" &
        pids+=($!)
        BG_PIDS+=($!)
    done
    failed=()
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed+=("${debian[$i]}")
    done
    BG_PIDS=()
    [[ ${#failed[@]} -eq 0 ]] || die "failed to build: ${failed[*]}"
    built+=("${debian[@]}")
    log "${debian[*]}: built side by side in $(since "$t_debian")"
fi

# --- summary ------------------------------------------------------------------------
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }
printf '\n%-8s %-16s %-22s %s\n' IMAGE "COMPRESSED(gzip)" "UNCOMPRESSED(docker-tar)" MANIFEST
for name in "${IMAGES[@]}"; do
    oci="$CACHE/oci/$name"
    mdigest=$(jq -r '.manifests[] | select(.annotations."org.opencontainers.image.ref.name" == "latest") | .digest' "$oci/index.json")
    compressed=$(jq '[.layers[].size] | add' "$oci/blobs/${mdigest/://}")
    printf '%-8s %-16s %-24s %s\n' "$name" "$(human "$compressed")" \
        "$(human "$(stat -c %s "$CACHE/docker-archive/$name.tar")")" "${mdigest:0:19}"
done
log "cache: $CACHE ($(du -sh "$CACHE" | cut -f1))"
log "total: $(since "$T_START") (built: ${built[*]:-none})"

# --- verify -----------------------------------------------------------------------------
# runc runs the images in two network namespaces joined by a veth pair:
#   SERVER (198.19.254.1/30): nginx    CLIENT (198.19.254.2/30): tools, curl
# busybox runs in CLIENT too. Everything is removed again, even on failure.
verify() {
    local tag="swnimg$$" t0 b
    local ns_s="$tag-s" ns_c="$tag-c" ip_s=198.19.254.1 ip_c=198.19.254.2
    t0=$(now_us)
    new_work
    log "verify: namespaces $ns_s ($ip_s) and $ns_c ($ip_c)"
    VERIFY_CLEANUP+=("ip netns del $ns_s" "ip netns del $ns_c")
    ip netns add "$ns_s"
    ip netns add "$ns_c"
    ip link add "$tag-a" netns "$ns_s" type veth peer name "$tag-b" netns "$ns_c"
    ip -n "$ns_s" link set lo up
    ip -n "$ns_c" link set lo up
    ip -n "$ns_s" addr add "$ip_s/30" dev "$tag-a"
    ip -n "$ns_c" addr add "$ip_c/30" dev "$tag-b"
    ip -n "$ns_s" link set "$tag-a" up
    ip -n "$ns_c" link set "$tag-b" up

    local DOCKER_CAPS='["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"]'
    # bundle IMAGE NETNS HOSTNAME [ARGS_JSON [BUNDLE]]: umoci unpack into
    # $WORK/bundle-BUNDLE (default IMAGE), then the runc settings
    bundle() {
        local name=$1 ns=$2 host=$3 args=${4:-}
        local b="$WORK/bundle-${5:-$name}"
        umoci unpack --image "$CACHE/oci/$name:latest" "$b" >/dev/null
        # umoci writes runc's spec defaults, which keep only 3 capabilities
        # (nginx then cannot setgid to www-data): give Docker's default set.
        jq --arg ns "/var/run/netns/$ns" --arg h "$host" --argjson args "${args:-null}" \
            --argjson caps "$DOCKER_CAPS" '
            .process.terminal = false
            | .process.capabilities = {bounding: $caps, effective: $caps, permitted: $caps}
            | .hostname = $h
            | (if $args then .process.args = $args else . end)
            | .linux.namespaces = ([.linux.namespaces[] | select(.type != "network")]
                                   + [{type: "network", path: $ns}])
            | (if any(.linux.namespaces[]; .type == "uts") then .
               else .linux.namespaces += [{type: "uts"}] end)' \
            "$b/config.json" >"$b/config.json.new"
        mv "$b/config.json.new" "$b/config.json"
    }

    # nginx in SERVER, detached, its stdout/stderr in a file.
    local id_n="$tag-nginx" host_n="web-$tag" page
    bundle nginx "$ns_s" "$host_n"
    VERIFY_CLEANUP=("runc delete --force $id_n" "${VERIFY_CLEANUP[@]}")
    runc run -d --bundle "$WORK/bundle-nginx" "$id_n" \
        </dev/null >"$WORK/nginx.out" 2>&1
    local i
    for i in $(seq 40); do
        page=$(ip netns exec "$ns_c" curl -fsS --noproxy '*' -m 1 "http://$ip_s/" 2>/dev/null) && break
        [[ $(runc state "$id_n" 2>/dev/null | jq -r .status) == running ]] || break
        sleep 0.25
    done
    if ! grep -qxF "<h1>hostname: $host_n</h1>" <<<"$page" || ! grep -qxF "$host_n" <<<"$page"; then
        cat "$WORK/nginx.out" >&2
        die "verify: nginx did not serve its hostname page (got: ${page:-nothing})"
    fi
    log "verify: nginx under runc serves: $(grep '<h1>' <<<"$page")"
    [[ $(ip netns exec "$ns_c" curl -fsS --noproxy '*' -m 2 "http://$ip_s/hostname") == "$host_n" ]] ||
        die "verify: /hostname is not $host_n"

    # tools in CLIENT, in the foreground: reaches nginx by curl and ping.
    local id_t="$tag-tools" out
    bundle tools "$ns_c" "tools-$tag" \
        "$(jq -nc --arg ip "$ip_s" '["sh", "-ec", "dig -v 2>&1; iperf3 --version | head -n1; nc -h 2>&1 | head -n1; ip -br addr show; ping -c1 -W2 \($ip) | tail -n2; curl -fsS http://\($ip)/hostname"]')"
    VERIFY_CLEANUP=("runc delete --force $id_t" "${VERIFY_CLEANUP[@]}")
    out=$(runc run --bundle "$WORK/bundle-tools" "$id_t" </dev/null 2>&1) ||
        { printf '%s\n' "$out" >&2; die "verify: tools container failed"; }
    printf '%s\n' "$out" | sed 's/^/[images]   tools| /'
    [[ $(tail -n1 <<<"$out") == "$host_n" ]] || die "verify: tools could not curl nginx"

    # tools' default command as PID 1 must stop at once on SIGTERM.
    local id_s="$tag-sleep"
    bundle tools "$ns_c" "sleep-$tag" "" sleep
    VERIFY_CLEANUP=("runc delete --force $id_s" "${VERIFY_CLEANUP[@]}")
    runc run -d --bundle "$WORK/bundle-sleep" "$id_s" </dev/null >/dev/null 2>&1
    sleep 0.3
    [[ $(runc state "$id_s" | jq -r .status) == running ]] || die "verify: tools' Cmd did not keep running"
    runc kill "$id_s" TERM
    for i in $(seq 20); do
        [[ $(runc state "$id_s" | jq -r .status) == stopped ]] && break
        sleep 0.1
    done
    [[ $(runc state "$id_s" | jq -r .status) == stopped ]] || die "verify: tools' Cmd ignored SIGTERM"
    log "verify: tools' Cmd runs until SIGTERM and then stops at once"

    # busybox in CLIENT.
    local id_b="$tag-busybox"
    bundle busybox "$ns_c" "bb-$tag" '["sh","-c","id; echo applets: $(ls /bin | wc -l); wget -qO- http://198.19.254.1/hostname"]'
    VERIFY_CLEANUP=("runc delete --force $id_b" "${VERIFY_CLEANUP[@]}")
    out=$(runc run --bundle "$WORK/bundle-busybox" "$id_b" </dev/null 2>&1) ||
        { printf '%s\n' "$out" >&2; die "verify: busybox container failed"; }
    printf '%s\n' "$out" | sed 's/^/[images]   busybox| /'
    [[ $(tail -n1 <<<"$out") == "$host_n" ]] || die "verify: busybox could not wget nginx"

    # nginx: access log on stdout; SIGQUIT (its StopSignal) stops it.
    grep -q '"GET / HTTP/1.1" 200' "$WORK/nginx.out" ||
        { cat "$WORK/nginx.out" >&2; die "verify: no access log line on nginx's stdout"; }
    runc kill "$id_n" QUIT
    for i in $(seq 50); do
        [[ $(runc state "$id_n" 2>/dev/null | jq -r .status) == stopped ]] && break
        sleep 0.2
    done
    [[ $(runc state "$id_n" | jq -r .status) == stopped ]] || die "verify: nginx ignored SIGQUIT"
    log "verify: nginx logged to stdout and stopped on SIGQUIT; its output:"
    sed 's/^/[images]   nginx| /' "$WORK/nginx.out"

    for i in "$id_n" "$id_t" "$id_s" "$id_b"; do runc delete --force "$i"; done
    ip netns del "$ns_s"
    ip netns del "$ns_c"
    VERIFY_CLEANUP=()
    for b in "$WORK"/bundle-*; do rm -rf --one-file-system "$b"; done
    log "verify: OK in $(since "$t0"); containers, bundles and namespaces removed"
}
[[ $VERIFY -eq 0 ]] || verify
