#!/usr/bin/env bash
# Prints the path of a Debian root filesystem for the boot test, building it once: debootstrap --variant=minbase
# with real systemd and cloud-init, cached in a folder keyed by the suite and package list, so that a change to the
# list builds a new one. A fresh machine builds it in about 100 s from Debian's mirror.
#
#   scripts/lib/boot_rootfs.sh [bookworm|trixie] [kernel]
set -euo pipefail
SUITE=${1:-bookworm}
# `kernel`: also Debian's kernel and a slim initramfs (the virtio drivers only), for the qemu boot.
VARIANT=${2:-}
MIRROR=${PZ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${PZ_BOOT_CACHE:-/var/tmp/parallelizer-boot}
# python3-cffi-backend: without it, cloud-init is left unconfigured by minbase. From Debian 13 on, libcurl4t64
# holds libcurl.so.4.
case "$SUITE" in bookworm|bullseye) CURL=libcurl4 ;; *) CURL=libcurl4t64 ;; esac
# locales, with en_US.UTF-8 generated as in a cloud image: cloud-init's locale module sets it at first boot, and
# without it reports an error (cloud-init status would exit 1).
PACKAGES="systemd,systemd-sysv,dbus,udev,cloud-init,openssh-server,curl,$CURL,ca-certificates,nftables,procps,python3-cffi-backend,locales"
[ "$VARIANT" != kernel ] || PACKAGES="$PACKAGES,linux-image-amd64,initramfs-tools,systemd-resolved"
KEY=$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
ROOT="$CACHE/$SUITE-$KEY${VARIANT:+-$VARIANT}"
if [ -f "$ROOT/.complete" ]; then
    echo "$ROOT"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "boot_rootfs: debootstrap is required (apt-get install debootstrap)" >&2; exit 1; }
mkdir -p "$CACHE"
# One builder at a time; a half-built tree is never used.
exec 9>"$CACHE/.lock"
flock -w 900 9 || { echo "boot_rootfs: another build holds $CACHE/.lock for 15 minutes" >&2; exit 1; }
if [ ! -f "$ROOT/.complete" ]; then
    # A debootstrap killed midway leaves its /proc and /sys mounts in the tree: off first, then the tree.
    findmnt -rn -o TARGET | grep -F "$ROOT.partial/" | sort -r | xargs -r -n 1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$ROOT.partial"
    echo "boot_rootfs: building a $SUITE root filesystem in $ROOT (about 100 s)" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT.partial" "$MIRROR" >"$CACHE/$SUITE-$KEY.log" 2>&1 \
        || { echo "boot_rootfs: debootstrap failed (see $CACHE/$SUITE-$KEY.log)" >&2; tail -5 "$CACHE/$SUITE-$KEY.log" >&2; exit 1; }
    # A persistent journal, so that the test reads it after the system is gone.
    mkdir -p "$ROOT.partial/var/log/journal"
    sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$ROOT.partial/etc/locale.gen"
    chroot "$ROOT.partial" locale-gen >>"$CACHE/$SUITE-$KEY.log" 2>&1 || { echo "boot_rootfs: locale-gen failed" >&2; exit 1; }
    if [ "$VARIANT" = kernel ]; then
        # A slim initramfs: the virtio disk and network, and ext4 (Debian's default takes most modules: 30 s more
        # to boot under emulation). DHCP on the virtio network through systemd-networkd, as a cloud image has.
        printf 'MODULES=list\n' >"$ROOT.partial/etc/initramfs-tools/conf.d/parallelizer-slim"
        printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >>"$ROOT.partial/etc/initramfs-tools/modules"
        chroot "$ROOT.partial" update-initramfs -u -k all >>"$CACHE/$SUITE-$KEY.log" 2>&1 \
            || { echo "boot_rootfs: update-initramfs failed" >&2; exit 1; }
        printf '[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n' >"$ROOT.partial/etc/systemd/network/20-dhcp.network"
        ln -sf /lib/systemd/system/systemd-networkd.service \
            "$ROOT.partial/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
        printf '/dev/vda / ext4 rw 0 1\n' >"$ROOT.partial/etc/fstab"
    fi
    rm -rf --one-file-system "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    touch "$ROOT/.complete"
fi
echo "$ROOT"
