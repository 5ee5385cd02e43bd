#!/usr/bin/env bash
# Prints the path of a Debian root filesystem for the boot test, building it once: debootstrap --variant=minbase
# with real systemd and cloud-init, cached in a folder keyed by the suite and package list, so that a change to the
# list builds a new one. A fresh machine builds it in about 100 s from Debian's mirror.
#
#   scripts/lib/boot_rootfs.sh [bookworm]
set -euo pipefail
SUITE=${1:-bookworm}
MIRROR=${PZ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${PZ_BOOT_CACHE:-/var/tmp/parallelizer-boot}
# python3-cffi-backend: without it, cloud-init is left unconfigured by minbase.
PACKAGES="systemd,systemd-sysv,dbus,udev,cloud-init,openssh-server,curl,libcurl4,ca-certificates,nftables,procps,python3-cffi-backend"
KEY=$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
ROOT="$CACHE/$SUITE-$KEY"
if [ -f "$ROOT/.complete" ]; then
    echo "$ROOT"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "boot_rootfs: debootstrap is required (apt-get install debootstrap)" >&2; exit 1; }
mkdir -p "$CACHE"
# One builder at a time; a half-built tree is never used.
exec 9>"$CACHE/.lock"
flock 9
if [ ! -f "$ROOT/.complete" ]; then
    rm -rf "$ROOT.partial"
    echo "boot_rootfs: building a $SUITE root filesystem in $ROOT (about 100 s)" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT.partial" "$MIRROR" >"$CACHE/$SUITE-$KEY.log" 2>&1 \
        || { echo "boot_rootfs: debootstrap failed (see $CACHE/$SUITE-$KEY.log)" >&2; tail -5 "$CACHE/$SUITE-$KEY.log" >&2; exit 1; }
    # A persistent journal, so that the test reads it after the system is gone.
    mkdir -p "$ROOT.partial/var/log/journal"
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    touch "$ROOT/.complete"
fi
echo "$ROOT"
