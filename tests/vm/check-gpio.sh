# GPIO on a real kernel: a gpio-sim chip made through configfs, driven through its sysfs
# attributes, the service's line requests through /dev/gpiochipN (sourced by run.sh).
# Lines: 0 the trigger; 8..13 the PLC outputs ready, busy, pass, fail, error, result_valid.

SIM=
CHIP=
sim_line() { echo "/sys/devices/platform/$SIM/$CHIP/sim_gpio$1"; }
pull() { vm "echo pull-$2 > $(sim_line "$1")/pull"; } # pull LINE up|down: the PLC drives it
level() { vm cat "$(sim_line "$1")/value"; }        # what the service drives on LINE
level_is() { [ "$(level "$1")" = "$2" ]; }
plc_results() { grep '^winclip/vm/result ' "$SUB" | grep -c '"source":"plc"' || true; }
plc_results_are() { [ "$(plc_results)" = "$1" ]; }
holder() { vm gpioinfo "$CHIP" | grep -E "^\s+line\s+$1:" | grep -o '"winclip-edge"' || true; }
held() { [ -n "$(holder "$1")" ]; }
released() { [ -z "$(holder "$1")" ]; }
gpio_source() { # gpio_source EDGE CAPTURE: the configuration with the PLC's source
    write_config "[[source]]
type = \"gpio\"
name = \"plc\"
chip = \"/dev/$CHIP\"
line = 0
edge = \"$1\"
debounce_ms = 50
capture = $2
[source.outputs]
ready = { line = 8 }
busy = { line = 9 }
pass = { line = 10 }
fail = { line = 11 }
error = { line = 12 }
result_valid = { line = 13 }
hold_ms = 60000"
}
# The configuration write_config made, into the machine, and applied: `reloaded:` logged.
reload_with() { # reload_with WHAT
    push_config
    reload "$1" "^reloaded: "
}
# Five pulses of microseconds on the trigger line, far shorter than debounce_ms.
glitches() { vm "p=$(sim_line 0)/pull; for i in 1 2 3 4 5; do echo pull-up > \$p; echo pull-down > \$p; done"; }
chip_in_gpio_group() { [ "$(vm stat -c %G:%a "/dev/$CHIP")" = gpio:660 ]; }

check_gpio() {
    log "GPIO: gpio-sim on Linux $(vm uname -r)"
    vm 'set -e; cd /sys/kernel/config/gpio-sim; mkdir plc plc/gpio-bank0
        echo 16 > plc/gpio-bank0/num_lines; echo 1 > plc/live'
    SIM=$(vm cat /sys/kernel/config/gpio-sim/plc/dev_name)
    CHIP=$(vm cat /sys/kernel/config/gpio-sim/plc/gpio-bank0/chip_name)
    wait_for 10 "/dev/$CHIP in group gpio (the .deb's udev rule)" chip_in_gpio_group
    pass "gpio-sim chip $CHIP ($SIM) made through configfs; /dev/$CHIP is root:gpio 0660"

    # A new source on reload: the line requested through DeviceAllow=char-gpiochip.
    local copy="[\"/bin/cp\", \"$PICS/good/011.png\", \"{output}\"]"
    gpio_source rising "$copy"
    reload_with "the reload adding the GPIO source"
    wait_for 10 "the trigger line held by the service" held 0
    wait_for 10 "ready high" level_is 8 1
    pass "reload added the GPIO source: line 0 requested by \"winclip-edge\", ready (line 8) high"

    # The handshake: busy, then exactly one result line, then result_valid, held until the
    # trigger drops.
    pull 0 up
    wait_for 30 "result_valid after a trigger" level_is 13 1
    local lines
    lines="$(level 9)$(level 10)$(level 11)$(level 12)"
    [ "$lines" = 0100 ] || [ "$lines" = 0010 ] || [ "$lines" = 0001 ] ||
        fail "busy,pass,fail,error = $lines at result_valid (want busy low and exactly one result line)"
    wait_for 30 "one result from the trigger" plc_results_are 1
    sleep 0.5
    level_is 13 1 || fail "result_valid fell while the trigger is still up"
    pull 0 down
    wait_for 10 "result_valid low after the trigger dropped" level_is 13 0
    [ "$(level 10)$(level 11)$(level 12)" = 000 ] || fail "result lines still up after result_valid fell"
    plc_results_are 1 || fail "the falling edge triggered with edge = \"rising\""
    pass "handshake: busy, one result line ($lines), result_valid until the trigger drops, then all low; no trigger on the falling edge"

    # Debounce (kernel, uAPI v2): pulses far shorter than 50 ms are not triggers.
    glitches
    sleep 1
    plc_results_are 1 || fail "glitches shorter than debounce_ms triggered ($(plc_results) results)"
    journal_has "kernel debounce unavailable" && fail "the kernel's debounce was not used"
    pass "debounce_ms = 50 in the kernel: 5 glitches of microseconds, no trigger"

    # A trigger while busy (a capture that takes 4 s): answered with an error result, the
    # outputs answer the accepted trigger.
    gpio_source rising "[\"/bin/sh\", \"-c\", \"sleep 4; cp $PICS/good/012.png \\\"\$1\\\"\", \"sh\", \"{output}\"]"
    reload_with "the reload changing the capture"
    wait_for 10 "ready high after the source restarted" level_is 8 1
    # Both triggers in one command: each ssh round trip takes a while under TCG.
    vm "p=$(sim_line 0)/pull; echo pull-up > \$p; sleep 0.3; echo pull-down > \$p; sleep 0.3
        echo pull-up > \$p; sleep 0.3; echo pull-down > \$p"
    wait_for 30 "two results (the trigger and the one while busy)" plc_results_are 3
    grep '^winclip/vm/result ' "$SUB" | grep '"source":"plc"' | tail -n 2 | grep -q '"verdict":"error".*station busy\|station busy.*"verdict":"error"' ||
        fail "no error result saying the station was busy"
    pass "a trigger while busy: an error result (\"station busy\"), the accepted one judged"

    # Edge selection changed live: the line is released and requested again.
    gpio_source falling "$copy"
    reload_with "the reload changing the edge"
    wait_for 10 "the line held again" held 0
    wait_for 10 "ready high" level_is 8 1
    pull 0 up
    sleep 1
    plc_results_are 3 || fail "a rising edge triggered with edge = \"falling\""
    pull 0 down
    wait_for 30 "a result on the falling edge" plc_results_are 4
    pass "reload to edge = \"falling\": line requested again, rising edge ignored, falling edge triggers"

    # Stop releases the lines (ready reads the pull-down); start requests them again.
    vm systemctl stop winclip-edge
    released 0 || fail "line 0 still held after stop"
    level_is 8 0 || fail "ready not low after stop"
    vm systemctl start winclip-edge
    wait_for 10 "the line held after start" held 0
    wait_for 10 "ready high after start" level_is 8 1
    pass "stop releases every line (ready low), start requests them again"

    # uAPI v1, which this kernel also offers (CONFIG_GPIO_CDEV_V1): forced for the test. It
    # has no kernel debounce, so the trigger debounces in software: the first edge counts,
    # edges in the 50 ms after it do not.
    dropin vm-uapi Environment=WINCLIP_GPIO_UAPI=v1
    wait_for 10 "the line held through uAPI v1" held 0
    wait_for 10 "ready high (uAPI v1)" level_is 8 1
    journal_has "GPIO: uAPI V1 on /dev/$CHIP" || fail "the uAPI v1 request is not in the journal"
    journal_has "kernel debounce unavailable" || fail "uAPI v1 did not fall back to the software debounce"
    glitches
    wait_for 30 "one result for five glitches (uAPI v1)" plc_results_are 5
    sleep 1
    plc_results_are 5 || fail "five glitches gave $(($(plc_results) - 4)) triggers with the software debounce"
    dropin vm-uapi
    pass "uAPI v1 (forced): line requested, software debounce: five glitches, one trigger"
    write_config ""
    reload_with "the reload removing the GPIO source"
    wait_for 10 "line 0 released after the source was removed" released 0
}
