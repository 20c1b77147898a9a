#!/usr/bin/env bash
# The virtual machine's root file system: Debian 12 with systemd, udev, ssh and the MQTT
# clients, made once with debootstrap (network) and kept under $WINCLIP_VM_CACHE (default
# /var/tmp/winclip-vm) in a directory named after what it was built from, so a rerun on the
# same machine reuses it. Prints the directory.
#   sudo tests/vm/build-root.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap)"

# The broker is on the host (the results must outlive the machine's power cuts), so the
# image carries only the clients; gpiod's gpioinfo shows who holds a GPIO line.
PACKAGES=systemd,systemd-sysv,udev,dbus,openssh-server,mosquitto-clients,procps,gpiod
KEY=$(printf '%s\n' "$SUITE" "$PACKAGES" "$(sed -n '/^# --- setup/,$p' "$0")" | sha256sum | cut -c1-12)
ROOT=$WINCLIP_VM_CACHE/root-$KEY
if [ -f "$ROOT/.winclip-ready" ]; then
    echo "$ROOT"
    exit 0
fi
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
mkdir -p "$WINCLIP_VM_CACHE"
rm -rf "$ROOT" "$ROOT.tmp"
log "debootstrap $SUITE into $ROOT ($PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT.tmp" "$MIRROR" >&2

# --- setup (part of the cache key) ---
R=$ROOT.tmp
echo winclip-vm >"$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 winclip-vm\n' >"$R/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$R/etc/fstab"
# The kernel configures eth0 (ip= on its command line); nothing waits for a network manager.
ln -sf /dev/null "$R/etc/systemd/system/systemd-networkd-wait-online.service"
ln -sf /dev/null "$R/etc/systemd/system/apt-daily.timer"
ln -sf /dev/null "$R/etc/systemd/system/apt-daily-upgrade.timer"
ln -sf /dev/null "$R/etc/systemd/system/e2scrub_reap.service"
# Root logs in over ssh with the run's key only.
mkdir -p "$R/root/.ssh" && chmod 700 "$R/root/.ssh"
sed -i 's/^#\?PermitRootLogin.*/PermitRootLogin prohibit-password/; s/^#\?UseDNS.*/UseDNS no/' "$R/etc/ssh/sshd_config"
# The journal on disk, so what happened before a power cut can be read after it.
mkdir -p "$R/var/log/journal"
rm -f "$R/etc/machine-id" && : >"$R/etc/machine-id"
touch "$R/.winclip-ready"
mv "$R" "$ROOT"
echo "$ROOT"
