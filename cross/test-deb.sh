#!/usr/bin/env bash
# Install a winclip-edge .deb into a clean Debian root and check that it works:
# files in place, maintainer scripts ran, the binary runs the bundled tiny pack,
# purge removes it again.
#   sudo cross/test-deb.sh target/debian/winclip-edge_<version>_amd64.deb   # a bookworm root
#   sudo cross/test-deb.sh target/debian/winclip-edge_<version>_arm64.deb   # the trixie cross chroot, under qemu
# The bookworm root is made once with debootstrap under $WINCLIP_DEB_ROOT
# (default /var/tmp/winclip-deb-bookworm); mounts are undone on exit.
#   sudo cross/test-deb.sh --prepare   # only make the bookworm root (network), no .deb needed
set -euo pipefail
PREPARE=0
if [ "${1:-}" = "--prepare" ]; then
    PREPARE=1
else
    DEB=$(realpath "$1")
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "$PREPARE" = 1 ]; then ARCH=amd64; else ARCH=$(dpkg-deb --field "$DEB" Architecture); fi
MIRROR=${WINCLIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }

if [ "$ARCH" = arm64 ]; then
    CHROOT=${WINCLIP_CROSS_CHROOT:-/var/tmp/winclip-cross-trixie}
    [ -f "$CHROOT/.winclip-ready" ] || { echo "run cross/build-aarch64.sh first (it makes $CHROOT)" >&2; exit 1; }
    RUN="qemu-aarch64 -cpu cortex-a76"
else
    CHROOT=${WINCLIP_DEB_ROOT:-/var/tmp/winclip-deb-bookworm}
    RUN=""
fi

MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

if [ ! -f "$CHROOT/.debootstrap-done" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    if findmnt -R "$CHROOT" >/dev/null 2>&1; then echo "something is mounted in $CHROOT" >&2; exit 1; fi
    rm -rf "$CHROOT"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$CHROOT" "$MIRROR" >/dev/null
    touch "$CHROOT/.debootstrap-done"
fi
[ "$PREPARE" = 1 ] && { echo "$CHROOT is ready"; exit 0; }
cp /etc/apt/apt.conf.d/* "$CHROOT/etc/apt/apt.conf.d/" 2>/dev/null || true
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
for m in /proc /sys /dev; do
    mkdir -p "$CHROOT$m"
    mount --bind "$m" "$CHROOT$m"
    MOUNTS+=("$CHROOT$m")
done
cp "$DEB" "$CHROOT/tmp/winclip-edge.deb"

chroot "$CHROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 RUN="$RUN" bash -euo pipefail -c '
    export DEBIAN_FRONTEND=noninteractive
    dpkg --purge winclip-edge >/dev/null 2>&1 || true
    apt-get install -y -qq /tmp/winclip-edge.deb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq /tmp/winclip-edge.deb; }
    for f in /usr/bin/winclip-edge /etc/winclip-edge/config.toml /usr/lib/systemd/system/winclip-edge.service \
             /usr/share/winclip-edge/models/tiny/manifest.toml; do
        [ -e "$f" ] || { echo "missing after install: $f" >&2; exit 1; }
    done
    getent group gpio >/dev/null || { echo "postinst did not create the gpio group" >&2; exit 1; }
    [ -d /srv/winclip/incoming ] && [ -d /var/lib/winclip-edge/models ] || { echo "postinst did not make the directories" >&2; exit 1; }
    $RUN /usr/bin/winclip-edge --version
    $RUN /usr/bin/winclip-edge model verify --model /usr/share/winclip-edge/models/tiny | tail -1
    # The shipped example refers to a pack the user has not copied yet: a clear error, exit 2.
    set +e
    $RUN /usr/bin/winclip-edge check-config --config /etc/winclip-edge/config.toml >/tmp/cc.out 2>&1
    rc=$?
    set -e
    [ $rc = 2 ] && grep -q "model pack" /tmp/cc.out || { cat /tmp/cc.out; echo "check-config: expected exit 2 naming the model pack, got $rc" >&2; exit 1; }
    dpkg --purge winclip-edge >/dev/null
    [ ! -e /usr/bin/winclip-edge ] && [ ! -e /etc/winclip-edge/config.toml ] || { echo "purge left files" >&2; exit 1; }
    echo "install, run and purge OK"
'
echo "$(basename "$DEB"): OK in a clean Debian root ($ARCH)"
