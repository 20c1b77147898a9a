#!/usr/bin/env bash
# Build the .deb of an already built dist-profile binary and check its contents.
#   cross/package-deb.sh                             # host (amd64): target/dist/winclip-edge
#   cross/package-deb.sh aarch64-unknown-linux-gnu   # arm64: target/cross/aarch64-unknown-linux-gnu/dist/
#   cross/package-deb.sh --tool                      # only install cargo-deb (if missing)
# Output: target/debian/winclip-edge_<version>-1_<arch>.deb
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${1:-}
# tests/run may install it in the background while a build runs: one installer at a time.
exec 9>"${TMPDIR:-/tmp}/winclip-cargo-deb.lock"
flock 9
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --locked --version 3.8.0 >/dev/null
fi
flock -u 9
[ "$TARGET" = --tool ] && exit 0
args=(--no-build --no-strip --output target/debian/)
if [ -n "$TARGET" ]; then
    export CARGO_TARGET_DIR="$ROOT/target/cross"
    args+=(--target "$TARGET")
fi
mkdir -p target/debian
DEB=$(cargo deb "${args[@]}" | tail -1)
echo "built $DEB"
CONTENTS=$(dpkg-deb -c "$DEB")
for f in ./usr/bin/winclip-edge ./etc/winclip-edge/config.toml ./usr/share/winclip-edge/models/tiny/manifest.toml \
         ./usr/share/winclip-edge/models/tiny/reference/reference.safetensors ./usr/lib/systemd/system/winclip-edge.service \
         ./usr/lib/udev/rules.d/60-winclip-edge-gpio.rules; do
    grep -q " $f\$" <<<"$CONTENTS" || { echo "missing in $DEB: $f" >&2; exit 1; }
done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
dpkg-deb -e "$DEB" "$TMP"
grep -qx /etc/winclip-edge/config.toml "$TMP/conffiles" || { echo "config.toml is not a conffile" >&2; exit 1; }
grep -q "groupadd --system gpio" "$TMP/postinst" || { echo "postinst lacks the gpio group" >&2; exit 1; }
grep -q "deb-systemd-helper" "$TMP/postinst" || { echo "postinst lacks the systemd unit handling" >&2; exit 1; }
dpkg-deb --field "$DEB" Package Version Architecture Depends Installed-Size
echo "$DEB"
