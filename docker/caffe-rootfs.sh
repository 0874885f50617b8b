#!/usr/bin/env bash
# Build a Debian bullseye root filesystem with BVLC Caffe 1.0 (pycaffe, CPU) in DIR, for
# caffe_tucker to drive as its Caffe runtime:
#
#     sudo docker/caffe-rootfs.sh /opt/caffe-root
#     export CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3"
#
# Needs root (debootstrap, chroot) and network access to a Debian mirror; takes about 1.5 minutes
# and about 900 MB.  The packages come from docker/packages.txt (the same list docker/Dockerfile
# installs).  Idempotent: on a DIR this script completed before, with the same package list, it only
# checks `chroot DIR python3 -c 'import caffe'` and prints the setting; a DIR left half-made (an
# interrupted or failed run) is wiped and built again.  A non-empty DIR that this script did not
# create is refused, never deleted.
#
# Environment: CAFFE_ROOTFS_MIRROR (default http://deb.debian.org/debian),
#              CAFFE_ROOTFS_SUITE (default bullseye: the last Debian release with Caffe).
set -euo pipefail

usage() { echo "usage: $0 DIR    (build a Caffe 1.0 chroot in DIR; run as root)" >&2; exit 2; }
die() { echo "caffe-rootfs: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || usage
case "$1" in -h|--help) usage ;; esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACKAGES_FILE="$HERE/packages.txt"
MIRROR="${CAFFE_ROOTFS_MIRROR:-http://deb.debian.org/debian}"
SUITE="${CAFFE_ROOTFS_SUITE:-bullseye}"
MARKER_NAME=".caffe-tucker-rootfs"

[ -r "$PACKAGES_FILE" ] || die "cannot read the package list $PACKAGES_FILE"
PACKAGES="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$PACKAGES_FILE" | grep -v '^$' | paste -sd, -)"
[ -n "$PACKAGES" ] || die "no packages in $PACKAGES_FILE"

mkdir -p -- "$1" 2>/dev/null || die "cannot create directory $1"
DIR="$(cd -- "$1" && pwd -P)"
[ "$DIR" != "/" ] || die "refusing to use / as the root filesystem directory"
MARKER="$DIR/$MARKER_NAME"
# What a finished build records: a change of suite, mirror-independent package list, or of this
# script's notion of completeness makes the DIR be rebuilt.
WANT="complete suite=$SUITE packages=$PACKAGES"

caffe_imports() {
    chroot "$DIR" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin GLOG_minloglevel=2 \
        python3 -c 'import caffe, numpy' >/dev/null 2>&1
}

finish() {
    echo "caffe-rootfs: Caffe runtime ready in $DIR ($1)" >&2
    echo "CAFFE_TUCKER_PYTHON=\"chroot $DIR python3\""
    exit 0
}

# Fast path: a complete DIR from an earlier run.
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] && caffe_imports; then
    finish "already built"
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and chroot need it): sudo $0 $1"

# Unmount anything an interrupted debootstrap left mounted inside DIR (proc, sys, dev/pts) so
# that wiping DIR can never reach the host's filesystems; deepest mount points first.
unmount_inside() {
    local mp
    awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r mp; do umount -l "$mp" 2>/dev/null || true; done
}

if [ -n "$(ls -A "$DIR")" ]; then
    [ -f "$MARKER" ] || die "$DIR is not empty and was not made by this script; remove it or choose another directory"
    echo "caffe-rootfs: $DIR is incomplete or out of date ($(head -c 80 "$MARKER")); rebuilding" >&2
    unmount_inside
    find "$DIR" -xdev -mindepth 1 -delete
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "debootstrap is not installed and there is no apt-get to install it"
    echo "caffe-rootfs: installing debootstrap" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

START=$(date +%s)
echo "in-progress suite=$SUITE packages=$PACKAGES" >"$MARKER"
trap 'unmount_inside' EXIT
echo "caffe-rootfs: debootstrap --variant=minbase --include=$PACKAGES $SUITE $DIR $MIRROR" >&2
LOG="$(mktemp)"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$DIR" "$MIRROR" >"$LOG" 2>&1; then
    tail -n 20 "$LOG" >&2
    [ -f "$DIR/debootstrap/debootstrap.log" ] && tail -n 20 "$DIR/debootstrap/debootstrap.log" >&2
    rm -f "$LOG"
    die "debootstrap failed (see above); $DIR is left marked incomplete and will be rebuilt on the next run"
fi
rm -f "$LOG"

# Keep the tree small: downloaded .debs and apt lists are not needed to run Caffe.
rm -rf "$DIR"/var/cache/apt/archives/*.deb "$DIR"/var/lib/apt/lists/* 2>/dev/null || true

if ! caffe_imports; then
    chroot "$DIR" python3 -c 'import caffe' >&2 || true
    die "the new root filesystem cannot 'import caffe' (see above)"
fi
echo "$WANT" >"$MARKER"
trap - EXIT
unmount_inside
finish "built in $(( $(date +%s) - START )) s"
