#!/usr/bin/env bash
# Build and run the flows image with podman, on a machine with no Docker Hub: the base image is
# made here from Debian's packages (debootstrap), then the Dockerfile builds on it.
#
#   bash scripts/image.sh                 # base (once), build, then `flows list` in the image
#   bash scripts/image.sh base            # localhost/flows-base, unless it exists (FORCE=1 redoes it)
#   bash scripts/image.sh build           # localhost/flows:dev from the Dockerfile
#   bash scripts/image.sh run [podman run options] IMAGE [flows args]
#                                         # podman run --rm --network host with the options below
#
# Idempotent: the rootfs and the base image are reused; podman's layer cache makes a rebuild
# of unchanged sources a few seconds. Needs root, podman, debootstrap (apt-get install -y
# podman debootstrap runc).
#
# What this machine needed beyond a plain `podman build`/`podman run`, each one only when it
# applies, so that elsewhere the commands stay plain:
#   - runc instead of crun when cgroups are hybrid (v1 controllers and a v2 mount): crun
#     refuses ("cgroups in hybrid mode not supported").
#   - --ulimit nofile/nproc below the process's hard limits: podman's root defaults are above
#     them and setrlimit fails without CAP_SYS_RESOURCE ("setrlimit RLIMIT_NOFILE: Operation
#     not permitted").
#   - --network host for the build (pip fetches from PyPI) and the run (Kafka on localhost).
#   - the host's CA bundle in the base image, with PIP_CERT pointing at it: HTTPS goes through
#     an intercepting proxy here, whose CA the host trusts and pip's own bundle does not.
# Without systemd, podman cannot schedule the image's HEALTHCHECK and logs "unable to get
# systemd connection to add healthchecks" on every run; the container runs regardless, and
# `podman healthcheck run <name>` runs the check on demand.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${FLOWS_IMAGE_WORK:-$ROOT/.cache/image}"
BASE_IMAGE="${FLOWS_BASE_IMAGE:-localhost/flows-base}"
IMAGE="${FLOWS_IMAGE:-localhost/flows:dev}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt

log() { printf 'image.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

engine_options() {
    if [ -d /sys/fs/cgroup/unified ] && command -v runc >/dev/null 2>&1; then
        printf '%s\n' --runtime runc
    fi
    local nofile nproc
    nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
    [ "$nofile" = unlimited ] || [ "$nofile" -gt 4096 ] && nofile=4096
    [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ] && nproc=4096
    printf '%s\n' --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc"
}

base() {
    if [ -z "${FORCE:-}" ] && podman image exists "$BASE_IMAGE"; then
        log "$BASE_IMAGE exists (FORCE=1 to rebuild it)"
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: apt-get install -y debootstrap"
    local rootfs="$WORK/rootfs"
    if [ -n "${FORCE:-}" ] || [ ! -f "$WORK/rootfs.done" ]; then
        rm -rf "$rootfs" "$WORK/rootfs.done"
        mkdir -p "$WORK"
        log "debootstrap $SUITE (python3, python3-venv) into $rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$MIRROR" \
            >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed, see $WORK/debootstrap.log"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        touch "$WORK/rootfs.done"
    fi
    local changes=(--change 'CMD ["/bin/bash"]')
    if [ -f "$HOST_CA" ]; then
        cp "$HOST_CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
        changes+=(--change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
    fi
    log "podman import $BASE_IMAGE"
    tar --numeric-owner -C "$rootfs" -c . | podman import "${changes[@]}" - "$BASE_IMAGE" >/dev/null
}

build() {
    local options
    mapfile -t options < <(engine_options)
    log "podman build $IMAGE on $BASE_IMAGE"
    # --format docker: OCI image configs have no HEALTHCHECK, podman would drop it
    podman build "${options[@]}" --network host --format docker \
        --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
}

run() {
    local options
    mapfile -t options < <(engine_options)
    podman run --rm "${options[@]}" --network host "$@"
}

command -v podman >/dev/null 2>&1 || die "podman not found: apt-get install -y podman"
case "${1:-all}" in
    base) base ;;
    build) build ;;
    run) shift; run "$@" ;;
    all) base; build; run "$IMAGE" list ;;
    *) die "usage: $0 [base|build|run ...|all]" ;;
esac
