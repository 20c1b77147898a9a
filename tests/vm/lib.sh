# Shared by the scripts in tests/vm/ (sourced, not run).
SUITE=bookworm
MIRROR=${WINCLIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
WINCLIP_VM_CACHE=${WINCLIP_VM_CACHE:-/var/tmp/winclip-vm}
log() { printf '[vm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    printf '[vm] FAILED: %s\n' "$*" >&2
    exit 1
}

# --- the machine (run.sh sets WORK, KERNEL, SSH_PORT, MQTT_PORT) ----------------------------
BOOTS=0
HUNG_BOOTS=0
QEMU_PID=
# KVM where it can run a guest: /dev/kvm usable and the CPU's virtualisation extensions
# visible (a VM without nested virtualisation may have /dev/kvm whose guests never get past
# the firmware). Elsewhere TCG, software emulation, several times slower, with a warning;
# its CPU is one without AVX, whose instructions TCG emulates slowly (glibc and tract then
# take their SSE paths: the tiny pack inspects ≈ 1.7× faster than with `-cpu max`).
ACCEL=()
TCG=(-accel tcg,thread=multi -cpu Nehalem)
pick_accel() {
    if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        # arch-capabilities: nested hosts refuse the MSR qemu sets for it.
        ACCEL=(-accel kvm -cpu host,-arch-capabilities)
        log "accelerator: KVM"
    else
        ACCEL=("${TCG[@]}")
        log "WARNING: no usable KVM here ($([ -e /dev/kvm ] || echo 'no /dev/kvm')$([ -e /dev/kvm ] && echo 'the CPU shows neither vmx nor svm')): the machine runs under TCG, software emulation, several times slower"
    fi
}
# Boot the disk in $WORK/disk.img; returns once ssh answers.
vm_boot() {
    ((${#ACCEL[@]})) || pick_accel
    BOOTS=$((BOOTS + 1))
    # -no-reboot: a reboot ends qemu. The disk is cache=writeback: what the guest flushed
    # reaches the host file, what is only in the guest's page cache is lost with qemu.
    qemu-system-x86_64 "${ACCEL[@]}" -smp 2 -m 1536 -nodefaults -no-user-config -display none -no-reboot \
        -kernel "$KERNEL" \
        -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 ip=10.0.2.15::10.0.2.2:255.255.255.0:winclip-vm:eth0:off panic=-1" \
        -drive "file=$WORK/disk.img,format=raw,if=virtio,cache=writeback" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22" -device virtio-net-pci,netdev=n0 \
        -device virtio-rng-pci \
        -serial "file:$WORK/console-$BOOTS.log" &
    QEMU_PID=$!
    local t0=$SECONDS limit=120
    # A first KVM boot that prints nothing for a minute is a KVM that cannot run guests.
    [ "$BOOTS" = 1 ] && [ "${ACCEL[1]}" = kvm ] && limit=60
    until VM_TIMEOUT=10 vm true 2>/dev/null; do
        if ! kill -0 "$QEMU_PID" 2>/dev/null || ((SECONDS - t0 >= limit)); then
            vm_kill
            if [ "$limit" = 60 ] && [ ! -s "$WORK/console-$BOOTS.log" ]; then
                log "WARNING: KVM did not boot the machine (no console output in 60 s): TCG from now on"
                ACCEL=("${TCG[@]}")
                vm_boot
                return
            fi
            # A guest that hangs while booting (seen under TCG, about once in 30 boots,
            # before journald starts) is power-cycled once; twice is a failure.
            if ((${HUNG_RETRY:-0} == 0)); then
                HUNG_BOOTS=$((HUNG_BOOTS + 1))
                log "WARNING: boot $BOOTS hung (no ssh after $((SECONDS - t0)) s; console-$BOOTS.log ends: $(tail -n 1 "$WORK/console-$BOOTS.log" | tr -cd '[:print:]' | cut -c1-100)): power-cycling it"
                HUNG_RETRY=1 vm_boot
                return
            fi
            tail -n 40 "$WORK/console-$BOOTS.log" >&2
            die "no ssh after $((SECONDS - t0)) s, twice (console-$BOOTS.log)"
        fi
        sleep 0.5
    done
    log "boot $BOOTS: ssh after $((SECONDS - t0)) s"
}
# Power cut: qemu killed without warning to the guest.
vm_kill() {
    kill -KILL "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
}
# A clean shutdown (waits for qemu to end).
vm_poweroff() {
    vm systemctl poweroff 2>/dev/null || true
    local t0=$SECONDS
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        ((SECONDS - t0 < 60)) || { vm_kill; die "the machine did not power off within 60 s"; }
        sleep 0.5
    done
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
}
# Run a shell command in the machine as root, for at most $VM_TIMEOUT seconds (default 120:
# a guest that stops answering fails the check instead of hanging the run; ssh's own
# ConnectTimeout does not cover a connection qemu accepted for a guest that never answers).
vm() {
    timeout --kill-after=5 "${VM_TIMEOUT:-120}" ssh -q -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -o ConnectTimeout=5 -o ServerAliveInterval=5 -i "$WORK/key" -p "$SSH_PORT" root@127.0.0.1 "$@"
}

# --- checks -----------------------------------------------------------------------------------
PASSED=0
pass() {
    PASSED=$((PASSED + 1))
    printf '  ok   %s\n' "$*"
}
fail() {
    printf '  FAIL %s\n' "$*" >&2
    vm journalctl -b --no-pager -n 60 -u winclip-edge >&2 2>/dev/null || true
    die "$*"
}
# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, or fail naming WHAT.
wait_for() {
    local limit=$1 what=$2 t0=$SECONDS
    shift 2
    until "$@"; do
        ((SECONDS - t0 < limit)) || fail "$what (waited $limit s)"
        sleep 0.2
    done
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
