#!/usr/bin/env bash
# Debian test hosts for the Ansible role tests (tests/deploy/testhosts.py boots them).
#
# Usage: scripts/testhosts.sh tools|base
#   tools  install debootstrap and systemd-nspawn (Debian's debootstrap, systemd-container)
#   base   tools, then build the cached Debian root every test host starts from, unless it
#          exists; prints its path. Idempotent; a changed recipe below builds a new one.
#
# The base root is Debian bookworm (debootstrap, minbase) with systemd, sshd and Python
# (what Ansible and the roles expect of a host), plus, in its apt cache, the packages the
# roles install (rabbitmq-server, nginx, python3-venv, ...): test hosts have no Internet
# access, so the roles' own apt tasks install those from the cache. Knobs [defaults]:
# FAIRWAY_TESTHOSTS_CACHE [/var/cache/fairway/testhosts], FAIRWAY_TESTHOSTS_MIRROR
# [http://deb.debian.org/debian]. Needs root. Builds take about a minute; they hold
# /tmp/fairway-testhosts.lock (the harness holds it while hosts run and then sets
# FAIRWAY_TESTHOSTS_LOCKED=1 for this script).
set -euo pipefail

CACHE="${FAIRWAY_TESTHOSTS_CACHE:-/var/cache/fairway/testhosts}"
MIRROR="${FAIRWAY_TESTHOSTS_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
LOCK=/tmp/fairway-testhosts.lock
# What a host has before Ansible touches it: an init, sshd, Python (with apt and deb822
# bindings for Ansible's apt and deb822_repository modules), sudo for `become`.
INCLUDE=systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,python3-debian,sudo,iproute2,procps,ca-certificates,curl
# What the roles install (downloaded only, with recommends, as the roles' apt tasks ask).
CACHED=(rabbitmq-server nginx openssl python3-venv python3-pip)
RECIPE_VERSION=1

log() { printf 'testhosts: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

tools() {
    [[ "$(id -u)" -eq 0 ]] || die "test hosts need root (debootstrap, mounts, network namespaces)"
    command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v ssh >/dev/null &&
        command -v ip >/dev/null && return 0
    log "installing debootstrap, systemd-container, openssh-client and iproute2 with apt-get (one-time)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        debootstrap systemd-container openssh-client iproute2; } >&2 || die "apt-get install failed"
}

recipe_hash() {
    printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$MIRROR" "$INCLUDE" "${CACHED[*]}" | sha256sum | cut -c1-12
}

build() {
    local dest="$1" tmp="$1.building"
    rm -rf "$tmp"
    log "building $dest (debootstrap $SUITE from $MIRROR, about a minute)"
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed: see $CACHE/debootstrap.log"
    # Resolution inside the chroot comes from the host's resolv.conf (debootstrap copied it).
    { chroot "$tmp" apt-get update -q &&
        chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --download-only "${CACHED[@]}"; } \
        >>"$CACHE/debootstrap.log" 2>&1 || die "downloading the roles' packages failed: see $CACHE/debootstrap.log"
    # What an installed Debian has and debootstrap leaves out; each host adds its own name.
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n' \
        >"$tmp/etc/hosts"
    rm -f "$tmp/etc/hostname"
    # No resolver on the test network: an empty file fails look-ups at once instead of timing out.
    : >"$tmp/etc/resolv.conf"
    # No background apt runs or timers in the hosts while the roles use apt.
    local unit
    for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
    done
    recipe_hash >"$tmp/.fairway-testhosts-recipe"
    mv "$tmp" "$dest"
}

base() {
    tools
    mkdir -p "$CACHE"
    local dest
    dest="$CACHE/$SUITE-$(recipe_hash)"
    if [[ ! -f "$dest/.fairway-testhosts-recipe" ]]; then
        if [[ "${FAIRWAY_TESTHOSTS_LOCKED:-0}" == 1 ]]; then
            build "$dest"
        else
            exec 9>"$LOCK"
            flock 9
            [[ -f "$dest/.fairway-testhosts-recipe" ]] || build "$dest"
        fi
    fi
    printf '%s\n' "$dest"
}

case "${1:-}" in
tools) tools ;;
base) base ;;
*) die "usage: $0 tools|base" ;;
esac
