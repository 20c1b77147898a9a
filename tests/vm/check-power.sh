# Power cuts while pictures stream in (sourced by run.sh): qemu is killed (SIGKILL) at a
# random moment; after every boot the service must come up by itself, and at the end every
# picture in done/ must have its result at the host's subscriber, duplicates only under the
# same inspection id.

# Waits until nothing is left to do: no picture waiting in the drop directory, the outbox empty.
drained() {
    vm 'ls /srv/winclip/incoming/ | grep -q "\.png$" && exit 1
        [ -z "$(find /var/lib/private/winclip-edge/outbox -maxdepth 1 -type f -name "*.json" 2>/dev/null)" ]'
}

check_power() {
    local runs=$1 r delay
    ((runs > 0)) || { log "power cuts skipped (WINCLIP_VM_POWER_RUNS=0)"; return 0; }
    log "power cuts: $runs runs, each killing qemu 0.5-5 s into a stream of 40 pictures (one every 50 ms); every third also teaches, cut 3-20 s in"
    local boots_before=$BOOTS
    for r in $(seq 1 "$runs"); do
        vm_boot
        wait_for 90 "the service running by itself after power cut $((r - 1))" active
        vm "systemd-run --quiet --unit=vm-feed-$r --collect /usr/local/bin/vm-feed p$r 40 0.05"
        # Every third run also teaches a picture while the stream goes on, and is cut later:
        # a rebuild takes ≈ 10 s under TCG, so some finish (a new recipe version is
        # written) and some are cut while they write.
        local from=0.5 to=5.0
        if ((r % 3 == 0)); then
            sleep 0.5
            mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t winclip/vm/cmd \
                -m "{\"command\": \"teach\", \"source\": \"cam1\", \"as\": \"calibration\", \"request_id\": \"t$r\"}"
            from=3.0 to=20.0
        fi
        delay=$(python3 -c "import random; print(round(random.uniform($from, $to), 2))")
        sleep "$delay"
        vm_kill
        printf '  run %2d: power cut %s s after the stream started\n' "$r" "$delay"
    done
    vm_boot
    wait_for 90 "the service running by itself after the last power cut" active
    wait_for 180 "every picture judged and the outbox delivered" drained
    vm 'cd /srv/winclip/incoming && ls done failed 2>/dev/null' >"$WORK/power-files.txt" || true
    vm 'journalctl -u winclip-edge --no-pager -o cat' >"$WORK/power-journal.txt"
    local restarts
    restarts=$(unit NRestarts)
    ((restarts == 0)) || fail "the service restarted $restarts times by itself after the last boot"
    vm 'readlink /var/lib/winclip-edge/models/part/current; ls /var/lib/winclip-edge/models/part/versions' >"$WORK/power-recipe.txt"
    python3 "$HERE/power_report.py" --sub "$SUB" --files "$WORK/power-files.txt" \
        --journal "$WORK/power-journal.txt" --recipe "$WORK/power-recipe.txt" \
        --runs "$runs" --boots $((BOOTS - boots_before)) --hung "$HUNG_BOOTS" | tee "$WORK/power-report.md" ||
        fail "power cuts: see $WORK/power-report.md"
    pass "power cuts: $runs runs, every picture in done/ delivered (table above)"
    vm_poweroff
}
