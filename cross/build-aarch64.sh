#!/usr/bin/env bash
# Build winclip-edge for aarch64 on a Debian x86-64 machine without Docker: the
# JetPack-5-compatible release binary (glibc <= 2.31, cargo-zigbuild) and the arm64
# .deb, checked under qemu-aarch64 (parity with the reference, the demo).
#
#   sudo cross/build-aarch64.sh
#   sudo cross/build-aarch64.sh --prepare   # only make the chroot and its toolchain (network),
#                                           # so tests/run can do it while it compiles
#
# tests/run --all then runs the integration tests against this binary under
# qemu-aarch64 (the test harness itself runs natively: see tests/run).
#
# It works in a Debian trixie chroot (debootstrap) with Debian's cross toolchain,
# created once under $WINCLIP_CROSS_CHROOT (default /var/tmp/winclip-cross-trixie);
# the host only needs debootstrap. Every mount is undone on exit, also on failure.
# Results: target/cross/aarch64-unknown-linux-gnu/dist/winclip-edge (the dist profile: fat LTO)
# and target/debian/*.deb.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHROOT=${WINCLIP_CROSS_CHROOT:-/var/tmp/winclip-cross-trixie}
MIRROR=${WINCLIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}

PREPARE=0
[ "${1:-}" = "--prepare" ] && PREPARE=1

step() { printf '\n=== [aarch64] %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "cross/build-aarch64.sh must run as root (debootstrap, chroot, mounts)" >&2; exit 1; }

MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
trap cleanup EXIT INT TERM
bind() { # bind SRC DEST-inside-chroot
    mkdir -p "$CHROOT$2"
    mount --bind "$1" "$CHROOT$2"
    MOUNTS+=("$CHROOT$2")
}

# --- the chroot (once) -----------------------------------------------------------
if [ ! -f "$CHROOT/.debootstrap-done" ]; then
    step "creating the trixie chroot in $CHROOT"
    command -v debootstrap >/dev/null || { apt-get install -y -qq debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }; }
    if findmnt -R "$CHROOT" >/dev/null 2>&1; then
        echo "refusing to reuse $CHROOT: something is still mounted inside it" >&2
        exit 1
    fi
    rm -rf "$CHROOT"
    debootstrap --variant=minbase --include=ca-certificates trixie "$CHROOT" "$MIRROR" >/dev/null
    touch "$CHROOT/.debootstrap-done"
fi
# This sandbox's apt settings and extra CA certificates (harmless elsewhere).
cp /etc/apt/apt.conf.d/* "$CHROOT/etc/apt/apt.conf.d/" 2>/dev/null || true
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$CHROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$CHROOT/usr/local/share/ca-certificates/"
fi
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
bind /proc /proc
bind /sys /sys
bind /dev /dev
bind /dev/pts /dev/pts
bind "$ROOT" /src
# Share the host's crate downloads when there are any.
if [ -d "${CARGO_HOME:-$HOME/.cargo}/registry" ]; then
    bind "${CARGO_HOME:-$HOME/.cargo}/registry" /root/.cargo/registry
fi

in_chroot() {
    chroot "$CHROOT" /usr/bin/env -i HOME=/root PATH=/opt/zig/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        TERM=dumb LANG=C.UTF-8 bash -c "$1"
}

if [ ! -f "$CHROOT/.winclip-ready" ]; then
    step "installing Debian's cross toolchain, qemu-user, mosquitto and cargo-zigbuild in the chroot"
    in_chroot '
        set -e
        update-ca-certificates >/dev/null
        dpkg --add-architecture arm64
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu \
            libc6-dev-arm64-cross binutils-aarch64-linux-gnu qemu-user pkg-config make cmake file \
            mosquitto mosquitto-clients openssl systemd python3-venv dpkg-dev >/dev/null
        python3 -m venv /opt/zig
        /opt/zig/bin/pip install -q --disable-pip-version-check --cert /etc/ssl/certs/ca-certificates.crt ziglang==0.15.2 cargo-zigbuild==0.24.1
    '
    touch "$CHROOT/.winclip-ready"
fi
if [ "$PREPARE" = 1 ]; then
    step "the chroot is ready"
    exit 0
fi
ENV='export CARGO_TARGET_DIR=/src/target/cross
export PKG_CONFIG_ALLOW_CROSS=1 CARGO_TERM_COLOR=never
cd /src
cargo --version'

T1=$(date +%s)

step "release build for glibc 2.31 (JetPack 5) with cargo-zigbuild"
# zig does the compiling and linking (the binary needs no newer glibc than 2.31).
in_chroot "$ENV
    cargo zigbuild --locked --profile dist --target aarch64-unknown-linux-gnu.2.31"
T2=$(date +%s)

step "checking the release binary"
in_chroot '
    set -e
    cd /src
    BIN=target/cross/aarch64-unknown-linux-gnu/dist/winclip-edge
    KIND=$(file -b "$BIN")
    echo "$KIND"
    grep -q "ARM aarch64" <<<"$KIND" || { echo "not an aarch64 ELF" >&2; exit 1; }
    GLIBC=$(aarch64-linux-gnu-objdump -T "$BIN" | grep -o "GLIBC_[0-9.]*" | sort -uV | tail -1)
    echo "highest glibc symbol version required: $GLIBC"
    [ "$(printf "%s\nGLIBC_2.31\n" "$GLIBC" | sort -V | tail -1)" = GLIBC_2.31 ] || { echo "needs newer glibc than 2.31" >&2; exit 1; }
    echo "stripped size: $(stat -c %s "$BIN") bytes"
    # A Cortex-A76 (ARMv8.2 with fp16, like the A78AE of an Orin): the default "max" CPU
    # of qemu advertises SVE2, which tract then uses and qemu emulates ~10x slower.
    QEMU="qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu"
    $QEMU "$BIN" --version
    $QEMU "$BIN" model verify --model models/tiny | tail -1
    # The int8 and bf16 kernels against the portable ones on three Arm CPUs: no dot product
    # (Cortex-A53: the portable kernels only), dot product (A76, as an Orin), and "max"
    # (dot product, i8mm and BF16: the bfdot kernel).
    for cpu in cortex-a53 cortex-a76 max; do
        echo "int8 and bf16 kernels on qemu -cpu $cpu:"
        qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu "$BIN" model kernels
    done
    rm -rf /tmp/aarch64-demo
    $QEMU "$BIN" demo --images 4 --dir /tmp/aarch64-demo 2>/dev/null | grep -E "results and|latency|throughput"
'
T3=$(date +%s)

step "arm64 .deb"
"$ROOT/cross/package-deb.sh" aarch64-unknown-linux-gnu

step "done: zig release build $((T2 - T1)) s, checks $((T3 - T2)) s"
