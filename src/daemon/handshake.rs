//! The PLC handshake of a GPIO source's output lines, as plain logic: what
//! each output shows after a trigger, a result, the trigger dropping, or time
//! passing. The GPIO source calls it and says what time it is; the lines are
//! reached through [`OutputLines`], so a fake chip tests it.
//!
//! ```text
//! trigger (in)   __/‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾\______
//! busy           ___/‾‾‾‾‾‾‾‾‾‾‾‾\__________________
//! pass|fail|error________________/‾‾‾‾‾‾‾‾‾‾‾‾‾\_____   (one of them)
//! result_valid   _________________/‾‾‾‾‾‾‾‾‾‾‾‾\_____   until the trigger drops, at most hold_ms
//! ready          ‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾   low while stopped, reloading or paused
//! ```
//!
//! The result lines are written before `result_valid` rises, so a PLC that
//! reads them on its rising edge reads the new result. A line configured as
//! a pulse goes low again after its pulse, whatever the trigger does.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::Instant;

use crate::config::outputs::{Outputs, Signal};
use crate::record::Verdict;

/// Output lines, driven by their logical level (active or not); the
/// implementation applies the line's polarity.
pub trait OutputLines: Send {
    /// Drive `line` active or inactive.
    fn set(&mut self, line: u32, active: bool) -> io::Result<()>;
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No trigger answered or pending.
    Idle,
    /// A trigger was accepted; its result is not in yet.
    Busy,
    /// The result is shown until the trigger drops or `until`.
    Holding { until: Instant },
}

/// The handshake of one source's outputs.
pub struct Handshake {
    cfg: Outputs,
    out: Box<dyn OutputLines>,
    phase: Phase,
    /// Pulses still active, and when each ends.
    pulses: BTreeMap<Signal, Instant>,
    /// What each wired signal is driven to now.
    levels: BTreeMap<Signal, bool>,
    /// Signals whose last drive failed: logged once, not at every retry (`ready` is
    /// brought up to date 20 times a second).
    failing: BTreeSet<Signal>,
    name: String,
}

impl Handshake {
    /// Take over `out`, whose lines were requested inactive; `name` is the source's.
    pub fn new(name: &str, cfg: Outputs, out: Box<dyn OutputLines>) -> Self {
        let levels = cfg.lines.keys().map(|s| (*s, false)).collect();
        Self {
            cfg,
            out,
            phase: Phase::Idle,
            pulses: BTreeMap::new(),
            levels,
            failing: BTreeSet::new(),
            name: name.to_string(),
        }
    }

    /// `ready` follows whether triggers are accepted.
    pub fn set_ready(&mut self, ready: bool) {
        self.drive(Signal::Ready, ready);
    }

    /// A trigger was accepted: the last result goes, `busy` rises.
    pub fn trigger(&mut self) {
        self.clear_result();
        self.drive(Signal::Busy, true);
        self.phase = Phase::Busy;
    }

    /// The result of the accepted trigger (or an answer without one, such as
    /// "paused"): one result line, then `busy` falls and `result_valid` rises.
    pub fn result(&mut self, verdict: Verdict, now: Instant) {
        self.clear_result();
        let line = match verdict {
            Verdict::Pass => Signal::Pass,
            Verdict::Fail => Signal::Fail,
            Verdict::Error => Signal::Error,
        };
        self.raise(line, now);
        self.drive(Signal::Busy, false);
        self.raise(Signal::ResultValid, now);
        self.phase = Phase::Holding {
            until: now + self.cfg.hold,
        };
    }

    /// Whether the result is being held (the source then watches the trigger).
    pub fn holding(&self) -> bool {
        matches!(self.phase, Phase::Holding { .. })
    }

    /// The trigger dropped: the held result goes.
    pub fn released(&mut self) {
        if self.holding() {
            self.clear_result();
            self.phase = Phase::Idle;
        }
    }

    /// Time passed: pulses that are due end, and a result held too long goes.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<Signal> = self
            .pulses
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            self.pulses.remove(&s);
            self.drive(s, false);
        }
        if let Phase::Holding { until } = self.phase {
            if until <= now {
                self.clear_result();
                self.phase = Phase::Idle;
            }
        }
    }

    /// When [`Self::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hold = match self.phase {
            Phase::Holding { until } => Some(until),
            _ => None,
        };
        self.pulses.values().copied().chain(hold).min()
    }

    /// Every output inactive (the source stops: a released line may float,
    /// so it is driven to its safe state first).
    pub fn safe(&mut self) {
        self.pulses.clear();
        let wired: Vec<Signal> = self.levels.keys().copied().collect();
        for s in wired {
            self.drive(s, false);
        }
        self.phase = Phase::Idle;
    }

    /// A result line or `result_valid` rises: as a pulse where it is one.
    fn raise(&mut self, signal: Signal, now: Instant) {
        let Some(line) = self.cfg.line(signal) else {
            return;
        };
        if !line.pulse.is_zero() {
            self.pulses.insert(signal, now + line.pulse);
        }
        self.drive(signal, true);
    }

    fn clear_result(&mut self) {
        // result_valid first: a PLC never sees it with half-cleared result lines.
        for s in [Signal::ResultValid, Signal::Pass, Signal::Fail, Signal::Error] {
            self.pulses.remove(&s);
            self.drive(s, false);
        }
    }

    fn drive(&mut self, signal: Signal, active: bool) {
        let Some(line) = self.cfg.line(signal).map(|l| l.line) else {
            return;
        };
        if self.levels.get(&signal) == Some(&active) {
            return;
        }
        match self.out.set(line, active) {
            Ok(()) => {
                self.levels.insert(signal, active);
                if self.failing.remove(&signal) {
                    log::info!(
                        "source {}: output {signal} (line {line}) is driven again",
                        self.name
                    );
                }
            }
            Err(e) => {
                if self.failing.insert(signal) {
                    log::error!(
                        "source {}: cannot drive output {signal} (line {line}) {}: {e}",
                        self.name,
                        if active { "active" } else { "inactive" }
                    );
                }
            }
        }
    }
}

impl Drop for Handshake {
    /// A source torn down any way (stopped, or its task aborted) leaves its
    /// outputs inactive, not showing a stale result.
    fn drop(&mut self) {
        self.safe();
    }
}

/// Output lines that remember every write, for tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The writes, in order: (line, active).
    pub(crate) type Log = Arc<Mutex<Vec<(u32, bool)>>>;

    /// Output lines logging into a shared list.
    pub(crate) struct Logged(pub(crate) Log);

    impl OutputLines for Logged {
        fn set(&mut self, line: u32, active: bool) -> io::Result<()> {
            self.0.lock().unwrap().push((line, active));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::fake::{Log, Logged};
    use super::*;
    use crate::config::outputs::OutputLine;

    const PASS: u32 = 10;
    const FAIL: u32 = 11;
    const ERROR: u32 = 12;
    const BUSY: u32 = 13;
    const READY: u32 = 14;
    const VALID: u32 = 15;

    fn outputs(pulse_fail: Duration) -> Outputs {
        let level = |line| OutputLine {
            line,
            active_low: false,
            pulse: Duration::ZERO,
        };
        Outputs {
            chip: "/dev/fake".into(),
            hold: Duration::from_millis(500),
            lines: [
                (Signal::Pass, level(PASS)),
                (
                    Signal::Fail,
                    OutputLine {
                        pulse: pulse_fail,
                        ..level(FAIL)
                    },
                ),
                (Signal::Error, level(ERROR)),
                (Signal::Busy, level(BUSY)),
                (Signal::Ready, level(READY)),
                (Signal::ResultValid, level(VALID)),
            ]
            .into(),
        }
    }

    fn rig(pulse_fail: Duration) -> (Handshake, Log) {
        let log = Log::default();
        let h = Handshake::new("t", outputs(pulse_fail), Box::new(Logged(log.clone())));
        (h, log)
    }

    fn take(log: &Log) -> Vec<(u32, bool)> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[test]
    fn a_trigger_raises_busy_and_its_result_sets_one_line_then_result_valid_until_the_trigger_drops() {
        let (mut h, log) = rig(Duration::ZERO);
        h.set_ready(true);
        assert_eq!(take(&log), [(READY, true)]);
        let t0 = Instant::now();
        h.trigger();
        assert_eq!(take(&log), [(BUSY, true)], "nothing else was active");
        h.result(Verdict::Fail, t0);
        assert_eq!(
            take(&log),
            [(FAIL, true), (BUSY, false), (VALID, true)],
            "the result line before result_valid"
        );
        assert!(h.holding());
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_millis(500)));
        h.tick(t0 + Duration::from_millis(100));
        assert!(take(&log).is_empty(), "held while the trigger is up");
        h.released();
        assert_eq!(
            take(&log),
            [(VALID, false), (FAIL, false)],
            "result_valid falls first"
        );
        assert!(!h.holding());
        assert_eq!(h.next_deadline(), None);
    }

    /// Logs every write like [`Logged`]; the first `.1` of them fail.
    struct Flaky(Log, usize);

    impl OutputLines for Flaky {
        fn set(&mut self, line: u32, active: bool) -> io::Result<()> {
            self.0.lock().unwrap().push((line, active));
            if self.1 > 0 {
                self.1 -= 1;
                return Err(io::Error::other("uAPI ABI v1 requires all requested lines"));
            }
            Ok(())
        }
    }

    #[test]
    fn an_output_that_cannot_be_driven_is_tried_again_at_every_update_until_it_can() {
        let log = Log::default();
        let mut h = Handshake::new("t", outputs(Duration::ZERO), Box::new(Flaky(log.clone(), 3)));
        for _ in 0..3 {
            h.set_ready(true);
        }
        assert_eq!(take(&log), [(READY, true); 3], "every failed write is retried");
        assert!(
            h.failing.contains(&Signal::Ready),
            "and remembered, so it is logged once"
        );
        h.set_ready(true);
        assert_eq!(take(&log), [(READY, true)]);
        assert!(h.failing.is_empty());
        h.set_ready(true);
        assert!(take(&log).is_empty(), "driven: nothing more to write");
    }

    #[test]
    fn a_result_the_trigger_never_releases_is_withdrawn_after_hold_ms() {
        let (mut h, log) = rig(Duration::ZERO);
        let t0 = Instant::now();
        h.trigger();
        h.result(Verdict::Pass, t0);
        take(&log);
        h.tick(t0 + Duration::from_millis(499));
        assert!(take(&log).is_empty());
        h.tick(t0 + Duration::from_millis(500));
        assert_eq!(take(&log), [(VALID, false), (PASS, false)]);
        h.released();
        assert!(take(&log).is_empty(), "nothing left to release");
    }

    #[test]
    fn a_pulse_ends_on_time_while_the_level_lines_are_held() {
        let (mut h, log) = rig(Duration::from_millis(50));
        let t0 = Instant::now();
        h.trigger();
        h.result(Verdict::Fail, t0);
        take(&log);
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_millis(50)));
        h.tick(t0 + Duration::from_millis(50));
        assert_eq!(take(&log), [(FAIL, false)], "the pulse ended, result_valid stays");
        assert!(h.holding());
        h.released();
        assert_eq!(take(&log), [(VALID, false)]);
    }

    #[test]
    fn the_next_trigger_withdraws_the_held_result_and_safe_drives_everything_inactive() {
        let (mut h, log) = rig(Duration::from_millis(50));
        let t0 = Instant::now();
        h.set_ready(true);
        h.trigger();
        h.result(Verdict::Error, t0);
        take(&log);
        h.trigger();
        assert_eq!(take(&log), [(VALID, false), (ERROR, false), (BUSY, true)]);
        assert!(!h.holding());
        h.safe();
        let mut off = take(&log);
        off.sort_unstable();
        assert_eq!(off, [(BUSY, false), (READY, false)]);
    }

    #[test]
    fn an_answer_without_a_trigger_cycle_still_sets_its_line_and_result_valid() {
        // A trigger while paused: no capture, an error result at once.
        let (mut h, log) = rig(Duration::ZERO);
        h.result(Verdict::Error, Instant::now());
        assert_eq!(take(&log), [(ERROR, true), (VALID, true)]);
    }

    #[test]
    fn unwired_signals_are_skipped() {
        let log = Log::default();
        let mut cfg = outputs(Duration::ZERO);
        cfg.lines.retain(|s, _| *s == Signal::Fail);
        let mut h = Handshake::new("t", cfg, Box::new(Logged(log.clone())));
        h.set_ready(true);
        h.trigger();
        h.result(Verdict::Pass, Instant::now());
        assert!(take(&log).is_empty());
        h.result(Verdict::Fail, Instant::now());
        assert_eq!(take(&log), [(FAIL, true)]);
    }
}
