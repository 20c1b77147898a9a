#!/usr/bin/env bash
# A small kernel for the virtual machine with gpio-sim (Debian's kernels lack CONFIG_GPIO_SIM
# and CONFIG_IRQ_SIM): Debian's linux-source-6.1, `make tinyconfig` with kernel.config merged
# on top. Kept under $WINCLIP_VM_CACHE (default /var/tmp/winclip-vm) in a directory named
# after the source version and the configuration, so a rerun reuses it. Prints the bzImage.
#   tests/vm/build-kernel.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
SRC_PKG=linux-source-6.1
if ! dpkg-query -W -f='${Status}' "$SRC_PKG" 2>/dev/null | grep -q 'install ok installed'; then
    log "installing $SRC_PKG and the kernel's build tools"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$SRC_PKG" flex bison bc libelf-dev libssl-dev >/dev/null
fi
VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
KEY=$(printf '%s\n' "$VERSION" "$(cat "$HERE/kernel.config")" "$(sed -n '/^# --- build/,$p' "$0")" | sha256sum | cut -c1-12)
OUT=$WINCLIP_VM_CACHE/kernel-$KEY
if [ -f "$OUT/bzImage" ]; then
    echo "$OUT/bzImage"
    exit 0
fi
mkdir -p "$WINCLIP_VM_CACHE"
rm -rf "$OUT" "$OUT.tmp"
mkdir -p "$OUT.tmp"
log "building a kernel from $SRC_PKG $VERSION in $OUT.tmp ($(nproc) jobs)"
tar -xf /usr/src/linux-source-6.1.tar.xz -C "$OUT.tmp"

# --- build (part of the cache key) ---
cd "$OUT.tmp"/linux-source-6.1
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "$HERE/kernel.config" >/dev/null
make -s olddefconfig
# A symbol whose dependencies are not met is dropped silently: every requested one must be set.
missing=$(grep -o '^CONFIG_[A-Z0-9_]*=[^ ]*' "$HERE/kernel.config" | while read -r l; do grep -qx "$l" .config || echo "$l"; done)
[ -z "$missing" ] || die "kernel.config asks for options the kernel did not take: $missing"
make -s -j"$(nproc)" bzImage >/dev/null
cp arch/x86/boot/bzImage .config "$OUT.tmp/"
cd "$OUT.tmp"
rm -rf linux-source-6.1
mv "$OUT.tmp" "$OUT"
echo "$OUT/bzImage"
