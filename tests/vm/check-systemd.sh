# The service under systemd, with the unit as shipped (sourced by run.sh).

all_results() { # all_results NAME...: each file has a result
    local n
    for n; do has_result "$n" || return 1; done
}
restarted_since() { (($(unit NRestarts) > $1)); }
status_is() { [ "$(grep '^winclip/vm/status ' "$SUB" | tail -n 1)" = "winclip/vm/status $1" ]; }
threshold_of() { # the threshold in NAME's last result
    results_of "$1" | tail -n 1 |
        sed 's/^[^ ]* //' | python3 -c 'import json, sys; print(json.load(sys.stdin)["threshold"])'
}
# The base configuration, with `threshold = T` after the bank when T is given.
config_with_threshold() {
    write_config ""
    push_config
    [ -z "${1:-}" ] || vm "sed -i 's|^bank = .*|&\nthreshold = $1|' /etc/winclip-edge/config.toml"
}

check_systemd() {
    log "systemd: the shipped unit, DynamicUser and all ($(vm systemctl --version | head -n 1))"
    wait_for 60 "the enabled service running after boot" active
    pass "enabled service started at boot: active (running)"

    # Stop: offline published, exit status 0, within TimeoutStopSec (else Result=timeout).
    local t0=$SECONDS
    vm systemctl stop winclip-edge
    [ "$(unit Result)" = success ] && [ "$(unit ExecMainStatus)" = 0 ] ||
        fail "systemctl stop: Result=$(unit Result) ExecMainStatus=$(unit ExecMainStatus)"
    wait_for 10 "status offline after stop" status_is offline
    pass "systemctl stop: exit status 0, Result=success in $((SECONDS - t0)) s (TimeoutStopSec=$(unit TimeoutStopUSec)), status offline"

    # Start: `active (running)` only once the daemon sent READY=1. systemd's own debug log
    # orders the two: the notification, then the state change start -> running.
    vm systemd-analyze log-level debug
    local at
    at=$(cursor)
    vm systemctl start winclip-edge
    vm systemd-analyze log-level info
    active || fail "systemctl start returned but the unit is $(unit ActiveState) ($(unit SubState))"
    local order
    order=$(vm "journalctl '--after-cursor=$at' --no-pager -o cat _PID=1" |
        grep -E 'winclip-edge.service: (Got notification message from PID [0-9]+ \(READY=1|Changed start -> running)' |
        sed -E 's/.*(READY=1|start -> running).*/\1/' | head -n 2 | tr '\n' ' ')
    [ "$order" = "READY=1 start -> running " ] || fail "READY=1 was not what made it running: '$order'"
    wait_for 20 "status online after start" status_is online
    pass "systemctl start: activating until READY=1, then active (running); status online"
    local status
    status=$(vm systemctl status --no-pager winclip-edge | grep 'Status: "' || true)
    [ -n "$status" ] || fail "no Status line in systemctl status"
    pass "systemctl status shows the daemon's status line: ${status## }"

    drop s1.png
    drop s2.png
    drop s3.png "$PICS/bad/000.png"
    wait_for 60 "results of s1..s3 at the host's subscriber" all_results s1.png s2.png s3.png
    vm test -f /srv/winclip/incoming/done/s1.png || fail "s1.png was not moved to done/"
    pass "3 pictures dropped: 3 results at the subscriber, files moved to done/"

    # Reload: a valid change applies; a broken file keeps the running configuration.
    config_with_threshold 0.123
    reload "the reload applying model.threshold" "^reloaded: applied model.threshold"
    drop r1.png
    wait_for 30 "the result of r1" has_result r1.png
    [ "$(threshold_of r1.png)" = 0.123 ] || fail "r1 judged at threshold $(threshold_of r1.png), not 0.123"
    pass "systemctl reload with a new threshold: applied, the next result has it"
    vm "echo 'threshold = [' >> /etc/winclip-edge/config.toml"
    reload "the broken reload refused" "reload failed, keeping the running configuration"
    active || fail "a broken reload stopped the service"
    # The reason stays in the status (also in the counters line that follows every 10 s).
    status=$(vm systemctl status --no-pager winclip-edge | grep 'Status: "' || true)
    grep -qE 'reload (failed|refused).*TOML parse error' <<<"$status" ||
        fail "systemctl status does not say why the reload failed: $status"
    vm journalctl -b -u winclip-edge -p err --no-pager -o cat | grep -q "^reload failed, keeping" ||
        fail "the refused reload is not logged at priority err (journalctl -p err)"
    drop r2.png
    wait_for 30 "the result of r2" has_result r2.png
    [ "$(threshold_of r2.png)" = 0.123 ] || fail "after a broken reload r2 was judged at $(threshold_of r2.png)"
    pass "systemctl reload with a broken file: old configuration kept, the reason in systemctl status and in the journal at priority err"
    config_with_threshold ""

    # Watchdog: a stopped (hung) process is killed and restarted; nothing dropped meanwhile
    # is lost. The shipped WatchdogSec=120 is shortened in a drop-in to keep the test short.
    dropin vm-watchdog WatchdogSec=6
    active || fail "restart with the watchdog drop-in"
    local pid restarts
    pid=$(unit MainPID)
    restarts=$(unit NRestarts)
    vm systemctl kill --kill-who=main -s SIGSTOP winclip-edge
    drop w1.png
    drop w2.png
    wait_for 60 "the watchdog restarting the stopped process" restarted_since "$restarts"
    wait_for 60 "running again after the watchdog" active
    [ "$(unit MainPID)" != "$pid" ] || fail "the same process after a watchdog restart"
    journal_has "Watchdog timeout" || fail "no watchdog timeout in the journal"
    wait_for 60 "the results of w1, w2 after the restart" all_results w1.png w2.png
    pass "SIGSTOP: watchdog timeout, killed and restarted (NRestarts $restarts -> $(unit NRestarts)), the 2 pictures dropped meanwhile judged"
    dropin vm-watchdog

    # Exit status 2 (a configuration that cannot work) ends the restart loop.
    vm "sed -i 's|^bank = .*|bank = \"/var/lib/winclip-edge/models/missing\"|' /etc/winclip-edge/config.toml"
    vm systemctl restart winclip-edge 2>/dev/null && fail "a start with a missing bank succeeded"
    sleep 6 # RestartSec=2: a restart loop would have restarted it by now
    [ "$(unit ActiveState)" = failed ] && [ "$(unit ExecMainStatus)" = 2 ] && [ "$(unit NRestarts)" = 0 ] ||
        fail "bad configuration: $(unit ActiveState), status $(unit ExecMainStatus), $(unit NRestarts) restarts"
    pass "bad configuration: exit status 2, failed, not restarted (RestartPreventExitStatus=2)"
    config_with_threshold ""
    vm "systemctl reset-failed winclip-edge && systemctl start winclip-edge"
    active || fail "start after restoring the configuration"

    # One journal line per inspection, over every boot of the service above.
    local n name
    for name in s1 s2 s3 r1 r2 w1 w2; do
        n=$(vm journalctl -u winclip-edge --no-pager -o cat | grep -c "^cam1 /srv/winclip/incoming/$name.png: " || true)
        [ "$n" = 1 ] || fail "$n journal lines for the inspection of $name.png"
    done
    pass "the journal has one line per inspection (7 pictures)"

    EXPOSURE=$(vm systemd-analyze security --no-pager winclip-edge.service | tail -n 1)
    pass "systemd-analyze security: ${EXPOSURE#→ }"
}
