#!/usr/bin/env bash
# The service as installed from its .deb, under a real systemd and a real kernel with a
# simulated GPIO chip, in a virtual machine (KVM where it can run, TCG elsewhere); then
# power cuts while pictures stream in.
#   sudo tests/vm/run.sh target/debian/winclip-edge_<version>_amd64.deb
#   WINCLIP_VM_POWER_RUNS=20 (default) power cuts; 0 skips them
#   WINCLIP_VM_CHECKS=systemd,gpio,power (default: all three)
# Needs root (debootstrap, the image's file owners), qemu-system-x86, mosquitto on the host.
# What it checks and why: tests/vm/README.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"
[ "$(id -u)" = 0 ] || die "must run as root"
[ -f "${1:-}" ] || die "usage: $0 path/to/winclip-edge_<version>_amd64.deb"
DEB=$(realpath "$1")
POWER_RUNS=${WINCLIP_VM_POWER_RUNS:-20}
# Which checks (while working on one): any of systemd,gpio,power.
CHECKS=${WINCLIP_VM_CHECKS:-systemd,gpio,power}
WORK=${WINCLIP_VM_WORK:-$REPO/target/vm}
T_START=$SECONDS

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
command -v ssh >/dev/null || need+=(openssh-client)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

KERNEL=$("$HERE/build-kernel.sh")
BASE=$("$HERE/build-root.sh")
log "kernel $KERNEL, root $BASE (ready after $((SECONDS - T_START)) s)"

# --- the machine's disk: the cached root, the .deb installed, the test's configuration ----
rm -rf "$WORK"
mkdir -p "$WORK"
ROOT=$WORK/root
cp -a "$BASE" "$ROOT"
cp "$DEB" "$ROOT/tmp/winclip-edge.deb"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    dpkg -i /tmp/winclip-edge.deb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log" >&2; die "dpkg -i failed"; }
rm "$ROOT/tmp/winclip-edge.deb"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
cp "$WORK/key.pub" "$ROOT/root/.ssh/authorized_keys"
chmod 600 "$ROOT/root/.ssh/authorized_keys"

BIN=$ROOT/usr/bin/winclip-edge
PICS=/var/lib/vmtest/pictures
"$BIN" synth --out "$ROOT$PICS" --good 16 --bad 4 >/dev/null
mkdir "$WORK/calibration"
cp "$ROOT$PICS"/good/00[2-7].png "$WORK/calibration/"
# The recipe directory (teach and rollback write new versions of it) in the service's state.
"$BIN" bank --model "$ROOT/usr/share/winclip-edge/models/tiny" --object bottle \
    --shots "$ROOT$PICS/good/000.png" "$ROOT$PICS/good/001.png" \
    --calibrate "$WORK/calibration" \
    --recipe-dir "$ROOT/var/lib/winclip-edge/models/part" >"$WORK/bank.log"

# A camera: pictures written under a temporary name, flushed, renamed into place.
cat >"$ROOT/usr/local/bin/vm-feed" <<'FEED'
#!/bin/sh
# vm-feed PREFIX COUNT [SECONDS]: COUNT pictures into the drop directory, one every SECONDS.
prefix=$1 n=$2 gap=${3:-0.1} i=0
# Not the recipe's own pictures (000-007), so a `teach` of the last one can succeed.
set -- /var/lib/vmtest/pictures/good/00[89].png /var/lib/vmtest/pictures/good/01*.png
while [ "$i" -lt "$n" ]; do
    k=$((i % $# + 1))
    eval src=\${$k}
    tmp=/srv/winclip/incoming/.$prefix-$i.tmp
    cp "$src" "$tmp" && sync "$tmp" && mv "$tmp" "/srv/winclip/incoming/$prefix-$i.png"
    i=$((i + 1))
    sleep "$gap"
done
FEED
chmod 755 "$ROOT/usr/local/bin/vm-feed"

# The station's configuration (the broker is the host's: 10.0.2.2 is the host's loopback
# through qemu's user-mode network).
MQTT_PORT=$(free_port)
SSH_PORT=$(free_port)
write_config() { # write_config EXTRA: the base configuration plus EXTRA (more sources)
    cat >"$WORK/config.toml" <<CONF
[station]
name = "vm"
state_dir = "/var/lib/winclip-edge"
threads = 2
[model]
pack = "/usr/share/winclip-edge/models/tiny"
bank = "/var/lib/winclip-edge/models/part"
# Good parts after one forward pass: under TCG (no KVM) a full inspection takes seconds.
early_exit = true
[mqtt]
host = "10.0.2.2"
port = $MQTT_PORT
reconnect_min_ms = 100
reconnect_max_ms = 1000
[commands]
enabled = true
[[source]]
type = "directory"
name = "cam1"
path = "/srv/winclip/incoming"
after = "move"
$1
CONF
}
write_config ""
cp "$WORK/config.toml" "$ROOT/etc/winclip-edge/config.toml"
# As a user would: the service starts at boot.
chroot "$ROOT" systemctl enable winclip-edge.service >/dev/null 2>&1
mke2fs -q -t ext4 -L root -d "$ROOT" "$WORK/disk.img" 2G
rm -rf "$ROOT"
log "disk ready after $((SECONDS - T_START)) s"

# --- the host's broker and a subscriber that keeps every result ---------------------------
mkdir -p "$WORK/broker"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" >"$WORK/broker/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/broker/mosquitto.conf" >"$WORK/broker/log" 2>&1 &
BROKER_PID=$!
cleanup() {
    [ -n "$QEMU_PID" ] && vm_kill
    kill "$BROKER_PID" "${SUB_PID:-}" 2>/dev/null || true
}
trap cleanup EXIT
sleep 0.5
SUB=$WORK/sub.log
mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -i winclip-vm-sub -c -v \
    -t winclip/vm/result -t winclip/vm/status -t winclip/vm/state -t winclip/vm/cmd/reply >"$SUB" &
SUB_PID=$!

results() { grep -c '^winclip/vm/result ' "$SUB" || true; }
# Results for the drop directory file NAME (moved or not, its record names where it arrived).
results_of() { grep -F "\"file\":\"/srv/winclip/incoming/$1\"" "$SUB" | grep '^winclip/vm/result ' || true; }
results_for() { results_of "$1" | grep -c . || true; }
has_result() { (($(results_for "$1") >= 1)); }
drop() { # drop NAME [PICTURE]: as a camera does
    local src=${2:-$PICS/good/010.png}
    vm "cp $src /srv/winclip/incoming/.$1 && mv /srv/winclip/incoming/.$1 /srv/winclip/incoming/$1"
}
unit() { vm systemctl show -P "$1" winclip-edge; }
# A drop-in for the unit, or its removal (no CONTENT), then the service restarted with it.
dropin() { # dropin NAME [CONTENT]
    local d=/etc/systemd/system/winclip-edge.service.d
    if [ -n "${2:-}" ]; then
        vm "mkdir -p $d && printf '[Service]\n$2\n' > $d/$1.conf"
    else
        vm rm "$d/$1.conf"
    fi
    vm "systemctl daemon-reload && systemctl restart winclip-edge"
}
# The configuration write_config made, into the machine.
push_config() { vm "cat > /etc/winclip-edge/config.toml" <"$WORK/config.toml"; }
active() { [ "$(unit ActiveState)" = active ] && [ "$(unit SubState)" = running ]; }
journal_has() { vm journalctl -b -u winclip-edge --no-pager -o cat | grep -q -- "$1"; }
# Where the journal ends now, and what the service logged after such a point.
cursor() { vm journalctl -n 1 --no-pager -o cat --show-cursor | sed -n 's/^-- cursor: //p'; }
journal_after() { vm "journalctl '--after-cursor=$1' -u winclip-edge --no-pager -o cat" | grep -q -- "$2"; }
reload() { # reload WHAT PATTERN: systemctl reload, then wait for the daemon to log PATTERN
    local at
    at=$(cursor)
    vm systemctl reload winclip-edge
    wait_for 60 "$1" journal_after "$at" "$2"
}

. "$HERE/check-systemd.sh"
. "$HERE/check-gpio.sh"
. "$HERE/check-power.sh"

selected() { [[ ",$CHECKS," == *",$1,"* ]]; }
vm_boot
for c in systemd gpio; do
    selected $c || continue
    T0=$SECONDS
    check_$c
    log "$c checks: $((SECONDS - T0)) s"
done
vm_poweroff
if selected power; then
    T0=$SECONDS
    check_power "$POWER_RUNS"
    log "power cuts: $((SECONDS - T0)) s"
fi
log "all $PASSED checks passed in $((SECONDS - T_START)) s"
