#!/usr/bin/env bash
# Everything Docker for CI, on a machine with no image registry: install Debian's
# docker.io, start dockerd without touching the host's firewall or bridges, make a Debian base
# image with debootstrap, build the job image, run the container tests, stop dockerd by PID.
#
#   .ci/docker.sh start    install, start dockerd, base image, build the image, then restart
#                          dockerd in its own network namespace for the tests (it stays up)
#   .ci/docker.sh test     the container tests (pytest -m docker)
#   .ci/docker.sh stop     stop the dockerd that `start` started (by its recorded PID)
#   .ci/docker.sh          all three
#
# Docker's layer cache (/var/lib/docker) and the base image are kept between runs on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${DETOX_DOCKER_STATE:-/var/tmp/flan-t5-detox-docker}  # dockerd PID file and log
IMAGE=${DETOX_IMAGE:-flan-t5-detox:ci}
BASE=${DETOX_BASE_IMAGE:-detox-base:bookworm}
# Debian's CLI has BuildKit built in (needed for cache and secret mounts); a newer docker CLI
# earlier on PATH may lack the buildx plugin.
DOCKER=/usr/bin/docker
export DOCKER_BUILDKIT=1

log() { echo "== docker: $*"; }

install() {
    if [ -x /usr/sbin/dockerd ] && [ -x /usr/sbin/debootstrap ] && [ -x "$DOCKER" ] &&
        [ -x /usr/bin/docker-compose ]; then return; fi
    log "installing Debian's docker.io, docker-compose (SageMaker SDK local mode) and debootstrap"
    # Never let the package start a dockerd with default flags (it would add bridges and
    # iptables rules): deny service starts while installing.
    local made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends docker.io docker-compose debootstrap >/dev/null
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
}

up() {
    # $1 = isolated: give dockerd a network namespace of its own. The tests need no network, and
    # the SageMaker SDK's local mode makes compose create a bridge network: there it stays off the
    # host. The build needs the host's network, so it runs against a non-isolated dockerd.
    install
    mkdir -p "$STATE"
    if [ ! -f "$STATE/dockerd.pid" ] && "$DOCKER" info >/dev/null 2>&1; then
        log "using the Docker engine already running"
        return
    fi
    down
    local cmd=(dockerd --storage-driver=overlay2 --iptables=false --ip-forward=false --bridge=none)
    if [ "${1:-}" = isolated ]; then
        cmd=(unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "${cmd[@]}")
    fi
    log "starting dockerd${1:+ in its own network namespace} (no iptables, no bridge); log in $STATE/dockerd.log"
    "${cmd[@]}" >"$STATE/dockerd.log" 2>&1 &
    echo $! >"$STATE/dockerd.pid"
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && return
        kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null || break
        sleep 1
    done
    tail -20 "$STATE/dockerd.log" >&2
    echo "dockerd did not come up" >&2
    return 1
}

down() {
    # Only the dockerd this script started, by its recorded PID.
    [ -f "$STATE/dockerd.pid" ] || return 0
    local pid
    pid=$(cat "$STATE/dockerd.pid")
    rm -f "$STATE/dockerd.pid"
    kill -0 "$pid" 2>/dev/null || return 0
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 1
    done
    echo "dockerd (pid $pid) did not stop within 60 s" >&2
}

debian_mirror() {
    # The Debian mirror the host's apt already reaches (one-line or deb822 sources).
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' ||
        true
}

base() {
    # No registry here: a Debian 12 root filesystem with Python 3.11 becomes the base image.
    if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
        log "base image $BASE cached"
        return
    fi
    local mirror root
    mirror=$(debian_mirror)  # empty: debootstrap's own default mirror
    root=$(mktemp -d /var/tmp/detox-rootfs.XXXXXX)
    log "debootstrap bookworm from ${mirror:-the default mirror of debootstrap}"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" $mirror >"$STATE/debootstrap.log" 2>&1 ||
        { tail -20 "$STATE/debootstrap.log" >&2; rm -rf "$root"; return 1; }
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    tar -C "$root" -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
}

build() {
    base
    # Reach PyPI the way the host's pip does: same index (if configured), proxy and CA bundle.
    local args=(--network host -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE")
    # Only PyPI is reachable here (no download.pytorch.org, no GitHub): PyPI's torch build and trl
    # from PyPI (0.4.2 = commit 25fa1bd plus small fixes).
    args+=(--build-arg "TORCH_VARIANT=${TORCH_VARIANT:-pypi}" --build-arg "TRL_SPEC=${TRL_SPEC:-trl==0.4.2}")
    local index
    index=${PIP_INDEX_URL:-$(pip config get global.index-url 2>/dev/null || true)}
    if [ -n "$index" ]; then args+=(--build-arg "PIP_INDEX_URL=$index"); fi
    for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy PIP_DEFAULT_TIMEOUT; do
        if [ -n "${!var:-}" ]; then args+=(--build-arg "$var"); fi
    done
    local ca=${DETOX_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
    if [ -s "$ca" ]; then args+=(--secret "id=ca_bundle,src=$ca"); fi
    log "building $IMAGE (log in $STATE/build.log)"
    local started=$SECONDS
    if ! "$DOCKER" build "${args[@]}" --progress=plain . >"$STATE/build.log" 2>&1; then
        tail -40 "$STATE/build.log" >&2
        return 1
    fi
    log "built $IMAGE in $((SECONDS - started)) s; size $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" |
        awk '{printf "%.2f GB", $1 / 1e9}')"
}

test_image() {
    log "container tests"
    CI=${CI:-true} DETOX_IMAGE=$IMAGE DOCKER=$DOCKER python -m pytest -q -p no:cacheprovider -m docker \
        tests/container
}

case "${1:-all}" in
start)
    started=$SECONDS
    up
    build
    up isolated
    log "ready in $((SECONDS - started)) s"
    ;;
test) test_image ;;
stop) down ;;
all)
    started=$SECONDS
    trap down EXIT
    up
    build
    up isolated
    test_image
    log "docker part took $((SECONDS - started)) s"
    ;;
*)
    echo "usage: $0 [start|test|stop]" >&2
    exit 2
    ;;
esac
